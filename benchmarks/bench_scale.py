"""Scale benchmark: ``ivf_disk`` indexes of 1M, 3M, 10M clustered vectors built from shards.

For each size N (each in its own subprocess, so that peak RSS is per size) it

* generates N clustered unit vectors (d = 256: ``--clusters`` Gaussian centres, each vector
  a centre plus isotropic noise, normalised), shard by shard with per-shard seeds, so that
  no more than one shard of float32 exists at once: the data is generated twice (build,
  then ground truth) instead of being held;
* builds an ``ivf_disk`` index with :func:`vistrieve.indexes.build_ivf_disk`, parameters
  from :func:`vistrieve.indexes.choose_ivf_params` for the memory budget (``nlist`` capped
  by ``--max-nlist`` to bound training time on 2 cores), timing the build;
* computes the exact top-10 of 1,000 queries (drawn from the same mixture) by streaming the
  shards again through faiss's brute-force ``knn`` and merging, timing the scans only
  (the exact-search baseline in the same run);
* searches the memory-mapped index: batched (all queries at once) and single (one query
  per call, ``--single`` of them); recall@10 against the exact top-10;
* records peak RSS (``ru_maxrss``) against the budget.

Then it draws a PNG plot and rewrites its section of ``docs/benchmarks.md`` with the
results of every size in ``--results`` (JSON lines; sizes not re-run are kept).

Usage::

    python benchmarks/bench_scale.py --sizes 1000000 3000000
    python benchmarks/bench_scale.py --sizes 10000000    # later, appends to the results

Needs disk for the index: about N x (m + 8 + d + 4) bytes (1.6 GB at 5M, m = 64).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_scale:start -->", "<!-- bench_scale:end -->"


def _centres(d: int, clusters: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((clusters, d)).astype(np.float32)


def _sample(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    d = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)]
    x += noise * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def shards(
    n: int, d: int, shard: int, clusters: int, noise: float, seed: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Shards ``(vectors, ids)`` of the synthetic collection (deterministic per shard)."""
    centres = _centres(d, clusters, seed)
    for i, start in enumerate(range(0, n, shard)):
        m = min(shard, n - start)
        rng = np.random.default_rng([seed, i])
        yield _sample(rng, centres, m, noise), [str(j) for j in range(start, start + m)]


def run_one(args: argparse.Namespace, n: int) -> dict[str, object]:
    import faiss

    from vistrieve.indexes import build_ivf_disk, choose_ivf_params

    faiss.omp_set_num_threads(args.threads)
    budget = int(args.budget_gb * 2**30)
    params = choose_ivf_params(n, args.d, memory_budget_bytes=budget)
    params["nlist"] = min(params["nlist"], args.max_nlist)
    params["nprobe"] = args.nprobe or int(min(256, max(16, params["nlist"] // 16)))
    work = Path(tempfile.mkdtemp(prefix="bench_scale.", dir=args.workdir))
    path = work / "index"
    t0 = time.perf_counter()
    index = build_ivf_disk(
        shards(n, args.d, args.shard, args.clusters, args.noise, args.seed),
        path,
        dim=args.d,
        nlist=params["nlist"],
        m=params["m"],
        nprobe=params["nprobe"],
        train_size=args.train_size,
    )
    build_s = time.perf_counter() - t0
    rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    disk = sum(f.stat().st_size for f in path.iterdir())

    centres = _centres(args.d, args.clusters, args.seed)
    queries = _sample(np.random.default_rng([args.seed, 10**6]), centres, args.nq, args.noise)
    best_s = np.full((args.nq, args.k), -np.inf, dtype=np.float32)
    best_i = np.full((args.nq, args.k), -1, dtype=np.int64)
    exact_s = 0.0
    for vecs, ids in shards(n, args.d, args.shard, args.clusters, args.noise, args.seed):
        t = time.perf_counter()
        s, i = faiss.knn(queries, vecs, args.k, metric=faiss.METRIC_INNER_PRODUCT)
        i = i + int(ids[0])
        cs, ci = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        order = np.argsort(-cs, axis=1, kind="stable")[:, : args.k]
        best_s, best_i = np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1)
        exact_s += time.perf_counter() - t

    index.search_arrays(queries[:16], args.k)  # warm the mapping a little
    t = time.perf_counter()
    _, pos = index.search_arrays(queries, args.k)
    batched_s = time.perf_counter() - t
    ids = index.ids
    got = [[int(ids[p]) for p in row if p >= 0] for row in pos.tolist()]
    recall = float(
        np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got, best_i.tolist(), strict=True)])
    )
    t = time.perf_counter()
    for j in range(args.single):
        index.search_arrays(queries[j : j + 1], args.k)
    single_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del index
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {
        "n": n,
        "d": args.d,
        "nq": args.nq,
        "k": args.k,
        "nlist": params["nlist"],
        "m": params["m"],
        "nprobe": params["nprobe"],
        "build_s": round(build_s, 1),
        "peak_rss_build_gb": round(rss_build / 2**30, 3),
        "peak_rss_gb": round(rss / 2**30, 3),
        "budget_gb": args.budget_gb,
        "disk_gb": round(disk / 2**30, 3),
        "recall_at_10": round(recall, 4),
        "batched_qps": round(args.nq / batched_s, 1),
        "single_qps": round(args.single / single_s, 1),
        "exact_qps": round(args.nq / exact_s, 1),
        "speedup_vs_exact_batched": round(exact_s / batched_s, 2),
        "threads": args.threads,
    }


