"""Scale benchmark: ``ivf_disk`` indexes of 1M, 3M, 10M clustered vectors built from shards.

For each size N (each in its own subprocess, so that peak RSS is per size) it

* generates N unit vectors (d = 256) with the neighbour geometry of real CLIP image
  embeddings (:class:`SpectralGroups`: the real principal variances, small groups of
  related images; fitted by ``--calibrate`` to ``flickr30k-clip-vitl14-1k``), shard by
  shard with per-shard seeds, so that no more than one shard of float32 exists at once:
  the data is generated twice (build, then ground truth) instead of being held;
* builds an ``ivf_disk`` index with :func:`vistrieve.indexes.build_ivf_disk`, parameters
  from :func:`vistrieve.indexes.choose_ivf_params` for the memory budget (``nlist`` capped
  by ``--max-nlist`` to bound training time on 2 cores), timing the build;
* computes the exact top-10 of 1,000 queries (new members of existing groups) by streaming the
  shards again through faiss's brute-force ``knn`` and merging, timing the scans only
  (the exact-search baseline in the same run);
* searches the memory-mapped index: batched (all queries at once) and single (one query
  per call, ``--single`` of them); recall@10 against the exact top-10;
* records peak RSS (``ru_maxrss``) against the budget, and separately the peaks of
  anonymous memory (heap) and of file-backed resident pages (the memory-mapped files).

Then it draws a PNG plot and writes a markdown table (``--report``) of every size in
``--results`` (JSON lines; sizes not re-run are kept), which ``python experiments/run.py
bench-scale`` (the whole run: 1M, 3M, 10M in a 4 GiB memory cgroup) publishes in
``docs/benchmarks.md``.

Usage::

    python benchmarks/bench_scale.py --calibrate \\
        ../shared/data/flickr30k-clip-vitl14-1k/flickr30k_image_embeddings.npy
    python experiments/run.py bench-scale
    python benchmarks/bench_scale.py --sizes 1000000 --memory-limit-gb 4   # one size

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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "benchmarks" / "results" / "scale_calibration.json"


class SpectralGroups:
    """Synthetic unit vectors with the neighbour geometry of real CLIP image embeddings.

    Each vector is ``mean + U (g + e)``, normalised: ``mean`` a fixed direction of the real
    embeddings' mean norm, ``U`` a fixed random rotation, ``g`` the centre of the vector's
    group (about ``group`` members; share ``between`` of the variance) and ``e`` its own
    part (the rest), both Gaussian with the real embeddings' principal variances (top
    ``d``, rescaled to their total). ``group`` and ``between`` are fitted by
    :func:`calibrate` so that, at the real sample's size, the mean similarity of the 1st,
    10th and 100th nearest neighbour and the mean similarity match the real sample's.
    Isotropic clusters do not: their neighbours are all equally far (see docs).

    Shards are deterministic per ``(seed, shard index)``; queries are new members of
    existing groups (as a new photo of a scene already in the collection is).
    """

    def __init__(
        self, d: int, spectrum: list[float], mean_norm: float, group: int, between: float, seed: int
    ) -> None:
        lam = np.asarray(spectrum, dtype=np.float64)
        if len(lam) < d:
            raise ValueError(f"the calibration has {len(lam)} variances; d = {d} needs as many")
        lam = lam[:d] * (lam.sum() / lam[:d].sum())
        rng = np.random.default_rng([seed, 7])
        mean = rng.standard_normal(d)
        self.mean = (mean * mean_norm / np.linalg.norm(mean)).astype(np.float32)
        self.rot = np.linalg.qr(rng.standard_normal((d, d)))[0].T.astype(np.float32)
        self.sd_between = np.sqrt(between * lam).astype(np.float32)
        self.sd_within = np.sqrt((1.0 - between) * lam).astype(np.float32)
        self.d, self.group, self.seed = d, group, seed

    def _groups(self, i: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, i, 0])
        count = max(1, -(-rows // self.group))
        centres = rng.standard_normal((count, self.d), dtype=np.float32) * self.sd_between
        return centres, rng.integers(0, count, rows)

    def _finish(
        self, centres: np.ndarray, member: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        # In chunks of rows, so that the temporaries stay small next to the shard itself
        # (the values are the same as in one piece: the generator's stream is sequential).
        x = np.empty((len(member), self.d), dtype=np.float32)
        for s in range(0, len(member), 32768):
            z = centres[member[s : s + 32768]]
            z += rng.standard_normal(z.shape, dtype=np.float32) * self.sd_within
            out = x[s : s + 32768]
            np.matmul(z, self.rot, out=out)
            out += self.mean
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return x

    def shard(self, i: int, rows: int) -> np.ndarray:
        """The vectors of shard ``i`` (``rows`` of them)."""
        centres, member = self._groups(i, rows)
        return self._finish(centres, member, np.random.default_rng([self.seed, i, 1]))

    def queries(self, nq: int, n: int, shard: int) -> np.ndarray:
        """``nq`` new members of groups drawn at random positions of the ``n`` vectors."""
        rng = np.random.default_rng([self.seed, 10**6])
        pos = np.sort(rng.integers(0, n, nq))
        z = np.empty((nq, self.d), dtype=np.float32)
        for i in np.unique(pos // shard):
            take = np.flatnonzero(pos // shard == i)
            centres, member = self._groups(int(i), min(shard, n - int(i) * shard))
            z[take] = centres[member[pos[take] - int(i) * shard]]
        return self._finish(z, np.arange(nq), rng)


def neighbour_stats(x: np.ndarray) -> dict[str, float]:
    """Mean similarity of each row's 1st, 10th, 100th nearest other row, and of all pairs."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    s = -np.sort(-s, axis=1)
    return {
        "nn1": float(s[:, 0].mean()),
        "nn10": float(s[:, 9].mean()),
        "nn100": float(s[:, 99].mean()),
        "mean": float(s[:, : len(x) - 1].mean()),
    }


