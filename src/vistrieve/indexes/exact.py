"""Exact inner-product search: vectors in a torch tensor, scanned block by block.

:class:`ExactIndex` keeps float32 (or float16) vectors. Batches of more than 8 float32
queries are delegated to FAISS's brute-force ``knn`` (the ``IndexFlatIP`` code path, on the
stored buffer without a copy, with longer BLAS blocks than FAISS's default); one or a few
queries, and float16 storage, are answered by a blocked ``torch.matmul`` + top-k merge.
Either way the index adds string ids, a ``k`` clamped to its size, input checks and a
deterministic order of equal scores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from vistrieve.indexes.base import _CONVERT_BYTES, _FLOAT16_MAX, BaseIndex, Metric
from vistrieve.utils.io import atomic_save_npy, load_npy

logger = logging.getLogger(__name__)


def _sorted_desc(
    scores: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by score descending, then position ascending."""
    positions, order = torch.sort(positions, dim=1)
    scores = scores.gather(1, order)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores, positions.gather(1, order)


def _block_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row of a score block, ties broken towards the lower column.

    ``torch.topk`` picks arbitrarily among equal scores, so it is asked for ``k + 1``:
    where the (k+1)-th score equals the k-th, the tie straddles the cut and that row is
    redone exactly (rare: duplicate vectors).

    Returns:
        ``(scores, columns)`` of shape (rows, min(k, cols)), ordered best first.
    """
    cols = s.shape[1]
    if cols <= k:
        vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
        return vals, idx
    vals, idx = torch.topk(s, k + 1, dim=1, largest=True, sorted=False)
    vals, idx = _sorted_desc(vals, idx)
    tied = (vals[:, k] == vals[:, k - 1]).nonzero().flatten().tolist()
    for r in tied:
        row = s[r]
        thr = vals[r, k - 1]
        above = (row > thr).nonzero().flatten()
        equal = (row == thr).nonzero().flatten()[: k - above.numel()]
        sel = torch.cat([above, equal])
        v, order = torch.sort(row[sel], descending=True, stable=True)
        vals[r, :k] = v
        idx[r, :k] = sel[order]
    return vals[:, :k], idx[:, :k]


_FEW_QUERIES = 8
"""Query blocks up to this size are scored with torch matmul, larger ones with numpy."""

_FAISS_DB_BLOCK = 2048
"""Database rows per BLAS call in FAISS's brute-force search while ExactIndex searches
(FAISS's default is 1024). The best value depends on the CPU's caches: at 500,000 x 512-d,
1,000 queries, 2 threads (``benchmarks/bench_exact_search.py``), 2048 measured 1.01-1.09x
``IndexFlatIP`` on an Intel Xeon (Sapphire Rapids), where 16384 measured 0.94x; on an AMD
EPYC (AVX2) 16384 measured 8-10% above the default. The value is never lowered below
FAISS's current setting."""

_FAISS_BLOCK_LOCK = threading.Lock()


class ExactIndex(BaseIndex):
    """Exact top-k search by blocked matrix multiply in torch.

    Search scans the database in blocks of ``db_block`` rows; each block is multiplied
    with blocks of ``query_block`` queries, ``torch.topk`` keeps the best of each score
    block, and a running merge keeps the best ``k`` per query. Memory beyond the stored
    vectors is one score block (``query_block x db_block`` float32: 256 MiB at the
    defaults) plus, for float16 storage, a float32 copy of the database block being
    scanned (float16 storage scans blocks of at most 128 MiB as float32: 65536 rows at
    ``dim=512``).

    Scores are higher-is-better: the inner product for ``metric="ip"`` (the cosine for
    L2-normalised vectors), the negative squared L2 distance for ``metric="l2"``. Equal
    scores are ordered by position: the earlier-inserted item comes first, also at the
    k-th place cut, so results are deterministic.

    Args:
        dim: Vector dimension.
        metric: ``"ip"`` or ``"l2"``.
        dtype: Storage precision. ``"float16"`` halves memory; each database block is
            converted to float32 before the multiply (half-precision matmul is slow on
            CPUs), so only storage rounding (about 1e-3 relative) changes the scores.
        model: Name of the encoder the vectors come from (recorded in the manifest).
        query_block: Queries multiplied at once.
        db_block: Database rows multiplied at once.

    Example:
        >>> index = ExactIndex(4)
        >>> index.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        >>> [h.id for h in index.search(np.array([[0, 1, 0.5, 0]], np.float32), 2)[0]]
        ['b', 'c']
    """

    kind: ClassVar[str] = "exact"

    def __init__(
        self,
        dim: int,
        *,
        metric: Metric = "ip",
        dtype: Literal["float32", "float16"] = "float32",
        model: str | None = None,
        query_block: int = 1024,
        db_block: int = 65536,
    ) -> None:
        super().__init__(dim, metric=metric, model=model)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        for name, value in (("query_block", query_block), ("db_block", db_block)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.dtype: Literal["float32", "float16"] = dtype
        self.query_block = query_block
        self.db_block = db_block
        self._torch_dtype = torch.float16 if dtype == "float16" else torch.float32
        # Storage grows geometrically so that many small adds stay linear overall;
        # rows [0, len(self)) are live.
        self._buf = torch.empty((0, self.dim), dtype=self._torch_dtype)
        self._sqbuf = torch.empty((0,), dtype=torch.float32)

    @property
    def vectors(self) -> torch.Tensor:
        """The stored vectors, (len(self), dim) in the storage dtype (a view; do not modify)."""
        return self._buf[: len(self)]

    def _manifest_extra(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        return cls(
            manifest["dim"],
            metric=manifest["metric"],
            dtype=manifest.get("dtype", "float32"),
            model=manifest.get("model"),
        )

    def _check_vectors(self, x: np.ndarray, what: str = "embeddings") -> np.ndarray:
        arr = super()._check_vectors(x, what)
        if what == "embeddings" and self.dtype == "float16" and arr.size:
            peak = float(np.abs(arr).max())
            if peak > _FLOAT16_MAX:
                raise ValueError(
                    f"{what} hold values up to {peak:g}, beyond float16's range "
                    f"({_FLOAT16_MAX:g}); normalise them or use dtype='float32'"
                )
        return arr

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        n, m = len(self), len(vectors)
        if n + m > self._buf.shape[0]:
            cap = n + m if n == 0 else max(n + m, self._buf.shape[0] * 3 // 2)
            buf = torch.empty((cap, self.dim), dtype=self._torch_dtype)
            buf[:n] = self._buf[:n]
            self._buf = buf
            if self.metric == "l2":
                sq = torch.empty((cap,), dtype=torch.float32)
                sq[:n] = self._sqbuf[:n]
                self._sqbuf = sq
        # No autograd is involved; inference_mode is kept to search, so that the stored
        # buffers stay ordinary tensors that later in-place updates may modify.
        self._buf[n : n + m] = torch.from_numpy(vectors)
        if self.metric == "l2":
            stored = self._buf[n : n + m].float()
            self._sqbuf[n : n + m] = (stored * stored).sum(1)

    def _remove(self, positions: np.ndarray, labels: np.ndarray) -> None:
        n = len(self)
        keep = torch.ones(n, dtype=torch.bool)
        keep[torch.from_numpy(positions)] = False
        kept = int(keep.sum())
        self._buf[:kept] = self._buf[:n][keep]
        if self.metric == "l2":
            self._sqbuf[:kept] = self._sqbuf[:n][keep]
        if kept < self._buf.shape[0] // 4:
            # Give memory back after large deletions.
            self._buf = self._buf[:kept].clone()
            if self.metric == "l2":
                self._sqbuf = self._sqbuf[:kept].clone()

    def reconstruct(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``.

        Returns:
            (len(ids), dim) float32 array (float16 storage is converted).

        Raises:
            KeyError: an id is not in the index.
        """
        pos = torch.from_numpy(self._positions_of(ids))
        return self._buf[pos].float().numpy()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._torch_dtype == torch.float32 and queries.shape[0] > _FEW_QUERIES:
            return self._search_faiss(queries, k)
        return self._search_torch(queries, k)

    def _search_faiss(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched float32 search delegated to FAISS's brute-force ``knn`` (the code path of
        ``IndexFlatIP`` / ``IndexFlatL2``, run on the stored buffer without a copy), then
        ordered deterministically: score descending, position ascending.

        FAISS picks arbitrarily among equal scores at the k-th place, so it is asked for
        ``k + 1`` results; rows where the last two tie (duplicate vectors) are redone by the
        torch path, which breaks ties towards the earlier item.
        """
        import faiss

        n = len(self)
        kk = min(k + 1, n)
        data = self._buf[:n].numpy()
        # The block size is a FAISS global: set it for this call only, under a lock so that
        # concurrent searches restore the caller's value.
        with _FAISS_BLOCK_LOCK:
            before = faiss.cvar.distance_compute_blas_database_bs
            faiss.cvar.distance_compute_blas_database_bs = max(before, _FAISS_DB_BLOCK)
            try:
                if self.metric == "ip":
                    scores, pos = faiss.knn(queries, data, kk, metric=faiss.METRIC_INNER_PRODUCT)
                else:
                    dist, pos = faiss.knn(queries, data, kk, metric=faiss.METRIC_L2)
                    scores = -dist
            finally:
                faiss.cvar.distance_compute_blas_database_bs = before
        scores = np.asarray(scores, dtype=np.float32)
        pos = np.asarray(pos, dtype=np.int64)
        order = np.lexsort((pos, -scores), axis=1)
        scores = np.take_along_axis(scores, order, 1)
        pos = np.take_along_axis(pos, order, 1)
        if kk > k:
            tied = np.flatnonzero(scores[:, k] == scores[:, k - 1])
            scores, pos = scores[:, :k].copy(), pos[:, :k].copy()
            if len(tied):
                ts, tp = self._search_torch(np.ascontiguousarray(queries[tied]), k)
                scores[tied], pos[tied] = ts, tp
        return scores, pos

    def _search_torch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n, nq = len(self), queries.shape[0]
        qb, db = min(self.query_block, nq), min(self.db_block, n)
        if self._torch_dtype != torch.float32:
            # The float32 copy of a block is fresh memory each search; bounding it keeps
            # small searches (one query) from paying for a huge conversion buffer.
            db = min(db, max(1, _CONVERT_BYTES // (4 * self.dim)))
        q_all = torch.from_numpy(queries)
        l2 = self.metric == "l2"
        best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * -(-nq // qb)
        with torch.inference_mode():
            # One preallocated score buffer: a fresh 256 MiB tensor per block would be
            # page-faulted in again every time.
            score_buf = torch.empty(qb * db, dtype=torch.float32)
            conv = (
                torch.empty((db, self.dim), dtype=torch.float32)
                if self._torch_dtype != torch.float32
                else None
            )
            # Database blocks outside, query blocks inside: each block is converted once
            # and positions arrive in increasing order, which the tie-breaking merge needs.
            for ds in range(0, n, db):
                de = min(ds + db, n)
                block = self._buf[ds:de]
                if conv is not None:
                    block = conv[: de - ds].copy_(block)
                block_np_t = block.numpy().T
                sq = self._sqbuf[ds:de] if l2 else None
                for b, qs in enumerate(range(0, nq, qb)):
                    q = q_all[qs : qs + qb]
                    s = score_buf[: q.shape[0] * (de - ds)].view(q.shape[0], de - ds)
                    s_np = s.numpy()
                    if q.shape[0] <= _FEW_QUERIES:
                        # A few queries (online search) are memory-bound, and OpenBLAS's
                        # threads keep spinning after a call while torch's own pool runs
                        # the next stage: a reranker after this search ran 3x slower on
                        # 2 cores. torch's pool serves both.
                        torch.mm(q, block.T, out=s)
                    else:
                        # numpy's OpenBLAS sgemm is markedly faster than torch's MKL one on
                        # AMD CPUs (about 140 vs 95 GFLOP/s on the 2-core development
                        # machine).
                        np.matmul(q.numpy(), block_np_t, out=s_np)
                    if sq is not None:
                        # 2 q.x - |x|^2 ranks like -|q - x|^2; |q|^2 is added at the end.
                        s_np *= 2.0
                        s_np -= sq.numpy()
                    bs, bp = _block_topk(s, k)
                    bp += ds
                    prev = best[b]
                    if prev is not None:
                        # Earlier blocks first: the stable sort keeps lower positions ahead.
                        cs = torch.cat([prev[0], bs], 1)
                        cp = torch.cat([prev[1], bp], 1)
                        cs, order = torch.sort(cs, dim=1, descending=True, stable=True)
                        bs, bp = cs[:, :k], cp.gather(1, order[:, :k])
                    best[b] = (bs, bp)
            out_s = np.empty((nq, k), dtype=np.float32)
            out_p = np.empty((nq, k), dtype=np.int64)
            for b, qs in enumerate(range(0, nq, qb)):
                entry = best[b]
                assert entry is not None
                bs, bp = entry
                if l2:
                    q = q_all[qs : qs + qb]
                    bs = (bs - (q * q).sum(1, keepdim=True)).clamp_(max=0.0)
                    bs, bp = _sorted_desc(bs, bp)
                out_s[qs : qs + len(bs)] = bs.numpy()
                out_p[qs : qs + len(bs)] = bp.numpy()
        return out_s, out_p

    def _stored_vectors(self) -> Any:
        return self.vectors.numpy()

    def _save_payload(self, directory: Path) -> list[Path]:
        f = directory / "vectors.npy"
        atomic_save_npy(f, self.vectors.numpy())
        return [f]

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        arr = load_npy(directory / "vectors.npy")
        if arr.shape != (manifest["count"], manifest["dim"]) or arr.dtype != np.dtype(self.dtype):
            raise ValueError(
                f"{directory}/vectors.npy holds {arr.shape} {arr.dtype}, the manifest says "
                f"({manifest['count']}, {manifest['dim']}) {self.dtype}; rebuild the index"
            )
        self._buf = torch.from_numpy(np.ascontiguousarray(arr))
        if self.metric == "l2":
            stored = self._buf.float()
            self._sqbuf = (stored * stored).sum(1)