def plot(rows: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: int(r["n"]))  # type: ignore[call-overload]
    n = [int(r["n"]) / 1e6 for r in rows]  # type: ignore[call-overload]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(n, [r["build_s"] for r in rows], "o-")
    ax[0].set(xlabel="vectors (millions)", ylabel="build time (s)", title="build")
    ax[1].plot(n, [r["peak_rss_gb"] for r in rows], "o-", label="peak RSS")
    ax[1].plot(n, [r["disk_gb"] for r in rows], "s--", label="on disk")
    ax[1].axhline(float(rows[0]["budget_gb"]), color="r", ls=":", label="budget")  # type: ignore[arg-type]
    ax[1].set(xlabel="vectors (millions)", ylabel="GiB", title="memory")
    ax[1].legend()
    ax[2].plot(n, [r["batched_qps"] for r in rows], "o-", label="ivf_disk batched")
    ax[2].plot(n, [r["single_qps"] for r in rows], "s-", label="ivf_disk single")
    ax[2].plot(n, [r["exact_qps"] for r in rows], "^--", label="exact (faiss knn) batched")
    ax[2].set(xlabel="vectors (millions)", ylabel="queries/s", yscale="log", title="search")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def write_docs(rows: list[dict[str, object]], command: str, png: Path) -> None:
    rows = sorted(rows, key=lambda r: int(r["n"]))  # type: ignore[call-overload]
    lines = [
        START,
        "## Scale: ivf_disk from shards at 1M, 3M, 10M vectors",
        "",
        f"`{command}` (written by the script; clustered unit vectors, d = 256, 1,000 queries,",
        "k = 10, recall@10 against the exact top-10 computed in the same run by streaming the",
        "shards through faiss's brute-force `knn`; 2 threads on the shared 2-core machine).",
        "",
        "| N | nlist | PQ bytes | nprobe | build (s) | peak RSS (GiB) | budget | disk (GiB) "
        "| recall@10 | batched q/s | single q/s | exact q/s | batched vs exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['n']):,} | {r['nlist']} | {r['m']} | {r['nprobe']} | {r['build_s']} "  # type: ignore[call-overload]
            f"| {r['peak_rss_gb']} | {r['budget_gb']} | {r['disk_gb']} | {r['recall_at_10']} "
            f"| {r['batched_qps']} | {r['single_qps']} | {r['exact_qps']} "
            f"| {r['speedup_vs_exact_batched']}x |"
        )
    lines += ["", f"![scaling]({png.relative_to(ROOT / 'docs').as_posix()})", END]
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text(encoding="utf-8")
    block = "\n".join(lines)
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    from vistrieve.utils.io import atomic_write_bytes

    atomic_write_bytes(doc, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--nq", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--single", type=int, default=200, help="one-query searches timed")
    parser.add_argument("--shard", type=int, default=250_000, help="vectors per shard")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.08, help="noise std per dimension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-gb", type=float, default=4.0)
    parser.add_argument("--max-nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=131_072)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where indexes are built (tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the built indexes")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "scale.jsonl"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "images" / "bench_scale.png"))
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args, args.one)), flush=True)
        return 0
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    old = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                old[int(r["n"])] = r
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), *(argv or sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"N={n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            old[n] = {"n": n, "failed": proc.stderr.strip().splitlines()[-1][:200]}
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        old[n] = row
        results.write_text("".join(json.dumps(r) + "\n" for r in old.values()))
    ok = [r for r in old.values() if "failed" not in r]
    if ok:
        png = Path(args.png)
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(ok, png)
        command = "python benchmarks/bench_scale.py " + " ".join(argv or sys.argv[1:])
        write_docs(ok, command, png)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
