"""Hamming search over binary codes against exact float search, in the same run.

Data: ``n`` clustered, L2-normalised float32 vectors of dimension ``d`` (``n / 100``
Gaussian cluster centres, each vector a centre plus noise, so that nearest neighbours are
meaningful) and ``nq`` queries drawn the same way. Codes are correlated with the floats:
``code = sign(x @ R)`` for one random Gaussian projection ``R`` of shape ``(d, bits)``,
i.e. sign random projections (SimHash), the untrained stand-in for a hash model.

Measured:

* ``float``: :class:`vistrieve.indexes.ExactIndex` (blocked matmul + top-k)
  over the float vectors, queries/s of ``search_arrays``;
* ``hamming``: :class:`vistrieve.indexes.BinaryHashIndex` (FAISS
  ``IndexBinaryFlat`` behind ``IndexBinaryIDMap2``), queries/s of a plain Hamming
  ``search_arrays``;
* memory per item of each: the vector / code payload (``d * 4`` and ``bits / 8`` bytes)
  and the growth of the process's resident memory while the index is built divided by
  ``n`` (this includes the id bookkeeping every vistrieve index keeps: Python string ids
  and an id -> position dict, about the same for both);
* recall of the float top-``k`` (from the ExactIndex) at re-scoring multipliers 1, 4 and 10:
  the Hamming search fetches ``k * m`` candidates, a second ``BinaryHashIndex`` holding the
  float vectors as re-scoring vectors re-ranks them by inner product (the
  sentence-transformers ``semantic_search_faiss`` scheme), and recall is the overlap of the
  top ``k`` with the float top ``k``; queries/s of the re-scored search too.

Usage::

    python benchmarks/bench_hamming.py --n 1000000 --bits 64 --d 512 --nq 1000

Memory at the defaults: about ``2 x n x d x 4`` bytes (the ExactIndex and the re-scoring
vectors), 4 GiB for n = 1,000,000. Timings suffer from other processes on the machine (the
FAISS OpenMP threads most; try ``--faiss-threads 1`` on a busy machine). Prints the figures
and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


def _rss() -> int:
    """Resident set size of this process in bytes (Linux), else 0."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