def cluster_share(x: np.ndarray, k: int, seeds: int = 3) -> float:
    """Share of the variance of ``x`` that k-means with ``k`` centroids explains (mean of
    ``seeds`` runs): how much coarse cluster structure an IVF quantizer can use."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    total = float(((x - x.mean(0)) ** 2).sum())
    shares = []
    for s in range(seeds):
        km = faiss.Kmeans(x.shape[1], k, niter=30, seed=s, min_points_per_centroid=1)
        km.train(x)
        _, assign = km.index.search(x, 1)
        centroids = np.asarray(km.centroids)
        shares.append(1.0 - float(((x - centroids[assign[:, 0]]) ** 2).sum()) / total)
    return float(np.mean(shares))


def calibrate(real: Path, d: int, out: Path, seeds: int = 3) -> dict[str, object]:
    """Fit :class:`SpectralGroups` to real embeddings (an ``(n, D)`` ``.npy``, D >= d).

    Writes the principal variances, the mean norm, the grid searched and the chosen
    ``group`` / ``between`` to ``out`` (JSON), and returns the same record.
    """
    x = np.load(real).astype(np.float32)
    if x.ndim != 2 or x.shape[1] < d or len(x) < 200:
        raise ValueError(f"{real}: need an (n >= 200, D >= {d}) array, got {x.shape}")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean = x.mean(0)
    spectrum = (np.linalg.svd(x - mean, compute_uv=False) ** 2 / len(x)).tolist()
    target = neighbour_stats(x)
    keys = ("nn1", "nn10", "nn100", "mean")
    grid = []
    for group in (4, 8, 12, 16, 24):
        for between in (0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
            stats = [
                neighbour_stats(
                    SpectralGroups(
                        d, spectrum, float(np.linalg.norm(mean)), group, between, s
                    ).shard(0, len(x))
                )
                for s in range(seeds)
            ]
            got = {k: float(np.mean([st[k] for st in stats])) for k in keys}
            err = float(sum((got[k] - target[k]) ** 2 for k in keys))
            grid.append({"group": group, "between": between, **got, "sq_error": err})
    best = min(grid, key=lambda r: r["sq_error"])
    # Not fitted, only reported: coarse cluster structure, which the fit does not model.
    # Real vectors are compared in their top-d principal subspace (renormalised), as the
    # generator lives there.
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    proj = x @ vt[:d].T
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    fitted_gen = SpectralGroups(
        d, spectrum, float(np.linalg.norm(mean)), int(best["group"]), best["between"], 0
    ).shard(0, len(x))
    kmeans_share = {
        str(k): {"real": cluster_share(proj, k), "generated": cluster_share(fitted_gen, k)}
        for k in (4, 16, 64)
    }
    record: dict[str, object] = {
        "source": str(real),
        "n_real": len(x),
        "dim_real": int(x.shape[1]),
        "d": d,
        "real": target,
        "group": best["group"],
        "between": best["between"],
        "fitted": {k: best[k] for k in keys},
        "kmeans_share": kmeans_share,
        "variance_in_d": float(sum(spectrum[:d]) / sum(spectrum)),
        "mean_norm": float(np.linalg.norm(mean)),
        "spectrum": spectrum[: max(d, 512)],
        "grid": grid,
    }
    from vistrieve.utils.io import atomic_write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return record


def generator(args: argparse.Namespace) -> SpectralGroups:
    cal = json.loads(Path(args.calibration).read_text(encoding="utf-8"))
    return SpectralGroups(
        args.d, cal["spectrum"], cal["mean_norm"], cal["group"], cal["between"], args.seed
    )


def shards(gen: SpectralGroups, n: int, shard: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Shards ``(vectors, ids)`` of the synthetic collection (deterministic per shard)."""
    for i, start in enumerate(range(0, n, shard)):
        m = min(shard, n - start)
        yield gen.shard(i, m), [str(j) for j in range(start, start + m)]


