"""IVF-PQ with inverted lists on disk: built shard by shard, searched memory-mapped.

:class:`IVFDiskIndex` (kind ``"ivf_disk"``) is a FAISS ``IndexIVFPQ`` whose inverted lists
live in ``lists.ivfdata`` (FAISS ``OnDiskInvertedLists``, memory-mapped), so the index
can exceed RAM: the resident part is the coarse centroids, the PQ codebooks and the list
offsets. Optionally (``refine=True``, the default) the best ``k_factor x k`` PQ candidates
are re-scored against 8-bit per-vector codes of the original vectors
(``refine_codes.npy``, memory-mapped too), which lifts recall well above plain PQ.

:func:`build_ivf_disk` builds one from an iterable of shards ``(vectors, ids)`` with
bounded memory: the quantiser is trained on a sample taken from the first shards, each
shard is encoded into a small FAISS index written to a staging directory, and the parts
are merged into one on-disk inverted-list file (``faiss.contrib.ondisk.merge_ondisk``).
With ``fast_scan=True`` the lists hold 4-bit PQ codes in FAISS's fast-scan layout
(``IVF...,PQmx4fs``: look-up tables held in SIMD registers; with twice the sub-quantisers
in the same bytes, ~6x the scan speed of 8-bit PQ at recall@10 0.91 on 1M calibrated
vectors, ``benchmarks/bench_ivf_scan.py``). FAISS cannot memory-map that layout, so its
lists (``m / 2 + 8`` bytes per vector: 72 B at ``m = 128``, 0.72 GB for 10M vectors) are
held in RAM and stored in ``index.faiss``; the re-scoring codes, the large part, stay
memory-mapped on disk.
The result is saved like every other index (manifest with checksums and byte sizes,
directory assembled atomically). :func:`choose_ivf_params` picks ``nlist``, the PQ size
and ``nprobe`` for a collection size and a memory budget (see its docstring for why it is
not autofaiss). :class:`~vistrieve.indexes.sharded.ShardedSearch` searches several such
indexes and merges their results into one top-k.

Layout (besides ``manifest.json``, ``ids.json``, ``labels.npy``)::

    trained.faiss       the trained, empty index (centroids, PQ codebooks)
    index.faiss         the index, referring to lists.ivfdata in the same directory
    lists.ivfdata       the inverted lists (PQ codes and labels), memory-mapped
                        (absent with fast_scan: the lists are inside index.faiss)
    refine_codes.npy    int8 (count, dim) codes, refine_scales.npy float32 (count,)
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vistrieve.indexes.base import BaseIndex, Metric
from vistrieve.indexes.sharded import merge_top_k
from vistrieve.indexes.sq import quantize_rows, score_rows
from vistrieve.utils.io import advise_random, atomic_save_npy, atomic_write, load_npy

logger = logging.getLogger(__name__)


def choose_ivf_params(
    n: int,
    dim: int,
    *,
    memory_budget_bytes: int | None = None,
    refine: bool = True,
    fast_scan: bool = False,
) -> dict[str, Any]:
    """IVF-PQ parameters for ``n`` vectors of ``dim`` under a RAM budget.

    autofaiss (which clip-retrieval uses for this) is not a dependency: its current
    release (2.18) pins ``numpy<2`` and ``pandas<3`` and would downgrade the numpy that
    torch and the rest of vistrieve run on. This is the small rule it would apply here:

    * ``nlist``: the power of two nearest ``4 sqrt(n)``, kept to at most ``n / 39``
      (FAISS wants 39 training points per centroid) and within [16, 65536];
    * PQ bytes ``m``: the largest of ``dim/4, 64, 32, 16, 8`` that divides ``dim`` and
      keeps the codes and labels (``n (m + 8)`` bytes) within half the budget, so that
      the memory-mapped lists can stay in the page cache; the rest of the budget holds
      centroids, codebooks and, while searching, the refine pages read. With
      ``fast_scan`` a code is ``m / 2`` bytes (4-bit sub-quantisers), held in RAM, and
      the same byte sizes are tried (``m`` = ``dim/2, 128, 64, 32, 16``): twice the
      sub-quantisers of 8-bit PQ in as many bytes: at 1M vectors, recall@10 0.91 at 6.7x
      the exact scan, where 64 4-bit ones needed 4x the candidates for 0.90
      (``benchmarks/bench_ivf_scan.py``);
    * ``nprobe``: ``nlist / 16`` clamped to [16, 256], a starting point only: on the
      calibrated data of ``benchmarks/bench_scale.py`` recall@10 0.9 needed ``nlist / 8``
      to ``nlist / 4``, which is why ``build_ivf_disk(recall_target=...)`` tunes it.

    Returns:
        ``{"nlist", "m", "nprobe", "refine", "fast_scan", "disk_bytes", "ram_bytes"}`` (the
        byte figures are estimates: lists + refine codes on disk; resident structures,
        fast-scan lists included, in RAM).

    Raises:
        ValueError: ``n`` or ``dim`` not positive, or no PQ size fits the budget.
    """
    if n <= 0 or dim <= 0:
        raise ValueError(f"n and dim must be positive, got n={n}, dim={dim}")
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    nlist = int(min(65536, max(16, min(nlist, 2 ** int(math.log2(max(16, n // 39)))))))
    choices = [m for m in (dim // 4, 64, 32, 16, 8) if m > 0 and dim % m == 0]
    if fast_scan:
        choices = [2 * m for m in choices if 2 * m <= dim and dim % (2 * m) == 0]
    m = None
    for cand in sorted(set(choices), reverse=True):
        code = cand // 2 if fast_scan else cand
        if memory_budget_bytes is None or n * (code + 8) <= memory_budget_bytes // 2:
            m = cand
            break
    if m is None:
        raise ValueError(
            f"no PQ size fits {n} vectors of dim {dim} in a budget of {memory_budget_bytes} "
            "bytes (the smallest, 8 bytes + 8 for the label, needs "
            f"{n * 16 * 2} bytes); raise the budget or split the collection into shards"
        )
    nprobe = int(min(256, max(16, nlist // 16)))
    lists = n * ((m // 2 if fast_scan else m) + 8)
    disk = lists + (n * (dim + 4) if refine else 0)
    ram = nlist * dim * 4 + 256 * dim * 4 + nlist * 48 + n * 8 + (lists if fast_scan else 0)
    return {
        "nlist": nlist,
        "m": m,
        "nprobe": nprobe,
        "refine": refine,
        "fast_scan": fast_scan,
        "disk_bytes": int(disk),
        "ram_bytes": int(ram),
    }


class IVFDiskIndex(BaseIndex):
    """IVF-PQ index with memory-mapped on-disk inverted lists and 8-bit re-scoring.

    Built in memory with :meth:`add` (the first add trains it, like
    :class:`~vistrieve.indexes.FaissIndex`) or shard by shard with :func:`build_ivf_disk`;
    :meth:`save` writes the lists to disk and :func:`~vistrieve.indexes.load_index`
    memory-maps them. A loaded index is read-only: rebuild it to add or remove vectors.

    Args:
        dim: Vector dimension.
        metric: ``"ip"`` or ``"l2"``.
        model: Encoder name recorded in the manifest.
        nlist: IVF cells.
        m: PQ sub-quantisers (a divisor of ``dim``): bytes per vector for 8-bit PQ, twice
            the bytes with ``fast_scan``; default ``dim / 4`` (``dim / 2`` with
            ``fast_scan``) when it divides.
        nprobe: Cells visited per query.
        refine: Re-score ``k_factor x k`` PQ candidates with 8-bit codes of the vectors.
        k_factor: Candidates per result re-scored when ``refine``.
        train_size: Most vectors used for training (default ``max(65536, 64 x nlist)``).
        fast_scan: 4-bit PQ codes in FAISS's fast-scan layout (``m`` even), lists in RAM.
    """

    kind: ClassVar[str] = "ivf_disk"

    def __init__(
        self,
        dim: int,
        *,
        metric: Metric = "ip",
        model: str | None = None,
        nlist: int = 256,
        m: int | None = None,
        nprobe: int = 16,
        refine: bool = True,
        k_factor: int = 4,
        train_size: int | None = None,
        fast_scan: bool = False,
    ) -> None:
        super().__init__(dim, metric=metric, model=model)
        if m is None:
            sizes = (dim // 2, dim // 4, 16, 8, 4, 2) if fast_scan else (dim // 4, 16, 8, 4, 2, 1)
            m = next(
                (c for c in sizes if c and dim % c == 0 and (c % 2 == 0 or not fast_scan)),
                1,  # an odd dim has no even divisor: fast_scan is refused below
            )
        for name, value in (("nlist", nlist), ("m", m), ("nprobe", nprobe), ("k_factor", k_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % m:
            raise ValueError(f"m (PQ bytes) must divide dim {dim}, got {m}; try {dim // 4}")
        if fast_scan and m % 2:
            raise ValueError(
                f"fast_scan packs two 4-bit codes per byte: m must be even and divide dim "
                f"{dim}, got {m}" + ("; an odd dim needs fast_scan=False" if dim % 2 else "")
            )
        self.fast_scan = bool(fast_scan)
        self.nlist, self.m, self.nprobe = int(nlist), int(m), int(nprobe)
        self.refine, self.k_factor = bool(refine), int(k_factor)
        self.train_size = train_size
        self._index = self._build()
        self._trained: bytes | None = None
        self._on_disk = False
        self._codes: np.ndarray = np.empty((0, dim), dtype=np.int8)
        self._scales: np.ndarray = np.empty((0,), dtype=np.float32)
        self.tuning: dict[str, Any] | None = None
        """How ``nprobe`` and ``k_factor`` were chosen (:func:`tune_search`), if they were."""

    @property
    def factory(self) -> str:
        """The FAISS factory string of the index."""
        return f"IVF{self.nlist},PQ{self.m}" + ("x4fs" if self.fast_scan else "")

    def _build(self) -> Any:
        import faiss

        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        return faiss.index_factory(self.dim, self.factory, metric)

    def _manifest_extra(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "m": self.m,
            "nprobe": self.nprobe,
            "refine": self.refine,
            "k_factor": self.k_factor,
            "fast_scan": self.fast_scan,
            **({"tuning": self.tuning} if self.tuning is not None else {}),
        }

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        index = cls(
            manifest["dim"],
            metric=manifest["metric"],
            model=manifest.get("model"),
            nlist=int(manifest["nlist"]),
            m=int(manifest["m"]),
            nprobe=int(manifest["nprobe"]),
            refine=bool(manifest["refine"]),
            k_factor=int(manifest["k_factor"]),
            fast_scan=bool(manifest.get("fast_scan", False)),
        )
        index.tuning = manifest.get("tuning")
        return index

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (labels are :meth:`labels_of` the ids)."""
        return self._index

    # -- building ----------------------------------------------------------------------
    def train(self, sample: np.ndarray) -> None:
        """Train the coarse quantiser and the PQ codebooks on ``sample`` (float, (n, dim)).

        Raises:
            ValueError: fewer vectors than ``nlist`` or than 256 (PQ centroids).
        """
        x = self._check_vectors(sample, "training vectors")
        need = max(self.nlist, 16 if self.fast_scan else 256)
        if len(x) < need:
            raise ValueError(
                f"training {self.factory} needs at least {need} vectors, got {len(x)}; "
                "give more vectors or lower nlist"
            )
        limit = self.train_size or max(65536, 64 * self.nlist)
        if len(x) > limit:
            x = x[np.sort(np.random.default_rng(0).choice(len(x), limit, replace=False))]
        import faiss

        logger.info("training %s on %d vectors", self.factory, len(x))
        self._index.train(x)
        self._trained = bytes(faiss.serialize_index(self._index))

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if self._on_disk:
            raise ValueError(
                "this ivf_disk index was loaded from disk and is read-only (its re-scoring "
                "codes are memory-mapped); rebuild it with "
                "vistrieve.indexes.ivf_disk.build_ivf_disk to add vectors"
            )
        if not self._index.is_trained:
            self.train(vectors)
        self._index.add_with_ids(vectors, labels)
        if self.refine:
            codes, scales = quantize_rows(vectors)
            self._codes = np.concatenate([self._codes, codes])
            self._scales = np.concatenate([self._scales, scales])

    def _remove(self, positions: np.ndarray, labels: np.ndarray) -> None:
        import faiss

        if self._on_disk:
            raise ValueError(
                "this ivf_disk index was loaded from disk and is read-only (its re-scoring "
                "codes are memory-mapped); rebuild it without the removed vectors"
            )
        self._index.remove_ids(faiss.IDSelectorBatch(labels))
        if self.refine:
            keep = np.ones(len(self._codes), dtype=bool)
            keep[positions] = False
            self._codes, self._scales = self._codes[keep], self._scales[keep]

    # -- search ------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        fetch = min(len(self), k * self.k_factor) if self.refine else k
        params = faiss.SearchParametersIVF()
        params.nprobe = min(self.nprobe, self.nlist)
        dist, labels = self._index.search(queries, fetch, params=params)
        pos = self._positions_of_labels(labels)
        missing = pos < 0
        if self.refine:
            safe = np.where(missing, 0, pos)
            scores = score_rows(self._codes, safe, queries, scales=self._scales, metric=self.metric)
        else:
            scores = dist if self.metric == "ip" else -dist
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        tie = np.where(missing, np.iinfo(np.int64).max, pos)
        order = np.lexsort((tie, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)

    # -- persistence -------------------------------------------------------------------
    def _save_payload(self, directory: Path) -> list[Path]:
        import faiss as _faiss
        from faiss.contrib.ondisk import merge_ondisk

        faiss: Any = _faiss
        if self._trained is None:
            self.train_needed_error()
        assert self._trained is not None
        trained, index_f, lists_f = (
            directory / "trained.faiss",
            directory / "index.faiss",
            directory / "lists.ivfdata",
        )
        atomic_write(trained, lambda p: p.write_bytes(self._trained or b""))
        if self.fast_scan:
            # Fast-scan lists cannot live in an OnDiskInvertedLists file: they are
            # written inside index.faiss and read back into RAM.
            atomic_write(index_f, lambda p: faiss.write_index(self._index, str(p)))
            return [trained, index_f, *self._save_refine(directory)]
        src = faiss.extract_index_ivf(self._index)
        ondisk = faiss.downcast_InvertedLists(src.invlists) if self._on_disk else None
        if isinstance(ondisk, faiss.OnDiskInvertedLists):
            # Copied through read()/write(), not merged through two memory maps: a merge
            # would map every list page of both files into this process (~2 x 72 B per
            # vector counted as resident) and gains nothing, as the offsets stay valid.
            _copy_file_bytes(Path(ondisk.filename), lists_f)
            before = ondisk.filename
            ondisk.filename = str(lists_f)
            try:
                faiss.write_index(self._index, str(index_f))
            finally:
                ondisk.filename = before
        else:
            # In-memory lists: merged into a new on-disk file.
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                part = Path(tmp) / "part.faiss"
                faiss.write_index(self._index, str(part))
                merged = faiss.deserialize_index(np.frombuffer(self._trained, dtype=np.uint8))
                merge_ondisk(merged, [str(part)], str(lists_f))
                faiss.write_index(merged, str(index_f))
                del merged
        return [trained, index_f, lists_f, *self._save_refine(directory)]

    def _save_refine(self, directory: Path) -> list[Path]:
        if not self.refine:
            return []
        fc, fs = directory / "refine_codes.npy", directory / "refine_scales.npy"
        _save_npy_chunked(fc, self._codes, len(self))
        atomic_save_npy(fs, np.asarray(self._scales[: len(self)]))
        return [fc, fs]

    def train_needed_error(self) -> None:
        """Raise the error for saving an index that was never trained."""
        raise ValueError("an empty ivf_disk index has nothing to save: add vectors first")

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        import faiss

        f = directory / "index.faiss"
        try:
            flags = 0 if self.fast_scan else faiss.IO_FLAG_ONDISK_SAME_DIR
            index = faiss.read_index(str(f), flags)
        except RuntimeError as exc:
            raise ValueError(f"cannot read {f}: it is truncated or corrupt; rebuild it") from exc
        if index.d != self.dim or index.ntotal != manifest["count"]:
            raise ValueError(
                f"{f} holds {index.ntotal} vectors of dim {index.d}; the manifest says "
                f"{manifest['count']} of dim {self.dim}; rebuild the index"
            )
        self._index = index
        self._trained = (directory / "trained.faiss").read_bytes()
        self._on_disk = True
        if self.refine:
            self._codes = _load_mmap(directory / "refine_codes.npy", (manifest["count"], self.dim))
            self._scales = load_npy(directory / "refine_scales.npy").astype(np.float32)


def _copy_file_bytes(
    src: Path, dest: Path, offset: int = 0, length: int | None = None, chunk: int = 1 << 24
) -> None:
    """Append ``length`` bytes of ``src`` from ``offset`` (default: to its end) to ``dest``,
    by plain reads and writes (nothing is memory-mapped, so nothing counts as resident)."""
    remaining = os.path.getsize(src) - offset if length is None else length
    with open(src, "rb") as fin, open(dest, "ab") as fout:
        fin.seek(offset)
        while remaining > 0:
            block = fin.read(min(chunk, remaining))
            if not block:
                raise ValueError(f"{src} ended {remaining} bytes early; rebuild the index")
            fout.write(block)
            remaining -= len(block)


def _save_npy_chunked(path: Path, arr: np.ndarray, n: int, chunk: int = 1 << 18) -> None:
    """Write ``arr[:n]`` as ``.npy`` atomically, copying in chunks.

    A memory-mapped ``arr`` that maps a whole file is copied from that file with plain
    reads, and the output is written with plain writes: copying through memory maps would
    count every page of both files as resident memory (2 x dim bytes per vector).
    """
    shape = (n, *arr.shape[1:])
    header = {
        "descr": np.lib.format.dtype_to_descr(arr.dtype),
        "fortran_order": False,
        "shape": shape,
    }
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    source: tuple[Path, int] | None = None
    if isinstance(arr, np.memmap) and arr.filename is not None and arr.flags.c_contiguous:
        if os.path.getsize(arr.filename) == int(arr.offset) + arr.nbytes:
            source = (Path(arr.filename), int(arr.offset))

    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
        if source is not None:
            _copy_file_bytes(source[0], p, source[1], n * row_bytes)
            return
        with open(p, "ab") as fh:
            for s in range(0, n, chunk):
                fh.write(np.ascontiguousarray(arr[s : min(s + chunk, n)]).tobytes())

    atomic_write(path, _write)


def _load_mmap(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing array file {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read array file {path}: truncated or corrupt ({exc})") from exc
    if arr.shape != shape:
        raise ValueError(f"{path} holds {arr.shape}, the manifest says {shape}; rebuild the index")
    advise_random(arr)
    return arr


def tune_search(
    index: IVFDiskIndex,
    queries: np.ndarray,
    truth: np.ndarray,
    *,
    recall_target: float = 0.9,
    k: int = 10,
    self_positions: np.ndarray | None = None,
    nprobes: Sequence[int] | None = None,
    k_factors: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Choose the fastest ``nprobe`` and ``k_factor`` whose recall@k meets a target.

    What autofaiss does after building: for each ``k_factor`` the smallest power-of-two
    ``nprobe`` that reaches ``recall_target`` on ``queries`` is found by searching, each
    qualifying setting is timed, and the fastest is set on ``index``. When none reaches
    the target, the setting with the highest recall is set and ``met`` is ``False``.

    Args:
        index: The index to tune (its ``nprobe`` and ``k_factor`` are changed).
        queries: Float queries (n, dim), e.g. a sample of the indexed vectors.
        truth: Exact top-``k`` positions of each query (n, k), e.g. from a flat scan.
        recall_target: Wanted mean recall@k (share of the exact top-k found).
        k: Results per query.
        self_positions: For queries that are indexed vectors, the position of each one;
            it is removed from the results (``truth`` must leave it out too).
        nprobes: Values tried (default: powers of two from 1 to ``nlist``).
        k_factors: Re-scoring factors tried (only the first one without ``refine``);
            default ``(4, 16, 64)``, or ``(16, 64, 256)`` for the coarser 4-bit codes of a
            ``fast_scan`` index.

    Returns:
        ``{"nprobe", "k_factor", "recall", "qps", "met", "tried"}``; ``tried`` lists
        every setting searched with its recall (and queries/s where timed).

    Raises:
        ValueError: shapes that do not match, or a target outside (0, 1].
    """
    import time

    queries = index._check_vectors(queries, "queries")
    truth = np.asarray(truth, dtype=np.int64)
    if truth.shape != (len(queries), k):
        raise ValueError(f"truth must have shape ({len(queries)}, {k}), got {truth.shape}")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    if self_positions is not None and len(self_positions) != len(queries):
        raise ValueError("self_positions needs one position per query")
    probes = sorted(set(nprobes or [2**i for i in range(int(math.log2(index.nlist)) + 1)]))
    if k_factors is None:
        k_factors = (16, 64, 256) if index.fast_scan else (4, 16, 64)
    factors = list(k_factors) if index.refine else [index.k_factor]
    extra = 1 if self_positions is not None else 0

    def run(nprobe: int, k_factor: int) -> tuple[float, float]:
        index.nprobe, index.k_factor = nprobe, k_factor
        t0 = time.perf_counter()
        _, pos = index.search_arrays(queries, k + extra)
        elapsed = time.perf_counter() - t0
        if extra:
            assert self_positions is not None
            rows = [
                [p for p in row if p != me][:k]
                for row, me in zip(pos.tolist(), self_positions.tolist(), strict=True)
            ]
        else:
            rows = pos.tolist()
        found = [len(set(r) & set(t)) / k for r, t in zip(rows, truth.tolist(), strict=True)]
        return float(np.mean(found)), len(queries) / max(elapsed, 1e-9)

    tried: list[dict[str, Any]] = []
    for k_factor in factors:
        for nprobe in probes:
            recall, qps = run(nprobe, k_factor)
            tried.append({"nprobe": nprobe, "k_factor": k_factor, "recall": recall, "qps": qps})
            if recall >= recall_target:
                break
    ok = [t for t in tried if t["recall"] >= recall_target]
    if ok:
        # Time the qualifying settings again, warm, so the choice does not favour the
        # ones that happened to run after the pages were cached.
        for t in ok:
            t["qps"] = max(t["qps"], run(t["nprobe"], t["k_factor"])[1])
        best = max(ok, key=lambda t: t["qps"])
    else:
        best = max(tried, key=lambda t: (t["recall"], t["qps"]))
        logger.warning(
            "no setting reaches recall@%d %.2f (best %.3f at nprobe %d, k_factor %d)",
            k,
            recall_target,
            best["recall"],
            best["nprobe"],
            best["k_factor"],
        )
    index.nprobe, index.k_factor = int(best["nprobe"]), int(best["k_factor"])
    return {**best, "met": bool(ok), "tried": tried}


def build_ivf_disk(
    shards: Iterable[tuple[np.ndarray, Sequence[str]]],  # ids: any sequence of str
    path: str | os.PathLike[str],
    *,
    dim: int,
    metric: Metric = "ip",
    model: str | None = None,
    nlist: int | None = None,
    m: int | None = None,
    nprobe: int | None = None,
    refine: bool = True,
    k_factor: int = 4,
    expected_count: int | None = None,
    memory_budget_bytes: int | None = None,
    train_size: int | None = None,
    recall_target: float | None = None,
    tune_queries: int = 200,
    tune_k: int = 10,
    tune_margin: float = 0.01,
    seed: int = 0,
    fast_scan: bool = False,
) -> IVFDiskIndex:
    """Build an ``ivf_disk`` index at ``path`` from shards, holding one shard at a time.

    Args:
        shards: ``(vectors, ids)`` pairs, e.g. the ``.npy`` shards written by
            ``vistrieve index --engine ray``. The training sample is drawn from the first
            shards (up to ``train_size`` vectors), so shards should not be sorted by
            content.
        path: The index directory (replaced atomically when the build succeeds).
        dim: Vector dimension.
        metric: ``"ip"`` or ``"l2"``.
        model: Encoder name recorded in the manifest.
        nlist, m, nprobe: IVF-PQ parameters; missing ones come from
            :func:`choose_ivf_params` for ``expected_count`` and ``memory_budget_bytes``.
        refine: Keep 8-bit codes of the vectors for re-scoring.
        k_factor: Candidates per result re-scored.
        expected_count: Number of vectors expected (for parameter choice; default: the
            training sample size x 10).
        memory_budget_bytes: RAM budget for :func:`choose_ivf_params`.
        train_size: Vectors gathered from the first shards for training
            (default ``max(65536, 64 x nlist)``).
        recall_target: When set, ``nprobe`` and ``k_factor`` are chosen by
            :func:`tune_search` for this recall@``tune_k``: ``tune_queries`` vectors of the
            training sample are the queries, and their exact neighbours are computed
            while the shards are added (one extra flat scan, shard by shard). The choice
            and the measured recall are saved in the manifest (``"tuning"``).
        tune_queries, tune_k, seed: Queries and ``k`` of the tuning, and the seed that
            draws the queries.
        tune_margin: Added to ``recall_target`` while tuning: the tuning queries are a
            small sample (200 give a standard error near 0.01), so the setting that just
            meets the target on them misses it on about half of new query sets.
        fast_scan: 4-bit fast-scan PQ lists held in RAM (see the module docstring);
            each shard is added to the one in-memory index instead of to a staged part.

    Returns:
        The saved index, reopened memory-mapped.

    Raises:
        ValueError: shards of the wrong shape, duplicate ids, or too few vectors to train.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    it = iter(shards)
    buffered: list[tuple[np.ndarray, list[str]]] = []
    if nlist is None or m is None or nprobe is None:
        guess = choose_ivf_params(
            expected_count or 1_000_000,
            dim,
            memory_budget_bytes=memory_budget_bytes,
            fast_scan=fast_scan,
        )
        nlist, m, nprobe = nlist or guess["nlist"], m or guess["m"], nprobe or guess["nprobe"]
    index = IVFDiskIndex(
        dim,
        metric=metric,
        model=model,
        nlist=nlist,
        m=m,
        nprobe=nprobe,
        refine=refine,
        k_factor=k_factor,
        train_size=train_size,
        fast_scan=fast_scan,
    )
    if not 0.0 <= tune_margin < 1.0:
        raise ValueError(f"tune_margin must be in [0, 1), got {tune_margin}")
    need = train_size or max(65536, 64 * index.nlist)
    have = 0
    for vecs, ids in it:
        buffered.append((index._check_vectors(vecs), list(ids)))
        have += len(buffered[-1][0])
        if have >= need:
            break
    if not buffered:
        raise ValueError("no shards given: nothing to index")
    sample = np.concatenate([v for v, _ in buffered])[:need]
    index.train(sample)
    assert index._trained is not None
    trained = index._trained
    tune_pos = tune_q = None
    truth: tuple[np.ndarray, np.ndarray] | None = None
    if recall_target is not None:
        rng = np.random.default_rng(seed)
        tune_pos = np.sort(rng.choice(len(sample), min(tune_queries, len(sample)), replace=False))
        tune_q = np.ascontiguousarray(sample[tune_pos])
        truth = (
            np.full((len(tune_pos), tune_k + 1), -np.inf, dtype=np.float32),
            np.full((len(tune_pos), tune_k + 1), -1, dtype=np.int64),
        )
    del sample

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build.", dir=target.parent))
    try:
        parts: list[str] = []
        codes_f = open(staging / "codes.bin", "wb")  # noqa: SIM115 - closed below
        scales: list[np.ndarray] = []
        n = 0
        # Fast-scan lists are held in RAM anyway: the shards go straight into one index.
        resident = (
            faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8)) if fast_scan else None
        )

        def add_shard(vecs: np.ndarray, ids: Sequence[str]) -> None:
            nonlocal n, truth
            vecs = index._check_vectors(vecs)
            new_ids = index._check_ids(ids, len(vecs))
            labels = np.arange(n, n + len(vecs), dtype=np.int64)
            if resident is not None:
                resident.add_with_ids(vecs, labels)
            else:
                part = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
                part.add_with_ids(vecs, labels)
                f = staging / f"part{len(parts):05d}.faiss"
                faiss.write_index(part, str(f))
                parts.append(str(f))
                del part
            if refine:
                c, s = quantize_rows(vecs)
                codes_f.write(c.tobytes())
                scales.append(s)
            index._pos.update({i: n + j for j, i in enumerate(new_ids)})
            index._ids.extend(new_ids)
            if truth is not None and tune_q is not None:
                kk = min(tune_k + 1, len(vecs))
                if metric == "ip":
                    ts, tp = faiss.knn(tune_q, vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
                else:
                    ts, tp = faiss.knn(tune_q, vecs, kk, metric=faiss.METRIC_L2)
                    ts = -ts
                truth = merge_top_k(
                    (truth[0], ts), (truth[1], np.where(tp >= 0, tp + n, -1)), tune_k + 1
                )
            n += len(vecs)
            logger.info("ivf_disk: %d vectors encoded", n)

        with codes_f:
            for vecs, ids in buffered:
                add_shard(vecs, ids)
            buffered.clear()
            for vecs, ids in it:
                add_shard(vecs, ids)
        if resident is not None:
            merged, resident = resident, None  # one reference, freed before the reload
        else:
            merged = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
            merge_ondisk(merged, parts, str(staging / "lists.ivfdata"))
            for f in parts:
                os.unlink(f)
        index._index = merged
        index._labels = np.arange(n, dtype=np.int64)
        index._next_label = n
        index._pos_map = None  # the duplicate checks are done; tuning and saving need no map
        index._on_disk = not fast_scan  # fast-scan lists are in RAM, saved like a fresh index
        if refine:
            index._codes = np.memmap(staging / "codes.bin", dtype=np.int8, mode="r", shape=(n, dim))
            advise_random(index._codes)
            index._scales = np.concatenate(scales) if scales else np.empty((0,), np.float32)
        if truth is not None and tune_pos is not None and tune_q is not None:
            exact = [
                [p for p in row if p != me][:tune_k]
                for row, me in zip(truth[1].tolist(), tune_pos.tolist(), strict=True)
            ]
            if min(len(r) for r in exact) < tune_k:
                raise ValueError(f"recall_target needs more than {tune_k} vectors; got {n}")
            result = tune_search(
                index,
                tune_q,
                np.array(exact, dtype=np.int64),
                recall_target=min(1.0, (recall_target or 0.0) + tune_margin),
                k=tune_k,
                self_positions=tune_pos,
            )
            index.tuning = {
                "recall_target": recall_target,
                "margin": tune_margin,
                "k": tune_k,
                "queries": len(tune_pos),
                **{key: result[key] for key in ("nprobe", "k_factor", "recall", "qps", "met")},
            }
            logger.info("ivf_disk: tuned %s", index.tuning)
        index.save(target)
        del merged
        index._index = None
        index._codes = np.empty((0, dim), dtype=np.int8)
        index._ids, index._pos = [], {}  # free them before the reopened copy is read
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return IVFDiskIndex.load(target)
