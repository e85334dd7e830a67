"""Exact search: vistrieve's ExactIndex (blocked torch matmul + top-k) vs faiss IndexFlatIP.

Both search the same random unit vectors in the same run with the same thread count; the
top-k id lists are compared for identity.

Usage::

    python benchmarks/bench_exact_search.py               # N = 1,000,000, d = 512
    python benchmarks/bench_exact_search.py --n 100000    # smaller

Prints the figures and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def _unit(rng: np.random.Generator, n: int, d: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + len(x)] = x
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--nq", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args(argv)

    import faiss

    from vistrieve.retrievers.index import ExactIndex

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(args.seed)
    x = _unit(rng, args.n, args.d)
    q = _unit(rng, args.nq, args.d)

    ours = ExactIndex(args.d, dtype=args.dtype)
    ours.add(x, [str(i) for i in range(args.n)])
    ours.search_arrays(q[:8], args.k)  # warm-up
    t0 = time.perf_counter()
    _, pos = ours.search_arrays(q, args.k)
    t_ours = time.perf_counter() - t0

    flat = faiss.IndexFlatIP(args.d)
    flat.add(x)
    flat.search(q[:8], args.k)
    t0 = time.perf_counter()
    _, ref = flat.search(q, args.k)
    t_faiss = time.perf_counter() - t0

    identical = float(np.mean([np.array_equal(a, b) for a, b in zip(pos, ref, strict=True)]))
    overlap = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(pos, ref, strict=True)]))
    result = {
        "n": args.n,
        "d": args.d,
        "nq": args.nq,
        "k": args.k,
        "dtype": args.dtype,
        "threads": threads,
        "cpus": os.cpu_count(),
        "exact_qps": round(args.nq / t_ours, 2),
        "faiss_flatip_qps": round(args.nq / t_faiss, 2),
        "speedup": round(t_faiss / t_ours, 2),
        "identical_top_k_fraction": identical,
        "top_k_overlap": overlap,
    }
    sys.stdout.write(
        f"N={args.n:,} d={args.d} queries={args.nq} k={args.k} ({threads} threads, "
        f"{args.dtype} storage)\n"
        f"  vistrieve ExactIndex: {result['exact_qps']:10.1f} queries/s\n"
        f"  faiss IndexFlatIP:    {result['faiss_flatip_qps']:10.1f} queries/s\n"
        f"  speedup {result['speedup']:.2f}x, identical top-{args.k} lists {identical:.3f}, "
        f"overlap {overlap:.4f}\n"
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