class RssPeaks:
    """Samples ``/proc/self/status`` in a thread: the peaks of anonymous memory (heap, which
    must fit in RAM) and of file-backed resident pages (memory-mapped index files, which
    the kernel can drop and re-read), which ``ru_maxrss`` counts together."""

    def __init__(self, every_s: float = 0.02) -> None:
        import threading

        self.anon = self.file = 0
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    self.anon = max(self.anon, int(line.split()[1]) * 1024)
                elif line.startswith("RssFile:"):
                    self.file = max(self.file, int(line.split()[1]) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._read()

    def stop(self) -> tuple[int, int]:
        """Stop sampling; the peaks ``(anonymous, file-backed)`` in bytes."""
        self._stop.set()
        self._thread.join()
        self._read()
        return self.anon, self.file


def run_one(args: argparse.Namespace, n: int) -> dict[str, object]:
    import faiss

    from vistrieve.indexes import build_ivf_disk, choose_ivf_params

    faiss.omp_set_num_threads(args.threads)
    gen = generator(args)
    budget = int(args.budget_gb * 2**30)
    params = choose_ivf_params(n, args.d, memory_budget_bytes=budget, fast_scan=args.fast_scan)
    params["nlist"] = min(params["nlist"], args.max_nlist)
    work = Path(tempfile.mkdtemp(prefix="bench_scale.", dir=args.workdir))
    path = work / "index"
    peaks = RssPeaks()
    t0 = time.perf_counter()
    index = build_ivf_disk(
        shards(gen, n, args.shard),
        path,
        dim=args.d,
        nlist=params["nlist"],
        m=params["m"],
        nprobe=args.nprobe or params["nprobe"],
        train_size=args.train_size,
        recall_target=None if args.nprobe else args.recall_target,
        tune_queries=args.tune_queries,
        seed=args.seed,
        fast_scan=args.fast_scan,
    )
    build_s = time.perf_counter() - t0
    rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    disk = sum(f.stat().st_size for f in path.iterdir())

    queries = gen.queries(args.nq, n, args.shard)
    best_s = np.full((args.nq, args.k), -np.inf, dtype=np.float32)
    best_i = np.full((args.nq, args.k), -1, dtype=np.int64)
    exact_s = 0.0
    for vecs, ids in shards(gen, n, args.shard):
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
    anon, file_backed = peaks.stop()
    nprobe, k_factor, tuning = index.nprobe, index.k_factor, index.tuning
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
        "fast_scan": args.fast_scan,
        "code_bytes": params["m"] // 2 if args.fast_scan else params["m"],
        "nprobe": nprobe,
        "k_factor": k_factor,
        "tuned_recall": None if tuning is None else round(float(tuning["recall"]), 4),
        "recall_target": None if args.nprobe else args.recall_target,
        "build_s": round(build_s, 1),
        "peak_rss_build_gb": round(rss_build / 2**30, 3),
        "peak_rss_gb": round(rss / 2**30, 3),
        "peak_anon_gb": round(anon / 2**30, 3),
        "peak_file_gb": round(file_backed / 2**30, 3),
        "budget_gb": args.budget_gb,
        "disk_gb": round(disk / 2**30, 3),
        "recall_at_10": round(recall, 4),
        "batched_qps": round(args.nq / batched_s, 1),
        "single_qps": round(args.single / single_s, 1),
        "exact_qps": round(args.nq / exact_s, 1),
        "speedup_vs_exact_batched": round(exact_s / batched_s, 2),
        "threads": args.threads,
    }


