"""Quantised flat search: an 8-bit or bfloat16 scan in RAM, float re-scoring from disk.

:class:`SQ8Index` (kind ``"sq8"``) answers in two stages:

1. **Scan**: every vector is quantised to int8 with one scale per vector (symmetric:
   ``x ~= codes * scale``) and held in RAM; each query block is quantised to int8 too and
   multiplied by ``torch._int_mm`` (int8 x int8 -> int32, through oneDNN: AMX or VNNI
   where the CPU has them), then by the row scales. The best ``candidates`` positions
   per query are kept in FAISS's heaps, which see only the chunks of 64 scores that can
   enter them (:func:`push_scores`). Where ``torch._int_mm`` has no CPU kernel each
   block is decoded to float32 and multiplied in float.
2. **Re-scoring**: the candidates' float32 vectors are read from a memory-mapped file (the
   index directory's ``vectors.npy``, or a spill file while the index is built in memory)
   and scored exactly; the best ``k`` are returned (score descending, position ascending).

RAM: ``dim + 4`` bytes per vector (the codes and their scales), a quarter of float32
storage; the float32 vectors stay on disk, and only the
pages of re-scored candidates are read. Scores are exact inner products; the ranking
recall against exact search is measured by ``benchmarks/bench_exact_search.py``.

:class:`BF16Index` (kind ``"bf16"``) is the same with bfloat16 rows in RAM (half of
float32), fast on CPUs that compute bfloat16 natively (AMX, AVX512-BF16).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vistrieve.indexes.base import BaseIndex, Metric
from vistrieve.utils.io import atomic_write

logger = logging.getLogger(__name__)


@functools.cache
def _int_mm_works() -> bool:
    """Whether this torch computes int8 x int8 -> int32 products on the CPU
    (``torch._int_mm``); builds without it decode each block to float32 instead."""
    fn = getattr(torch, "_int_mm", None)
    if fn is None:
        return False
    try:
        a, b = torch.ones((17, 8), dtype=torch.int8), torch.ones((8, 8), dtype=torch.int8)
        return bool((fn(a, b) == 8).all())
    except RuntimeError as exc:  # a build without a CPU kernel for it
        logger.info("torch._int_mm unavailable on this build (%s): int8 scan decodes", exc)
        return False


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantisation of a float array.

    Returns:
        ``(codes, scales)``: int8 (n, d) in [-127, 127] and float32 (n,), with
        ``x ~= codes * scales[:, None]``; an all-zero row gets scale 1.
    """
    peak = np.abs(x).max(axis=1) if x.size else np.zeros((len(x),), np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def score_rows(
    table: np.ndarray,
    positions: np.ndarray,
    queries: np.ndarray,
    *,
    scales: np.ndarray | None = None,
    metric: str = "ip",
    rows_per_block: int = 8192,
) -> np.ndarray:
    """Exact scores of each query against its own candidate rows of ``table``.

    The rows are read ``_GATHER_ROWS`` at a time by :func:`gather_rows`, so that a
    memory-mapped table larger than the page cache is read at the disk's queue depth
    rather than one row at a time.

    Args:
        table: (n, d) rows, float32 or int8 codes (then ``scales`` gives the per-row
            factor, as from :func:`quantize_rows`); a memory map is read row by row.
        positions: (nq, c) row numbers, one list of candidates per query; all ``>= 0``.
        queries: float32 (nq, d).
        scales: (n,) per-row factors of quantised rows, or None for float rows.
        metric: ``"ip"`` (inner product) or ``"l2"`` (negative squared distance).
        rows_per_block: Candidate rows gathered and scored at a time; the default keeps a
            block (rows x d floats) near the size of a core's L2 cache: 1.9-2.6x the
            speed of one large ``einsum`` (``benchmarks/bench_rescore.py``).

    Returns:
        float32 (nq, c) scores, higher is closer.

    Raises:
        ValueError: an unknown ``metric``.
    """
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    nq, c = positions.shape
    out = np.empty((nq, c), dtype=np.float32)
    step = max(1, rows_per_block // max(1, c))
    outer = step * max(1, _GATHER_ROWS // max(1, step * c))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    with torch.inference_mode():
        for gs in range(0, nq, outer):
            gathered = gather_rows(table, positions[gs : gs + outer].ravel())
            gathered = gathered.reshape(-1, c, *table.shape[1:])
            for qs in range(gs, min(gs + outer, nq), step):
                p = positions[qs : qs + step]
                rows = torch.from_numpy(gathered[qs - gs : qs - gs + step]).float()
                out[qs : qs + step] = _score_block(rows, q_all[qs : qs + step], p, scales, metric)
    return out


def _score_block(
    rows: torch.Tensor, q: torch.Tensor, p: np.ndarray, scales: np.ndarray | None, metric: str
) -> np.ndarray:
    """Scores of a (b, c, d) block of candidate rows against its b queries."""
    scores = torch.bmm(rows, q[:, :, None])[..., 0]
    if metric == "l2":
        if scales is not None:
            s = torch.from_numpy(scales[p.ravel()]).view(p.shape)
            scores *= s
            sq = (rows * rows).sum(-1) * s * s
        else:
            sq = (rows * rows).sum(-1)
        scores = 2 * scores - sq - (q * q).sum(-1, keepdim=True)
    elif scales is not None:
        scores *= torch.from_numpy(scales[p.ravel()]).view(p.shape)
    return scores.numpy()


_GATHER_ROWS = 1 << 16
"""Candidate rows read per :func:`gather_rows` call in :func:`score_rows`."""
_READERS = 16
"""Threads reading a memory map at once: random 256-byte rows of a file outside the page
cache were read at ~14k rows/s by one thread and ~68k by 16, whose page faults wait on the
disk in parallel (``benchmarks/bench_random_reads.py``)."""
_PROBE = 64
_CACHED_S = 10e-6
"""A row read faster than this came from the page cache (~0.1 us); one from disk ~80 us."""
_reader_pool: Any = None
_reader_lock = threading.Lock()


def gather_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``table[rows]`` as a new array, read by several threads when ``table`` is a memory map.

    Random rows of a memory-mapped file that is not in the page cache are read one page
    fault at a time by one thread, at the disk's latency; split over
    ``_READERS`` threads (numpy's copy releases the GIL) the faults overlap. The first
    ``_PROBE`` rows are read by this thread and timed: when they came from the page cache
    (under ``_CACHED_S`` a row) the rest is too, and handing work to the threads would
    cost more than a single query's whole gather from memory.
    """
    global _reader_pool
    if not isinstance(table, np.memmap) or len(rows) < 2 * _PROBE:
        return np.asarray(table[rows])
    t0 = time.perf_counter()
    head = np.asarray(table[rows[:_PROBE]])
    if time.perf_counter() - t0 < _PROBE * _CACHED_S:
        return np.asarray(table[rows])
    out = np.empty((len(rows), *table.shape[1:]), dtype=table.dtype)
    out[:_PROBE] = head
    with _reader_lock:
        if _reader_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _reader_pool = ThreadPoolExecutor(_READERS, thread_name_prefix="vistrieve-read")
        pool = _reader_pool
    bounds = np.linspace(_PROBE, len(rows), _READERS + 1).astype(np.int64).tolist()

    def read(i: int) -> None:
        a, b = bounds[i], bounds[i + 1]
        out[a:b] = table[rows[a:b]]

    for _ in pool.map(read, range(_READERS)):  # re-raises a reader's error here
        pass
    return out


_CHUNK = 64  # rows per chunk of a score block that push_scores keeps or drops whole


def push_scores(
    heaps: Any, worst: np.ndarray, scores: torch.Tensor, ds: int, qs: int, full: bool
) -> None:
    """Offer a block of scores to FAISS min-heaps of the best candidates per query.

    Args:
        heaps: A ``faiss.float_minheap_array_t`` over ``worst`` (its value array).
        worst: The heaps' (nq, c) float32 values; column 0 is each heap's worst kept score.
        scores: (queries, rows) float32 scores of queries ``qs:`` against rows ``ds:``.
        ds: The position of the block's first row (the ids pushed are positions).
        qs: The heap of the block's first query.
        full: Whether every heap already holds ``c`` real candidates. Then a chunk of 64
            rows whose best score does not beat a heap's worst cannot enter it: only the
            other chunks go to the single-threaded heaps, after a max over each chunk on
            all of torch's threads. After ``b`` blocks about ``c / b`` scores per query
            pass, so most chunks are dropped. Without ``full`` every score is offered.
    """
    import faiss

    nqb, nrows = scores.shape
    head = nrows - nrows % _CHUNK if full else 0
    if head:
        _push_chunks(heaps, worst, scores[:, :head], ds, qs)
    if head < nrows:  # all of it, or the rows after the last whole chunk (in row order)
        arr = np.ascontiguousarray(scores[:, head:].numpy(), dtype=np.float32)
        heaps.addn(nrows - head, faiss.swig_ptr(arr), ds + head, qs, nqb)


def _push_chunks(heaps: Any, worst: np.ndarray, scores: torch.Tensor, ds: int, qs: int) -> None:
    """:func:`push_scores` of whole chunks: those whose best score beats the heap's worst."""
    import faiss

    nqb, nrows = scores.shape
    thr = torch.from_numpy(worst[qs : qs + nqb, 0])
    chunks = scores.view(nqb, nrows // _CHUNK, _CHUNK)
    qi, ci = (chunks.amax(2) > thr[:, None]).nonzero(as_tuple=True)
    if qi.numel() == 0:
        return
    # One heap update per passing chunk; a query with several chunks appears several times,
    # so the heaps must take them one after another: FAISS on one thread for this call.
    vals = chunks[qi, ci]
    ids = ci[:, None] * _CHUNK + (torch.arange(_CHUNK) + ds)
    subset = (qi + qs).numpy()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        heaps.addn_query_subset_with_ids(
            len(subset),
            faiss.swig_ptr(subset),
            _CHUNK,
            faiss.swig_ptr(vals.numpy()),
            faiss.swig_ptr(ids.numpy()),
            _CHUNK,
        )
    finally:
        faiss.omp_set_num_threads(threads)


class SQ8Index(BaseIndex):
    """Flat inner-product index: int8 scan in RAM, exact float re-scoring of the candidates.

    Args:
        dim: Vector dimension.
        metric: ``"ip"`` only (normalise vectors for cosine similarity).
        model: Encoder name recorded in the manifest.
        candidates: Candidates per query kept by the int8 scan and re-scored in float;
            at least ``k`` are always kept. More is slower and closer to exact search.
        query_block: Queries scanned at once.
        db_block: Database rows per packed block. Small blocks keep each block's scores
            (``query_block x db_block`` floats, 8 MiB by default) in the CPU's cache
            while the heaps read them: at 500,000 x 512-d, 512 x 4096 answered about
            twice the queries per second of 1024 x 65536.
        spill_dir: Directory of the float32 spill file used while the index is built in
            memory (default: the system temporary directory); the file is deleted when the
            index is garbage-collected.

    Example:
        >>> index = SQ8Index(4)
        >>> index.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        >>> [h.id for h in index.search(np.array([[0, 1, 0.5, 0]], np.float32), 2)[0]]
        ['b', 'c']
    """

    kind: ClassVar[str] = "sq8"
    _keeps_scales: ClassVar[bool] = True  # the int8 codes' per-row scales
    metrics: ClassVar[tuple[str, ...]] = ("ip",)

    def __init__(
        self,
        dim: int,
        *,
        metric: Metric = "ip",
        model: str | None = None,
        candidates: int = 100,
        query_block: int = 512,
        db_block: int = 4096,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(dim, metric=metric, model=model)
        for name, value in (
            ("candidates", candidates),
            ("query_block", query_block),
            ("db_block", db_block),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.candidates = candidates
        self.query_block = query_block
        self.db_block = db_block
        self.spill_dir = spill_dir
        self._vectors: np.ndarray = np.empty((0, self.dim), dtype=np.float32)
        self._spill: Any = None  # the open spill file, when vectors live there
        self._scales = np.empty((0,), dtype=np.float32)
        self._packed: list[Any] = []  # per block of db_block rows: (codes (dim, rows), scales)

    def __del__(self) -> None:
        spill = getattr(self, "_spill", None)
        if spill is not None:
            self._vectors = np.empty((0, self.dim), dtype=np.float32)
            spill.close()

    @property
    def nbytes(self) -> int:
        """Bytes of RAM held for the scan: the int8 codes and the float32 scales."""
        n = len(self)
        return int(n * self.dim + self._scales[:n].nbytes)

    def _manifest_extra(self) -> dict[str, Any]:
        return {"candidates": self.candidates}

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        return cls(
            manifest["dim"],
            metric=manifest["metric"],
            model=manifest.get("model"),
            candidates=int(manifest.get("candidates", 100)),
        )

    # -- storage -----------------------------------------------------------------------
    def _resize_spill(self, rows: int) -> None:
        """Make the float32 store a writable spill file of ``rows`` rows (data kept)."""
        n = len(self)
        if self._spill is None:
            old = self._vectors[:n]
            self._spill = tempfile.TemporaryFile(dir=self.spill_dir)
            self._spill.truncate(max(1, rows) * self.dim * 4)
            mm = np.memmap(self._spill, dtype=np.float32, mode="r+", shape=(max(1, rows), self.dim))
            mm[:n] = old
        else:
            self._spill.truncate(max(1, rows) * self.dim * 4)
            mm = np.memmap(self._spill, dtype=np.float32, mode="r+", shape=(max(1, rows), self.dim))
        self._vectors = mm

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        n, m = len(self), len(vectors)
        if self._spill is None or n + m > self._vectors.shape[0]:
            cap = n + m if n == 0 else max(n + m, self._vectors.shape[0] * 3 // 2)
            self._resize_spill(cap)
            if self._keeps_scales:
                sc = np.empty((cap,), dtype=np.float32)
                sc[:n] = self._scales[:n]
                self._scales = sc
        self._vectors[n : n + m] = vectors
        if self._keeps_scales:
            self._scales[n : n + m] = quantize_rows(vectors)[1]
        del self._packed[n // self.db_block :]

    def _remove(self, positions: np.ndarray, labels: np.ndarray) -> None:
        n = len(self)
        keep = np.ones(n, dtype=bool)
        keep[positions] = False
        kept = int(keep.sum())
        if self._spill is None:
            self._resize_spill(n)
        first = int(positions.min())
        self._vectors[first:kept] = self._vectors[first:n][keep[first:]]
        if self._keeps_scales:
            self._scales[first:kept] = self._scales[first:n][keep[first:]]
        del self._packed[first // self.db_block :]

    def reconstruct(self, ids: list[str]) -> np.ndarray:
        """The stored float32 vectors of ``ids``: (len(ids), dim)."""
        return np.asarray(self._vectors[self._positions_of(ids)], dtype=np.float32)

    # -- search ------------------------------------------------------------------------
    def _codes(self, ds: int, de: int) -> np.ndarray:
        x = np.asarray(self._vectors[ds:de], dtype=np.float32)
        return np.clip(np.rint(x / self._scales[ds:de, None]), -127, 127).astype(np.int8)

    def _block(self, b: int) -> Any:
        """Block ``b``'s int8 codes, transposed to (dim, rows) for the GEMM, and its float32
        scales (made once, kept until rows change)."""
        while len(self._packed) <= b:
            ds = len(self._packed) * self.db_block
            de = min(ds + self.db_block, len(self))
            codes_t = torch.from_numpy(self._codes(ds, de)).t().contiguous()
            self._packed.append((codes_t, torch.from_numpy(self._scales[ds:de].copy())))
        return self._packed[b]

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        n, nq = len(self), queries.shape[0]
        c = min(n, max(k, self.candidates))
        db = self.db_block
        qb = min(self.query_block, nq)
        q_all = self._prepare(torch.from_numpy(queries))
        # The best c int8 scores per query are kept in FAISS's C++ heaps (the ones its
        # brute-force search uses): one pass over each score block, where torch.topk plus a
        # merge per block cost as much as the int8 GEMM itself.
        cand_s = np.empty((nq, c), dtype=np.float32)
        cand_p = np.empty((nq, c), dtype=np.int64)
        heaps: Any = faiss.float_minheap_array_t()  # the stubs miss addn's i0 and ni
        heaps.nh, heaps.k = nq, c
        heaps.val, heaps.ids = faiss.swig_ptr(cand_s), faiss.swig_ptr(cand_p)
        heaps.heapify()
        with torch.inference_mode():
            for blk, ds in enumerate(range(0, n, db)):
                de = min(ds + db, n)
                scan = self._scanner(blk, ds, de)
                # Once every heap holds c real candidates, most of each block's chunks
                # cannot enter it, and push_scores drops them before the heaps see them.
                full = ds >= c
                for qs in range(0, nq, qb):
                    push_scores(heaps, cand_s, scan(q_all[qs : qs + qb]), ds, qs, full)
        return self._rescore(queries, cand_p, k)

    def _prepare(self, queries: torch.Tensor) -> torch.Tensor:
        """The float32 queries in the form the scan multiplies (once per search)."""
        if not _int_mm_works():
            return queries
        # Each query is quantised to int8 with its own scale; that scale is the same for
        # every row, so it is left out: the ranking of one query's scores is unchanged.
        step = queries.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        return torch.round(queries / step).to(torch.int8)

    def _scanner(self, blk: int, ds: int, de: int) -> Any:
        """A function from a block of prepared queries (:meth:`_prepare`) to their
        approximate scores against rows ``ds:de`` (block ``blk``), as a float32 tensor."""
        codes_t, scales = self._block(blk)
        if not _int_mm_works():
            block_t = codes_t.float() * scales
            return lambda q: q @ block_t
        return lambda q8: torch.mul(torch._int_mm(q8, codes_t), scales)

    def _rescore(
        self, queries: np.ndarray, cand: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact float scores of the candidate positions, best ``k`` first (ties: lower
        position)."""
        scores = score_rows(self._vectors, cand, queries)
        top = np.lexsort((cand, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, top, 1), np.take_along_axis(cand, top, 1)

    # -- persistence -------------------------------------------------------------------
    def _save_payload(self, directory: Path) -> list[Path]:
        n = len(self)
        f = directory / "vectors.npy"

        def _write(p: Path) -> None:
            header = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, self.dim))
            for s in range(0, n, self.db_block):
                header[s : s + self.db_block] = self._vectors[s : min(s + self.db_block, n)]
            header.flush()
            del header

        atomic_write(f, _write)
        return [f]

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        f = directory / "vectors.npy"
        if not f.is_file():
            raise FileNotFoundError(f"missing array file {f}")
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"cannot read array file {f}: it is truncated or corrupt ({exc})"
            ) from exc
        count, dim = manifest["count"], manifest["dim"]
        if arr.shape != (count, dim) or arr.dtype != np.float32:
            raise ValueError(
                f"{f} holds {arr.shape} {arr.dtype}; the manifest says ({count}, {dim}) "
                "float32; rebuild the index"
            )
        self._vectors = arr
        self._spill = None
        self._scales = np.empty((count if self._keeps_scales else 0,), dtype=np.float32)
        for s in range(0, len(self._scales), self.db_block):
            _, self._scales[s : s + self.db_block] = quantize_rows(
                np.asarray(arr[s : s + self.db_block], dtype=np.float32)
            )
        self._packed = []


class BF16Index(SQ8Index):
    """Flat inner-product index: a bfloat16 scan in RAM, exact float re-scoring of the
    candidates (as :class:`SQ8Index`, with bfloat16 instead of int8 codes).

    bfloat16 keeps float32's range with an 8-bit mantissa, so the scan's scores are
    within about 0.4% of the exact ones, and the float re-scoring of ``candidates`` rows per
    query restores the exact ranking. RAM: ``2 x dim`` bytes per vector, half of float32.

    Speed depends on the CPU: torch runs bfloat16 matrix products on oneDNN, which uses
    AMX tiles (Intel Xeon Sapphire Rapids and later) or AVX512-BF16 where the CPU has them,
    several times faster than float32 there; elsewhere bfloat16 is emulated and slower than
    :class:`SQ8Index` and :class:`~vistrieve.indexes.ExactIndex`
    (``benchmarks/bench_exact_search.py`` measures all three against faiss).

    Example:
        >>> index = BF16Index(4)
        >>> index.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        >>> [h.id for h in index.search(np.array([[0, 1, 0.5, 0]], np.float32), 2)[0]]
        ['b', 'c']
    """

    kind: ClassVar[str] = "bf16"
    _keeps_scales: ClassVar[bool] = False

    @property
    def nbytes(self) -> int:
        """Bytes of RAM held for the scan: the bfloat16 rows."""
        return len(self) * self.dim * 2

    def _block(self, b: int) -> Any:
        """bfloat16 rows of block ``b`` (converted once, kept until rows change)."""
        while len(self._packed) <= b:
            ds = len(self._packed) * self.db_block
            de = min(ds + self.db_block, len(self))
            # A copy: torch warns about (and must not write to) a read-only memory map.
            rows = np.array(self._vectors[ds:de], dtype=np.float32)
            self._packed.append(torch.from_numpy(rows).bfloat16())
        return self._packed[b]

    def _prepare(self, queries: torch.Tensor) -> torch.Tensor:
        return queries.bfloat16()

    def _scanner(self, blk: int, ds: int, de: int) -> Any:
        block = self._block(blk)
        return lambda q: (q @ block.T).float()