class _Data:
    """Clustered unit vectors generated chunk by chunk from one seed."""

    def __init__(self, d: int, n_centres: int, noise: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((n_centres, d), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.noise = noise
        self.d = d

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        c = self.centres[rng.integers(0, len(self.centres), n)]
        x = c + self.noise * rng.standard_normal((n, self.d), dtype=np.float32) / np.sqrt(
            self.d, dtype=np.float32
        )
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database items")
    parser.add_argument("--bits", type=int, default=64, help="code length")
    parser.add_argument("--d", type=int, default=512, help="float dimension")
    parser.add_argument("--nq", type=int, default=1000, help="queries")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--noise", type=float, default=0.7, help="cluster spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=100_000, help="items generated at once")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs (best kept)")
    parser.add_argument("--faiss-threads", type=int, default=None, help="default: all cores")
    parser.add_argument(
        "--multipliers", type=int, nargs="+", default=[1, 4, 10], help="re-scoring multipliers"
    )
    parser.add_argument("--ivf-nlist", type=int, default=1024, help="IVF cells (0: skip IVF)")
    parser.add_argument("--ivf-nprobe", type=int, default=16, help="IVF cells visited")
    parser.add_argument("--ivf-train", type=int, default=65536, help="codes that train IVF")
    args = parser.parse_args(argv)

    import faiss
    import torch

    from vistrieve.indexes import BinaryHashIndex, ExactIndex

    threads = _cores()
    faiss.omp_set_num_threads(args.faiss_threads or threads)
    data = _Data(args.d, max(1, args.n // 100), args.noise, args.seed)
    proj = np.random.default_rng(args.seed + 2).standard_normal((args.d, args.bits))
    proj = proj.astype(np.float32)

    exact = ExactIndex(args.d)
    hamming = BinaryHashIndex(args.bits)
    rescoring = BinaryHashIndex(args.bits)
    ivf = (
        BinaryHashIndex(
            args.bits,
            index_type="ivf",
            nlist=args.ivf_nlist,
            nprobe=args.ivf_nprobe,
            train_size=args.ivf_train,
        )
        if args.ivf_nlist
        else None
    )
    mem: dict[str, int] = {"exact": 0, "hamming": 0}
    rng = np.random.default_rng(args.seed + 1)
    t0 = time.perf_counter()
    for start in range(0, args.n, args.chunk):
        x = data.draw(rng, min(args.chunk, args.n - start))
        ids = [str(i) for i in range(start, start + len(x))]
        codes = np.packbits(x @ proj > 0, axis=1)
        before = _rss()
        exact.add(x, ids)
        mid = _rss()
        hamming.add(codes, ids)
        after = _rss()
        mem["exact"] += mid - before
        mem["hamming"] += after - mid
        rescoring.add(codes, ids, rescore_vectors=x)
        if ivf is not None:
            ivf.add(codes, ids)
        del x, codes
    build_s = time.perf_counter() - t0
    queries = data.draw(np.random.default_rng(args.seed + 3), args.nq)
    qcodes = np.packbits(queries @ proj > 0, axis=1)

    print(
        f"machine: {platform.processor() or platform.machine()}, {threads} cores usable; "
        f"torch {torch.__version__} threads={torch.get_num_threads()}, faiss "
        f"{faiss.__version__} omp threads={faiss.omp_get_max_threads()}"
    )
    print(
        f"data: n={args.n} d={args.d} bits={args.bits} nq={args.nq} k={args.k} "
        f"seed={args.seed} clusters={len(data.centres)} noise={args.noise} "
        f"(indexes built in {build_s:.1f} s)"
    )
    warm = min(32, args.nq)
    exact.search_arrays(queries[:warm], args.k)
    hamming.search_arrays(qcodes[:warm], args.k)

    t_float, (_, truth) = _best_time(lambda: exact.search_arrays(queries, args.k), args.repeats)
    t_ham, (_, ham_pos) = _best_time(lambda: hamming.search_arrays(qcodes, args.k), args.repeats)
    float_qps, ham_qps = args.nq / t_float, args.nq / t_ham

    def recall(pos: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    len(set(a) & set(b)) / args.k
                    for a, b in zip(pos.tolist(), truth.tolist(), strict=True)
                ]
            )
        )

    recalls: dict[str, float] = {"hamming_only": recall(ham_pos)}
    ivf_qps = None
    if ivf is not None:
        ivf.search_arrays(qcodes[:warm], args.k)
        t_ivf, (_, ivf_pos) = _best_time(lambda: ivf.search_arrays(qcodes, args.k), args.repeats)
        ivf_qps = args.nq / t_ivf
        recalls["ivf"] = recall(ivf_pos)
    rescored_qps: dict[str, float] = {}
    for m in args.multipliers:
        t_m, (_, pos) = _best_time(
            lambda m=m: rescoring.search_arrays(
                qcodes, args.k, rescore_queries=queries, rescore_multiplier=m
            ),
            args.repeats,
        )
        recalls[f"x{m}"] = recall(pos)
        rescored_qps[f"x{m}"] = args.nq / t_m

    payload = {"float": args.d * 4, "code": args.bits // 8}
    per_item = {k: v / args.n for k, v in mem.items()}
    print(f"ExactIndex float32 : {t_float:8.3f} s {float_qps:10.1f} queries/s")
    print(f"BinaryHashIndex    : {t_ham:8.3f} s {ham_qps:10.1f} queries/s")
    print(f"speed-up           : {ham_qps / float_qps:.1f}x")
    if ivf_qps is not None:
        print(
            f"BinaryHashIndex IVF: nlist={args.ivf_nlist} nprobe={args.ivf_nprobe}: "
            f"{ivf_qps:10.1f} queries/s ({ivf_qps / float_qps:.1f}x float), recall@{args.k} of "
            f"the float top-{args.k} {recalls['ivf']:.4f} "
            f"(flat Hamming: {recalls['hamming_only']:.4f})"
        )
    print(
        f"payload per item   : float {payload['float']} B, code {payload['code']} B "
        f"({payload['float'] / payload['code']:.0f}x less)"
    )
    print(
        f"RSS growth per item: float {per_item['exact']:.0f} B, hamming "
        f"{per_item['hamming']:.0f} B (both include string ids and the id -> position map)"
    )
    for m in args.multipliers:
        print(
            f"recall@{args.k} of the float top-{args.k}, re-scoring x{m:<3}: "
            f"{recalls[f'x{m}']:.4f} ({rescored_qps[f'x{m}']:.1f} queries/s)"
        )
    result = {
        "n": args.n,
        "bits": args.bits,
        "d": args.d,
        "nq": args.nq,
        "k": args.k,
        "seed": args.seed,
        "float_qps": round(float_qps, 2),
        "hamming_qps": round(ham_qps, 2),
        "speedup": round(ham_qps / float_qps, 2),
        "ivf": None
        if ivf_qps is None
        else {
            "nlist": args.ivf_nlist,
            "nprobe": args.ivf_nprobe,
            "qps": round(ivf_qps, 2),
            "speedup": round(ivf_qps / float_qps, 2),
        },
        "payload_bytes_per_item": payload,
        "memory_ratio_payload": payload["float"] / payload["code"],
        "rss_bytes_per_item": {k: round(v, 1) for k, v in per_item.items()},
        "recall": recalls,
        "rescored_qps": {k: round(v, 2) for k, v in rescored_qps.items()},
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