_CGROUP_V1 = Path("/sys/fs/cgroup/memory")


class MemoryLimit:
    """A Linux memory cgroup (v1, needs root) that a child process joins: the kernel then
    holds it to ``limit`` bytes of memory, page cache of its mapped files included,
    reclaiming cache first and killing the process only when that is not enough. So a run
    that finishes inside it fits that much RAM, whatever ``ru_maxrss`` (which counts
    reclaimable mapped pages too) says."""

    def __init__(self, limit: int) -> None:
        if not (_CGROUP_V1 / "memory.limit_in_bytes").is_file() or os.geteuid() != 0:
            raise RuntimeError(
                "--memory-limit-gb needs the cgroup v1 memory controller at "
                f"{_CGROUP_V1} and root; run without it (peak RSS is still measured)"
            )
        self.path = _CGROUP_V1 / f"vistrieve-bench-scale-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.is_file():  # no swapping around the limit either
            memsw.write_text(str(limit))
        self.limit = limit

    def join(self) -> None:
        """Move the calling process into the cgroup (a ``preexec_fn``)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        """The highest memory use charged to the cgroup (anonymous + page cache), bytes."""
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def close(self) -> None:
        self.path.rmdir()


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
    if all("peak_anon_gb" in r for r in rows):
        ax[1].plot(n, [r["peak_anon_gb"] for r in rows], "v-", label="peak heap (anon)")
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


def _code(row: dict[str, object]) -> str:
    """The PQ code of a row as a FAISS factory suffix and its bytes."""
    m = int(row["m"])  # type: ignore[call-overload]
    size = row.get("code_bytes", m)  # rows from before fast_scan hold 8-bit codes of m B
    if row.get("fast_scan"):
        return f"PQ{m}x4fs ({size} B, RAM)"
    return f"PQ{m} ({size} B, disk)"


def write_report(
    out: Path,
    rows: list[dict[str, object]],
    command: str,
    png: Path,
    failed: Sequence[dict[str, object]] = (),
) -> None:
    """Write the table of every size measured to ``out`` (markdown; ``python
    experiments/run.py bench-scale`` publishes it in ``docs/benchmarks.md``)."""
    from vistrieve.utils.io import atomic_write_bytes

    rows = sorted(rows, key=lambda r: int(r["n"]))  # type: ignore[call-overload]
    first = rows[0]
    lines = [
        "## Scale: ivf_disk from shards at 1M, 3M, 10M vectors",
        "",
        f"`{command}`. Unit vectors, d = {first['d']}, from the generator calibrated on",
        "real CLIP ViT-L/14 image embeddings (`SpectralGroups`, fit in",
        f"`benchmarks/results/scale_calibration.json`); {first['nq']:,} queries, "
        f"k = {first['k']}; recall@{first['k']}",
        "against the exact top-10 computed in the same run by streaming the shards through",
        "faiss's brute-force `knn`. `nprobe` and the re-scoring factor `k_factor` are chosen at",
        "build time by `tune_search` for the recall target on indexed vectors (tuned recall);",
        "the recall column is measured on the held-out queries. A PQ code in RAM is a",
        "4-bit fast-scan code (`fast_scan=True`: the lists are in RAM, the 8-bit re-scoring",
        "codes memory-mapped); on disk, 8-bit PQ lists memory-mapped too. "
        f"{first['threads']} threads, {os.cpu_count()} cores.",
        "",
        "| N | nlist | PQ code | nprobe | k_factor | build (s) | peak RSS (GiB) | peak heap "
        "| budget | ran in a memory limit of "
        "| disk (GiB) | tuned recall | recall@10 | batched q/s | single q/s | exact q/s "
        "| batched vs exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['n']):,} | {r['nlist']} | {_code(r)} | {r['nprobe']} "  # type: ignore[call-overload]
            f"| {r.get('k_factor', '')} | {r['build_s']} "
            f"| {r['peak_rss_gb']} | {r.get('peak_anon_gb', '')} | {r['budget_gb']} "
            f"| {str(r['memory_limit_gb']) + ' GiB' if r.get('memory_limit_gb') else 'none'} "
            f"| {r['disk_gb']} "
            f"| {r.get('tuned_recall') or ''} | {r['recall_at_10']} "
            f"| {r['batched_qps']} | {r['single_qps']} | {r['exact_qps']} "
            f"| {r['speedup_vs_exact_batched']}x |"
        )
    lines += [""] + [f"- N = {int(r['n']):,}: **failed**, {r['failed']}" for r in failed]  # type: ignore[call-overload]
    lines += [
        "",
        "Peak RSS is `ru_maxrss`, which counts the resident pages of memory-mapped files",
        "(reclaimable page cache) with the heap; peak heap is the anonymous memory alone. A",
        "memory limit is a Linux memory cgroup the run was held to (`--memory-limit-gb`): the",
        "kernel charges the page cache to it and kills the run only if the heap does not fit.",
    ]
    rel = Path(os.path.relpath(png, ROOT / "docs")).as_posix()
    lines += ["", f"![scaling]({rel})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, "\n".join(lines).encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--nq", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--single", type=int, default=200, help="one-query searches timed")
    parser.add_argument("--shard", type=int, default=250_000, help="vectors per shard")
    parser.add_argument(
        "--calibration",
        default=str(CALIBRATION),
        help="the generator's fit to real embeddings (written by --calibrate)",
    )
    parser.add_argument(
        "--calibrate",
        metavar="NPY",
        help="fit the generator to these real embeddings, write --calibration and exit",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-gb", type=float, default=4.0)
    parser.add_argument("--max-nlist", type=int, default=4096)
    parser.add_argument(
        "--fast-scan",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="4-bit fast-scan PQ lists in RAM (--no-fast-scan: 8-bit PQ lists on disk)",
    )
    parser.add_argument(
        "--nprobe", type=int, default=None, help="fixed nprobe (default: tuned for the target)"
    )
    parser.add_argument(
        "--recall-target", type=float, default=0.9, help="recall@10 the search is tuned for"
    )
    parser.add_argument(
        "--tune-queries", type=int, default=200, help="indexed vectors used to tune the search"
    )
    parser.add_argument("--train-size", type=int, default=131_072)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where indexes are built (tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the built indexes")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "scale.jsonl"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "images" / "bench_scale.png"))
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="run each size inside a memory cgroup of this size (Linux, root)",
    )
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="measure nothing: redraw the plot and rewrite the report from --results",
    )
    parser.add_argument(
        "--report",
        default=str(ROOT / "runs" / "bench-scale" / "report.md"),
        help="the markdown table written at the end (experiments/run.py publishes it)",
    )
    args = parser.parse_args(argv)

    if args.calibrate:
        rec = calibrate(Path(args.calibrate), args.d, Path(args.calibration))
        keys = ("real", "group", "between", "fitted", "kmeans_share")
        print(json.dumps({k: rec[k] for k in keys}))
        return 0
    if not Path(args.calibration).is_file():
        parser.error(
            f"no calibration at {args.calibration}: run with --calibrate "
            "flickr30k_image_embeddings.npy (any real image embeddings) first"
        )
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
    for n in [] if args.docs_only else args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), *(argv or sys.argv[1:])]
        limit = None
        if args.memory_limit_gb:
            try:
                limit = MemoryLimit(int(args.memory_limit_gb * 2**30))
            except RuntimeError as exc:
                parser.error(str(exc))
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, preexec_fn=limit.join if limit else None
            )
            cgroup_peak = limit.peak() if limit else None
        finally:
            if limit:
                limit.close()
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            if limit and proc.returncode in (-9, 137):
                why = f"killed at the {args.memory_limit_gb} GiB memory limit ({why})"
            print(f"N={n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            old[n] = {"n": n, "failed": why}
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if limit:
            row["memory_limit_gb"] = args.memory_limit_gb
            row["cgroup_peak_gb"] = round(cgroup_peak / 2**30, 3)  # type: ignore[operator]
        print(json.dumps(row), flush=True)
        old[n] = row
        results.write_text("".join(json.dumps(r) + "\n" for r in old.values()))
    ok = [r for r in old.values() if "failed" not in r]
    if ok:
        png = Path(args.png)
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(ok, png)
        used = argv or sys.argv[1:]
        if args.docs_only:  # the run that measured them, as far as the rows tell
            used = ["--sizes", *(str(r["n"]) for r in sorted(ok, key=lambda r: int(r["n"])))]
        command = "python benchmarks/bench_scale.py " + " ".join(used)
        failed = [r for r in old.values() if "failed" in r]
        write_report(Path(args.report), ok, command, png, failed)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
