"""Re-scoring speed: :func:`vistrieve.indexes.sq.score_rows` against one large ``einsum``.

Scores ``--nq`` queries against ``--candidates`` random rows each of an int8 table of
``--n`` x ``--d`` codes with per-row scales (in RAM, as the page cache holds them), the way
``ivf_disk`` re-scores its PQ candidates, and prints the seconds of each and their ratio.

Usage::

    python benchmarks/bench_rescore.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def einsum_scores(
    table: np.ndarray, scales: np.ndarray, pos: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """The re-scoring ``ivf_disk`` used before ``score_rows``: one gather, one einsum."""
    vecs = table[pos.ravel()].astype(np.float32).reshape(*pos.shape, table.shape[1])
    vecs *= scales[pos.ravel()].reshape(*pos.shape, 1)
    return np.einsum("qcd,qd->qc", vecs, q)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--candidates", type=int, default=640)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from vistrieve.indexes.sq import score_rows

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    table = rng.integers(-127, 128, (args.n, args.d), dtype=np.int8)
    scales = rng.random(args.n, dtype=np.float32)
    q = rng.standard_normal((args.nq, args.d), dtype=np.float32)
    pos = rng.integers(0, args.n, (args.nq, args.candidates))
    times = {}
    for name, fn in (
        ("einsum", lambda: einsum_scores(table, scales, pos, q)),
        ("score_rows", lambda: score_rows(table, pos, q, scales=scales)),
    ):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = (best, out)
        print(f"{name:10s} {best:.3f} s", flush=True)
    np.testing.assert_allclose(times["score_rows"][1], times["einsum"][1], rtol=1e-4, atol=1e-3)
    print(f"score_rows / einsum speed: {times['einsum'][0] / times['score_rows'][0]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
