"""IVF scan speed: 8-bit PQ against faiss's 4-bit fast-scan PQ, in as many bytes or half.

All are in-memory faiss IVF indexes over the same ``N`` vectors of the calibrated
generator of ``bench_scale.py`` (d = 256, ``nlist`` lists): 8-bit PQ with 64
sub-quantisers (64 B, the ``ivf_disk`` default), 4-bit fast-scan with 64 (32 B) and with
128 (64 B, the ``ivf_disk`` default with ``fast_scan=True``), with the
candidates re-scored exactly (``IndexRefineFlat``, ``k_factor`` x 10 candidates per query). For each
``nprobe`` it prints recall@10 against the exact top-10 of 1,000 held-out queries and
batched queries/s, next to the exact scan (faiss ``knn``) of the same run. It measures
the scan alone, apart from ``ivf_disk``'s 8-bit re-scoring codes on disk.

Usage::

    python benchmarks/bench_ivf_scan.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import CALIBRATION, SpectralGroups  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--nprobes", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--k-factors", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument(
        "--scans",
        nargs="+",
        choices=["pq8", "fastscan", "fastscan128"],
        default=["pq8", "fastscan", "fastscan128"],
    )
    p.add_argument("--train-size", type=int, default=131_072)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", default=None, help="also write a markdown table here")
    args = p.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    cal = json.loads(CALIBRATION.read_text(encoding="utf-8"))
    gen = SpectralGroups(args.d, cal["spectrum"], cal["mean_norm"], cal["group"], cal["between"], 0)
    shard = 250_000
    x = np.concatenate(
        [gen.shard(i, min(shard, args.n - s)) for i, s in enumerate(range(0, args.n, shard))]
    )
    q = gen.queries(args.nq, args.n, shard)
    t = time.perf_counter()
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_qps = args.nq / (time.perf_counter() - t)
    print(f"exact (faiss knn): {exact_qps:.1f} q/s", flush=True)
    rows = []
    kinds = {
        "pq8": ("PQ64 (8-bit, 64 B)", "PQ64"),
        "fastscan": ("PQ64x4fs (4-bit fast-scan, 32 B)", "PQ64x4fs"),
        "fastscan128": ("PQ128x4fs (4-bit fast-scan, 64 B)", "PQ128x4fs"),
    }
    for name, pq in (kinds[k] for k in args.scans):
        base = faiss.index_factory(args.d, f"IVF{args.nlist},{pq}", faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        base.train(x[: args.train_size])
        index = faiss.IndexRefineFlat(base)  # wraps the empty index; adds go to both
        index.add(x)
        build_s = time.perf_counter() - t
        for k_factor, nprobe in ((kf, npr) for kf in args.k_factors for npr in args.nprobes):
            index.k_factor = k_factor
            faiss.extract_index_ivf(base).nprobe = nprobe
            index.search(q[:16], 10)
            t = time.perf_counter()
            _, got = index.search(q, 10)
            qps = args.nq / (time.perf_counter() - t)
            recall = float(
                np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)])
            )
            row = {
                "scan": name,
                "nprobe": nprobe,
                "k_factor": k_factor,
                "recall_at_10": round(recall, 4),
                "qps": round(qps, 1),
                "vs_exact": round(qps / exact_qps, 2),
                "build_s": round(build_s, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del index, base
    print(json.dumps({"n": args.n, "exact_qps": round(exact_qps, 1), "rows": rows}))
    if args.report:
        from vistrieve.utils.io import atomic_write_bytes

        lines = [
            f"`python benchmarks/bench_ivf_scan.py {' '.join(argv or sys.argv[1:])}`: "
            f"N = {args.n:,}, d = {args.d}, IVF{args.nlist}, {args.nq:,} held-out queries, "
            f"{args.threads} threads; exact scan (faiss `knn`) {exact_qps:.1f} q/s.",
            "",
            "| scan | nprobe | k_factor | recall@10 | batched q/s | vs exact |",
            "|---|---:|---:|---:|---:|---:|",
            *(
                f"| {r['scan']} | {r['nprobe']} | {r['k_factor']} | {r['recall_at_10']} "
                f"| {r['qps']} | {r['vs_exact']}x |"
                for r in rows
            ),
            "",
        ]
        out = Path(args.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, "\n".join(lines).encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
