"""Hamming-space index over binary hash codes, with optional float re-scoring.

:class:`BinaryHashIndex` stores ``bits``-bit codes packed into ``bits / 8`` bytes in a FAISS
binary index: ``IndexBinaryFlat`` (exact Hamming scan), ``IndexBinaryHNSW`` (graph) or
``IndexBinaryIVF`` (inverted lists over a binary k-means quantizer). Flat and HNSW are
wrapped in ``IndexBinaryIDMap2`` so that they store the int64 labels of
:class:`~vistrieve.indexes.BaseIndex`; IVF takes labels natively. String ids,
validation, removal, manifests and atomic save/load come from ``BaseIndex`` (kind
``"binary"``), so the index behaves like the float indexes: ``add``, ``remove``,
``search``, ``save`` and :func:`~vistrieve.indexes.load_index`, which refuses an
index saved with another bit count.

Re-scoring follows sentence-transformers ``quantization.py:semantic_search_faiss``: the
Hamming search fetches ``k * rescore_multiplier`` candidates, which are re-ranked by the
inner product of a float query with either float vectors stored next to the codes (e.g.
the CLIP embeddings, or the relaxed codes) or, when none are stored, the candidates' ±1
codes (asymmetric distance). Codes are also kept in a packed array in position order
(``bits / 8`` bytes per item), which serves asymmetric re-scoring and :meth:`compact`.

Input codes may be packed ``uint8 (n, bits/8)`` (``np.packbits``) or unpacked ``(n, bits)``
in any numeric form: the bit is 1 where the value is ``> 0``, so sign codes (±1), 0/1 bits,
booleans and relaxed ``tanh`` outputs all work.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from vistrieve.indexes.base import BaseIndex, IndexMismatchError, read_index_manifest
from vistrieve.types import Hit
from vistrieve.utils.io import atomic_save_npy, load_npy

logger = logging.getLogger(__name__)

BinaryIndexType = Literal["flat", "hnsw", "ivf"]
_BinT = TypeVar("_BinT", bound="BinaryHashIndex")


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if bits % 8:
        raise ValueError(
            f"bits must be divisible by 8 (FAISS binary indexes store whole bytes), got {bits}; "
            "use 16, 32, 64 or 128"
        )
    return int(bits)


class BinaryHashIndex(BaseIndex):
    """FAISS binary index over string ids, Hamming ranking, optional float re-scoring.

    Scores are higher-is-better: ``-hamming`` for plain searches, the float inner product
    for re-scored ones. Equal distances are ordered by position (earlier-added first) among
    the candidates FAISS returns; which of several items tied at the ``k``-th distance make
    the cut is up to FAISS.

    Deletion: flat and IVF indexes remove codes with FAISS ``remove_ids``; HNSW graphs
    cannot, so removed items become tombstones filtered out of results (searches fetch
    ``k + tombstones`` candidates) until :meth:`compact` rebuilds the graph.

    Args:
        bits: Code length, a multiple of 8 (16, 32, 64, 128).
        index_type: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
        model: Name of the hash model (and encoder) whose codes the index holds.
        hnsw_m: HNSW neighbours per node.
        nlist: IVF cells; ``None`` picks ``min(4 * sqrt(n), n / 39)`` (at least 1) from the
            first ``add``, which trains the quantizer.
        nprobe: IVF cells visited per query (FAISS default 1).
        ef_search: HNSW search breadth (FAISS default 16).
        train_size: Most codes used to train an IVF quantizer (default ``256 * nlist``).
        rescore_multiplier: Default candidates per result fetched for re-scoring.
        rescore_dtype: Storage precision of re-scoring vectors.

    Example:
        >>> index = BinaryHashIndex(16)
        >>> codes = np.where(np.random.default_rng(0).standard_normal((4, 16)) > 0, 1, -1)
        >>> index.add(codes, ["a", "b", "c", "d"])
        >>> index.search(codes[:1], 1)[0][0].id
        'a'
    """

    kind: ClassVar[str] = "binary"
    metrics: ClassVar[tuple[str, ...]] = ("hamming",)

    def __init__(
        self,
        bits: int,
        *,
        index_type: BinaryIndexType = "flat",
        model: str | None = None,
        hnsw_m: int = 32,
        nlist: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        train_size: int | None = None,
        rescore_multiplier: int = 4,
        rescore_dtype: Literal["float32", "float16"] = "float32",
    ) -> None:
        super().__init__(_check_bits(bits), metric="hamming", model=model)
        if index_type not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"index_type must be 'flat', 'hnsw' or 'ivf', got {index_type!r}")
        for name, value in (
            ("hnsw_m", hnsw_m),
            ("nlist", nlist),
            ("train_size", train_size),
            ("rescore_multiplier", rescore_multiplier),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if rescore_dtype not in ("float32", "float16"):
            raise ValueError(f"rescore_dtype must be 'float32' or 'float16', got {rescore_dtype!r}")
        self.index_type: BinaryIndexType = index_type
        self.hnsw_m = int(hnsw_m)
        self.nlist = int(nlist) if nlist is not None else None
        self.train_size = train_size
        self.rescore_multiplier = int(rescore_multiplier)
        self.rescore_dtype: Literal["float32", "float16"] = rescore_dtype
        self.nprobe: int | None = None
        self.ef_search: int | None = None
        self._index: Any = None if (index_type == "ivf" and nlist is None) else self._build()
        self._codes = np.empty((0, self.dim // 8), dtype=np.uint8)
        self._rescore: np.ndarray | None = None
        self._pending_rescore: np.ndarray | None = None
        self._tombstones: set[int] = set()
        self._can_remove = index_type != "hnsw"
        self.set_search_params(nprobe=nprobe, ef_search=ef_search)

    # -- construction --------------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Code length in bits (the index ``dim``)."""
        return self.dim

    @property
    def code_bytes(self) -> int:
        """Bytes per packed code."""
        return self.dim // 8

    @property
    def rescore_dim(self) -> int | None:
        """Dimension of the stored re-scoring vectors (None when none are stored)."""
        return None if self._rescore is None else int(self._rescore.shape[1])

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS binary index (None for an IVF index before its first add)."""
        return self._index

    @property
    def n_tombstones(self) -> int:
        """Removed items still in an HNSW graph (see :meth:`compact`)."""
        return len(self._tombstones)

    def _build(self) -> Any:
        import faiss

        if self.index_type == "flat":
            return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim))
        if self.index_type == "hnsw":
            return faiss.IndexBinaryIDMap2(faiss.IndexBinaryHNSW(self.dim, self.hnsw_m))
        assert self.nlist is not None
        quantizer = faiss.IndexBinaryFlat(self.dim)
        return faiss.IndexBinaryIVF(quantizer, self.dim, self.nlist)

    def _inner(self) -> Any:
        import faiss

        idx = faiss.downcast_IndexBinary(self._index)
        if isinstance(idx, faiss.IndexBinaryIDMap2):
            idx = faiss.downcast_IndexBinary(idx.index)
        return idx

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set search-time parameters (``None`` leaves one unchanged).

        Raises:
            ValueError: a parameter this index type does not have, or a non-positive value.
        """
        for name, value, kind in (("nprobe", nprobe, "ivf"), ("ef_search", ef_search, "hnsw")):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            if self.index_type != kind:
                raise ValueError(f"{name} applies to {kind} indexes, this one is {self.index_type}")
            setattr(self, name, int(value))
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._index is None:
            return
        inner = self._inner()
        if self.index_type == "ivf" and self.nprobe is not None:
            inner.nprobe = self.nprobe
        if self.index_type == "hnsw" and self.ef_search is not None:
            inner.hnsw.efSearch = self.ef_search

    # -- validation ----------------------------------------------------------------------
    def _check_vectors(self, x: np.ndarray, what: str = "embeddings") -> np.ndarray:
        """Codes as packed C-contiguous ``uint8 (n, bits/8)``."""
        arr = np.asarray(x)
        what = "codes" if what == "embeddings" else what
        if arr.ndim != 2:
            raise ValueError(f"{what} must be 2-D (n, {self.dim}) or packed (n, {self.code_bytes})")
        width = arr.shape[1]
        if arr.dtype == np.uint8 and width == self.code_bytes:
            return np.ascontiguousarray(arr)
        if width != self.dim:
            seen = f"{width * 8}-bit packed" if arr.dtype == np.uint8 else f"{width}-bit"
            raise ValueError(
                f"{what} look like {seen} codes but the index holds {self.dim}-bit codes: pass "
                f"(n, {self.dim}) sign/0-1/relaxed codes or (n, {self.code_bytes}) packed uint8 "
                "from a hash model with the same bit count"
            )
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what} must be numeric or bool, got dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise ValueError(f"{what} contain NaN or infinite values (first in row {bad})")
        return np.packbits(arr > 0, axis=1)

    def _check_rescore(self, x: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
        if x is None:
            return None
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[0] != n or arr.dtype.kind not in "fiu":
            raise ValueError(
                f"{what} must be a float array with one row per code ({n}), got {arr.dtype} "
                f"{arr.shape}"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return arr

    # -- add / remove --------------------------------------------------------------------
    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        *,
        rescore_vectors: np.ndarray | None = None,
    ) -> None:
        """Add codes under new, unique string ids.

        Args:
            embeddings: The codes: ``(n, bits)`` sign / 0-1 / relaxed values (bit = value > 0)
                or packed ``uint8 (n, bits / 8)``.
            ids: n non-empty strings, none already in the index.
            rescore_vectors: Float vectors ``(n, d)`` kept for re-scoring (CLIP embeddings,
                relaxed codes ...). Either every add of an index gives them (same ``d``) or
                none does.

        Raises:
            ValueError: codes of another bit count, id problems, or re-scoring vectors that
                do not match the index's.
        """
        shape = np.shape(embeddings)
        if len(shape) != 2 or shape[1] not in (self.dim, self.code_bytes):
            self._check_vectors(np.asarray(embeddings))
        vecs = self._check_rescore(rescore_vectors, len(embeddings), "rescore_vectors")
        if len(self) and (vecs is None) != (self._rescore is None):
            raise ValueError(
                "re-scoring vectors must be given for every add or for none: this index "
                + ("stores" if self._rescore is not None else "does not store")
                + " them"
            )
        if (
            vecs is not None
            and self._rescore is not None
            and vecs.shape[1] != self._rescore.shape[1]
        ):
            raise ValueError(
                f"rescore_vectors have dim {vecs.shape[1]}, the index stores dim "
                f"{self._rescore.shape[1]}"
            )
        self._pending_rescore = vecs
        try:
            super().add(embeddings, ids)
        finally:
            self._pending_rescore = None

    def _auto_nlist(self, n: int) -> int:
        return max(1, min(int(4 * math.sqrt(n)), n // 39))

    def _train(self, codes: np.ndarray) -> None:
        if self._index is None:
            self.nlist = self._auto_nlist(len(codes))
            self._index = self._build()
            self._apply_search_params()
        assert self.nlist is not None
        n = len(codes)
        if n < self.nlist:
            raise ValueError(
                f"the binary IVF index must be trained by the first add, which needs at least "
                f"nlist={self.nlist} codes but got {n}; add more codes at once or use fewer cells"
            )
        limit = self.train_size or 256 * self.nlist
        sample = codes
        if n > limit:
            rng = np.random.default_rng(0)
            sample = codes[np.sort(rng.choice(n, limit, replace=False))]
        logger.info("training binary IVF (nlist=%d) on %d codes", self.nlist, len(sample))
        self._index.train(sample)

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if self._index is None or not self._index.is_trained:
            self._train(vectors)
        self._index.add_with_ids(vectors, labels)
        self._codes = np.concatenate([self._codes, vectors])
        pending = self._pending_rescore
        if pending is not None:
            stored = pending.astype(self.rescore_dtype)
            self._rescore = (
                stored if self._rescore is None else np.concatenate([self._rescore, stored])
            )

    def _remove(self, positions: np.ndarray, labels: np.ndarray) -> None:
        import faiss

        if self._can_remove:
            removed = self._index.remove_ids(faiss.IDSelectorBatch(labels))
            if removed != len(labels):
                raise RuntimeError(f"FAISS removed {removed} of {len(labels)} binary codes")
        else:
            self._tombstones.update(labels.tolist())
            live = len(self) - len(labels)
            if len(self._tombstones) > live:
                logger.warning(
                    "binary HNSW index holds %d tombstones for %d live items, which slows "
                    "search; call compact()",
                    len(self._tombstones),
                    live,
                )
        keep = np.ones(len(self._codes), dtype=bool)
        keep[positions] = False
        self._codes = self._codes[keep]
        if self._rescore is not None:
            self._rescore = self._rescore[keep]

    def compact(self) -> None:
        """Rebuild an HNSW graph without its tombstones (labels and positions stay)."""
        if not self._tombstones:
            return
        fresh = self._build()
        if len(self._codes):
            fresh.add_with_ids(self._codes, self._labels)
        self._index = fresh
        self._tombstones = set()
        self._apply_search_params()
        logger.info("compacted binary HNSW index to %d codes", len(self))

    def codes(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """Packed codes ``uint8 (n, bits/8)`` of ``ids`` (all items, in position order, if None)."""
        if ids is None:
            return self._codes.copy()
        return self._codes[self._positions_of(ids)]

    # -- search --------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, pos = self._hamming_search(queries, k)
        return np.where(pos >= 0, 0.0 - dist.astype(np.float32), -np.inf).astype(np.float32), pos

    def _hamming_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32, positions int64), both (nq, k), best first; -1 / big when absent."""
        fetch = min(k + len(self._tombstones), int(self._index.ntotal))
        dist, labels = self._index.search(queries, fetch)
        pos = self._positions_of_labels(labels)
        missing = pos < 0
        big = np.iinfo(np.int64).max
        d64 = np.where(missing, big, dist.astype(np.int64))
        # Deterministic order: distance, then position; absent entries (tombstones, padding)
        # sort last and are cut.
        order = np.lexsort((np.where(missing, big, pos), d64), axis=1)[:, :k]
        pos = np.take_along_axis(pos, order, 1)
        d64 = np.take_along_axis(d64, order, 1)
        if pos.shape[1] < k:
            pad = k - pos.shape[1]
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
            d64 = np.pad(d64, ((0, 0), (0, pad)), constant_values=big)
        pos[d64 == big] = -1
        return np.where(pos < 0, self.dim + 1, d64).astype(np.int32), pos

    def _search_full(
        self,
        queries: np.ndarray,
        k: int,
        rescore_queries: np.ndarray | None,
        rescore_multiplier: int | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores float32, positions int64, hamming int32), each (nq, min(k, len(self)))."""
        k = min(self._check_k(k), len(self))  # clamped before any allocation
        q = self._check_vectors(queries, "queries")
        nq = q.shape[0]
        rq = self._check_rescore(rescore_queries, nq, "rescore_queries")
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        pos = np.full((nq, k), -1, dtype=np.int64)
        ham = np.full((nq, k), self.dim + 1, dtype=np.int32)
        if not len(self) or not nq:
            return scores, pos, ham
        if rq is None:
            kk = min(k, len(self))
            d, p = self._hamming_search(q, kk)
            scores[:, :kk] = np.where(p >= 0, 0.0 - d.astype(np.float32), -np.inf)
            pos[:, :kk], ham[:, :kk] = p, d
            return scores, pos, ham
        mult = self.rescore_multiplier if rescore_multiplier is None else rescore_multiplier
        if isinstance(mult, bool) or not isinstance(mult, (int, np.integer)) or mult <= 0:
            raise ValueError(f"rescore_multiplier must be a positive int, got {mult!r}")
        width = self.dim if self._rescore is None else self._rescore.shape[1]
        if rq.shape[1] != width:
            source = "stored float vectors" if self._rescore is not None else "the ±1 codes"
            raise ValueError(
                f"rescore_queries have dim {rq.shape[1]} but re-scoring uses {source} of dim "
                f"{width}"
            )
        fetch = min(k * int(mult), len(self))
        d, p = self._hamming_search(q, fetch)
        valid = p >= 0
        safe = np.where(valid, p, 0)
        if self._rescore is not None:
            cand = self._rescore[safe].astype(np.float32)
        else:
            bits = np.unpackbits(self._codes[safe], axis=-1)
            cand = bits.astype(np.float32) * 2.0 - 1.0
        s = np.einsum("qd,qcd->qc", rq, cand, optimize=True).astype(np.float32)
        s[~valid] = -np.inf
        # Stable sort keeps the Hamming order among equal float scores.
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        kk = order.shape[1]
        scores[:, :kk] = np.take_along_axis(s, order, 1)
        pos[:, :kk] = np.take_along_axis(p, order, 1)
        ham[:, :kk] = np.take_along_axis(d, order, 1)
        pos[~np.isfinite(scores)] = -1
        return scores, pos, ham

    def search_arrays(
        self,
        queries: np.ndarray,
        k: int,
        *,
        rescore_queries: np.ndarray | None = None,
        rescore_multiplier: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` search returning arrays, best first.

        Args:
            queries: Query codes, unpacked ``(nq, bits)`` or packed ``(nq, bits/8)``.
            k: Results per query.
            rescore_queries: Float queries ``(nq, d)`` for re-scoring; ``d`` is the stored
                vectors' dimension, or ``bits`` (asymmetric, against the ±1 codes) when the
                index stores none. Without them the ranking is by Hamming distance.
            rescore_multiplier: Candidates fetched per result for re-scoring (default
                :attr:`rescore_multiplier`).

        Returns:
            ``(scores, positions)`` float32 / int64 ``(nq, min(k, len(self)))`` (``k`` is
            clamped to the index size before anything is allocated); scores are
            ``-hamming`` or the re-scored inner products; padding is ``-inf`` / ``-1``.
        """
        s, p, _ = self._search_full(queries, k, rescore_queries, rescore_multiplier)
        return s, p

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        rescore_queries: np.ndarray | None = None,
        rescore_multiplier: int | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query; each hit's metadata holds its ``hamming`` distance.

        Arguments as in :meth:`search_arrays`.
        """
        s, p, h = self._search_full(queries, k, rescore_queries, rescore_multiplier)
        ids = self._ids
        return [
            [
                Hit(ids[j], sc, metadata={"hamming": d})
                for sc, j, d in zip(srow, prow, hrow, strict=True)
                if j >= 0
            ]
            for srow, prow, hrow in zip(s.tolist(), p.tolist(), h.tolist(), strict=True)
        ]

    # -- persistence -----------------------------------------------------------------------
    def _manifest_extra(self) -> dict[str, Any]:
        return {
            "bits": self.dim,
            "index_type": self.index_type,
            "hnsw_m": self.hnsw_m,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "train_size": self.train_size,
            "tombstones": len(self._tombstones),
            "rescore_dim": self.rescore_dim,
            "rescore_dtype": self.rescore_dtype,
            "rescore_multiplier": self.rescore_multiplier,
        }

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        return cls(
            manifest["dim"],
            index_type=manifest.get("index_type", "flat"),
            model=manifest.get("model"),
            hnsw_m=manifest.get("hnsw_m", 32),
            nlist=manifest.get("nlist"),
            train_size=manifest.get("train_size"),
            rescore_multiplier=manifest.get("rescore_multiplier", 4),
            rescore_dtype=manifest.get("rescore_dtype", "float32"),
        )

    def _stored_vectors(self) -> Any:
        return self._rescore

    def _save_payload(self, directory: Path) -> list[Path]:
        import faiss

        files = [directory / "codes.npy", directory / "tombstones.npy"]
        atomic_save_npy(files[0], self._codes)
        atomic_save_npy(files[1], np.asarray(sorted(self._tombstones), dtype=np.int64))
        if self._index is not None:
            f = directory / "index.faissbin"
            faiss.write_index_binary(self._index, str(f))
            files.append(f)
        if self._rescore is not None:
            f = directory / "rescore.npy"
            atomic_save_npy(f, self._rescore)
            files.append(f)
        return files

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        import faiss

        count = manifest["count"]
        codes = load_npy(directory / "codes.npy")
        if codes.shape != (count, self.code_bytes) or codes.dtype != np.uint8:
            raise ValueError(
                f"{directory}/codes.npy holds {codes.dtype} {codes.shape}, the manifest says "
                f"uint8 ({count}, {self.code_bytes}); rebuild the index"
            )
        self._codes = codes
        tombstones = load_npy(directory / "tombstones.npy")
        self._tombstones = set(tombstones.astype(np.int64).tolist())
        f = directory / "index.faissbin"
        if f.is_file():
            try:
                index = faiss.read_index_binary(str(f))
            except RuntimeError as exc:
                raise ValueError(
                    f"cannot read {f}: it is truncated or corrupt; rebuild the index"
                ) from exc
            if index.d != self.dim or index.ntotal != count + len(self._tombstones):
                raise ValueError(
                    f"{f} holds {index.ntotal} codes of {index.d} bits; the manifest says "
                    f"{count + len(self._tombstones)} of {self.dim} bits; rebuild the index"
                )
            self._index = index
        elif count:
            raise FileNotFoundError(f"{directory}: index.faissbin is missing; rebuild the index")
        rescore_dim = manifest.get("rescore_dim")
        if rescore_dim is not None:
            arr = load_npy(directory / "rescore.npy")
            if arr.shape != (count, rescore_dim):
                raise ValueError(
                    f"{directory}/rescore.npy holds {arr.shape}, the manifest says "
                    f"({count}, {rescore_dim}); rebuild the index"
                )
            self._rescore = arr
        self.set_search_params(nprobe=manifest.get("nprobe"), ef_search=manifest.get("ef_search"))

    @classmethod
    def load(
        cls: type[_BinT],
        path: str | os.PathLike[str],
        *,
        expected_model: str | None = None,
        expected_dim: int | None = None,
        expected_bits: int | None = None,
    ) -> _BinT:
        """Load a binary index saved by :meth:`save`, checking its bit count first.

        Args:
            path: The index directory.
            expected_model: Name of the model that will query it (see ``load_index``).
            expected_dim: Same as ``expected_bits`` (the index dimension is its bit count).
            expected_bits: Bit count of the queries' codes.

        Raises:
            IndexMismatchError: the index holds codes of another bit count or model.
        """
        bits = expected_bits if expected_bits is not None else expected_dim
        if bits is not None:
            manifest = read_index_manifest(path)
            if manifest["dim"] != bits:
                raise IndexMismatchError(
                    f"index at {path} holds {manifest['dim']}-bit codes but {bits}-bit codes "
                    f"were expected; rebuild it with the {bits}-bit hash model, or query it with "
                    f"a {manifest['dim']}-bit one"
                )
        return super().load(path, expected_model=expected_model, expected_dim=bits)


__all__ = ["BinaryHashIndex", "BinaryIndexType"]
