"""Approximate search through any FAISS index-factory string (IVF, HNSW, PQ ...).

FAISS is imported lazily, as sentence-transformers' ``quantization.py`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vistrieve.indexes.base import BaseIndex, Metric
from vistrieve.utils.io import atomic_save_npy, load_npy

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)


def _faiss_parts(index: faiss.Index) -> Iterator[Any]:
    """The index and the indexes nested in it (ID maps, pre-transforms, refine, storage)."""
    import faiss

    stack = [index]
    while stack:
        idx = faiss.downcast_index(stack.pop())
        yield idx
        for attr in ("index", "base_index", "storage"):
            inner = getattr(idx, attr, None)
            if isinstance(inner, faiss.Index):
                stack.append(inner)


def _training_needs(index: faiss.Index) -> tuple[int, str]:
    """Fewest training vectors FAISS accepts for ``index`` and why (IVF cells, PQ centroids)."""
    import faiss

    need, why = 1, "at least one vector"
    for part in _faiss_parts(index):
        if isinstance(part, faiss.IndexIVF) and part.nlist > need:
            need, why = int(part.nlist), f"one per IVF cell (nlist={part.nlist})"
        pq = getattr(part, "pq", None)
        if pq is not None and int(pq.ksub) > need:
            need, why = int(pq.ksub), f"one per PQ centroid ({pq.ksub} = 2^{pq.nbits})"
    return need, why


def _native_ids(index: faiss.Index) -> bool:
    """Whether ``index`` implements ``add_with_ids`` itself (IVF, ID maps)."""
    import faiss

    idx = faiss.downcast_index(index)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return isinstance(idx, (faiss.IndexIVF, faiss.IndexIDMap))


class FaissIndex(BaseIndex):
    """Approximate (or exact, ``"Flat"``) search with any FAISS index-factory string.

    Training: an index that needs it (IVF, PQ, SQ) is trained by the first :meth:`add`, on
    a seeded sample of at most ``train_size`` of its vectors; that add must then hold at
    least as many vectors as FAISS needs (the IVF ``nlist``, 256 for 8-bit PQ), else a
    ``ValueError`` says how many. For good IVF cells give it about 39 x ``nlist`` or more.

    Ids: the index stores the int64 labels of :class:`BaseIndex`; index types without
    ``add_with_ids`` (Flat, PQ, HNSW ...) are wrapped in ``faiss.IndexIDMap2``.

    Deletion: :meth:`remove` uses FAISS ``remove_ids`` where the index supports it (Flat,
    IVF, PQ). HNSW graphs do not: there removed items become *tombstones* that stay in the
    graph; search fetches ``k + number of tombstones`` results (capped at the index size)
    and filters them out, so searches slow down as tombstones pile up. :meth:`compact`
    rebuilds the index without them.

    Scores are higher-is-better: the inner product for ``metric="ip"``, the negative squared
    L2 distance for ``metric="l2"``; equal scores are ordered by position.

    Args:
        dim: Vector dimension.
        factory: FAISS factory string: ``"Flat"``, ``"HNSW32"``, ``"IVF256,Flat"``,
            ``"IVF1024,PQ16"``, ``"IVF256,PQ8x8"``, ``"OPQ16,IVF256,PQ16"`` ...
        metric: ``"ip"`` or ``"l2"``.
        model: Encoder name recorded in the manifest.
        train_size: Most vectors used for training; default ``max(65536, 256 * nlist)``
            (FAISS k-means subsamples to 256 points per centroid anyway).
        nprobe: IVF cells visited per query (IVF indexes only; FAISS default 1).
        ef_search: HNSW search breadth (HNSW indexes only; FAISS default 16).

    Example:
        >>> index = FaissIndex(32, "HNSW16", ef_search=64)
        >>> x = np.random.default_rng(0).standard_normal((100, 32)).astype(np.float32)
        >>> index.add(x, [f"v{i}" for i in range(100)])
        >>> index.search(x[:1], 1)[0][0].id
        'v0'
    """

    kind: ClassVar[str] = "faiss"

    def __init__(
        self,
        dim: int,
        factory: str = "HNSW32",
        *,
        metric: Metric = "ip",
        model: str | None = None,
        train_size: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        super().__init__(dim, metric=metric, model=model)
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"factory must be a FAISS factory string, got {factory!r}")
        if train_size is not None and (isinstance(train_size, bool) or train_size <= 0):
            raise ValueError(f"train_size must be a positive int or None, got {train_size!r}")
        self.factory = factory
        self.train_size = train_size
        self._index = self._build()
        self._tombstones: set[int] = set()
        self._can_remove: bool | None = None
        self.nprobe: int | None = None
        self.ef_search: int | None = None
        self.set_search_params(nprobe=nprobe, ef_search=ef_search)

    def _build(self) -> Any:
        import faiss

        faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        try:
            base = faiss.index_factory(self.dim, self.factory, faiss_metric)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1][:200]
            raise ValueError(
                f"invalid FAISS factory string {self.factory!r} for dim {self.dim} and metric "
                f"{self.metric!r} ({first}); see the FAISS wiki 'The index factory'"
            ) from exc
        return base if _native_ids(base) else faiss.IndexIDMap2(base)

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (labels are :meth:`labels_of` the ids)."""
        return self._index

    @property
    def needs_training(self) -> bool:
        """Whether the index still has to be trained (the first :meth:`add` does it)."""
        return not self._index.is_trained

    @property
    def n_tombstones(self) -> int:
        """Removed items still held by an index without ``remove_ids`` (see :meth:`compact`)."""
        return len(self._tombstones)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set search-time parameters (``None`` leaves one unchanged).

        Args:
            nprobe: IVF cells visited per query; more is slower and more accurate.
            ef_search: HNSW candidate-list size; more is slower and more accurate.

        Raises:
            ValueError: a parameter that this factory's index does not have.
        """
        import faiss

        space = faiss.ParameterSpace()
        for name, faiss_name, value in (
            ("nprobe", "nprobe", nprobe),
            ("ef_search", "efSearch", ef_search),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            try:
                space.set_index_parameter(self._index, faiss_name, int(value))
            except RuntimeError as exc:
                kind = "IVF" if name == "nprobe" else "HNSW"
                raise ValueError(
                    f"{name} applies to {kind} indexes only; factory {self.factory!r} has no "
                    f"{kind} stage"
                ) from exc
            setattr(self, name, int(value))

    def _manifest_extra(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "train_size": self.train_size,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "tombstones": len(self._tombstones),
        }

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        return cls(
            manifest["dim"],
            manifest["factory"],
            metric=manifest["metric"],
            model=manifest.get("model"),
            train_size=manifest.get("train_size"),
        )

    def _train(self, vectors: np.ndarray) -> None:
        need, why = _training_needs(self._index)
        n = len(vectors)
        if n < need:
            raise ValueError(
                f"FAISS index {self.factory!r} must be trained by the first add, which needs "
                f"at least {need} vectors ({why}) but got {n}; add more vectors at once or "
                "use a smaller factory (fewer IVF cells, fewer PQ bits)"
            )
        limit = self.train_size or max(65536, 256 * need)
        sample = vectors
        if n > limit:
            rng = np.random.default_rng(0)
            sample = vectors[np.sort(rng.choice(n, limit, replace=False))]
        logger.info("training FAISS index %r on %d vectors", self.factory, len(sample))
        try:
            self._index.train(sample)
        except RuntimeError as exc:
            raise ValueError(
                f"FAISS index {self.factory!r} could not be trained on {len(sample)} vectors: "
                f"{str(exc).strip().splitlines()[-1][:200]}"
            ) from exc

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if not self._index.is_trained:
            self._train(vectors)
        self._index.add_with_ids(vectors, labels)

    def _remove(self, positions: np.ndarray, labels: np.ndarray) -> None:
        import faiss

        if self._can_remove is not False:
            try:
                removed = self._index.remove_ids(faiss.IDSelectorBatch(labels))
            except RuntimeError as exc:
                if "not implemented" not in str(exc):
                    raise
                self._can_remove = False
                logger.info(
                    "FAISS index %r cannot remove vectors; keeping tombstones (see compact())",
                    self.factory,
                )
            else:
                self._can_remove = True
                if removed != len(labels):
                    raise RuntimeError(
                        f"FAISS removed {removed} of {len(labels)} vectors from {self.factory!r}"
                    )
                return
        self._tombstones.update(labels.tolist())
        live = len(self) - len(labels)
        if len(self._tombstones) > live:
            logger.warning(
                "FAISS index %r holds %d tombstones for %d live items, which slows search; "
                "call compact()",
                self.factory,
                len(self._tombstones),
                live,
            )

    def reconstruct(self, ids: Sequence[str]) -> np.ndarray:
        """The stored (possibly compressed, so approximate) vectors of ``ids``.

        Returns:
            (len(ids), dim) float32 array.

        Raises:
            KeyError: an id is not in the index.
            ValueError: this index type cannot reconstruct vectors (e.g. IVF without a
                direct map).
        """
        labels = self.labels_of(ids)
        if len(labels) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        try:
            return np.asarray(self._index.reconstruct_batch(labels), dtype=np.float32)
        except RuntimeError as exc:
            raise ValueError(
                f"FAISS index {self.factory!r} cannot reconstruct vectors: "
                f"{str(exc).strip().splitlines()[-1][:200]}"
            ) from exc

    def compact(self) -> None:
        """Rebuild the index without tombstones.

        The live vectors are reconstructed (exactly for Flat storage, decoded for
        compressed storage) and added to a fresh index, trained again on them if the
        factory needs training. Labels and positions do not change.

        Raises:
            ValueError: the index cannot reconstruct its vectors.
        """
        if not self._tombstones:
            return
        vecs = self.reconstruct(self._ids)
        fresh = self._build()
        old, self._index = self._index, fresh
        try:
            if len(vecs):
                if not fresh.is_trained:
                    self._train(vecs)
                fresh.add_with_ids(vecs, self._labels)
        except BaseException:
            self._index = old
            raise
        self._tombstones = set()
        self.set_search_params(nprobe=self.nprobe, ef_search=self.ef_search)
        logger.info("compacted FAISS index %r to %d vectors", self.factory, len(self))

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        fetch = min(k + len(self._tombstones), int(self._index.ntotal))
        dist, labels = self._index.search(queries, fetch)
        pos = self._positions_of_labels(labels)
        valid = pos >= 0
        # Live results first (keeping FAISS's order), then cut to k.
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        pos = np.take_along_axis(pos, order, 1)
        scores = np.take_along_axis(dist, order, 1).astype(np.float32)
        if self.metric == "l2":
            scores = -scores
        missing = pos < 0
        scores[missing] = -np.inf
        # Deterministic tie order: score descending, then position ascending (-1 padding,
        # at -inf, stays last).
        tie_pos = np.where(missing, np.iinfo(np.int64).max, pos)
        order = np.lexsort((tie_pos, -scores), axis=1)
        return np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)

    def _stored_vectors(self) -> Any:
        """Reconstructed vectors for the load check, where the index can reconstruct them."""
        if not len(self):
            return None
        try:
            self._index.reconstruct_batch(self._labels[:1])
        except RuntimeError:
            return None  # no direct map (IVF): the file checksum guards it instead
        index, labels = self._index, self._labels

        class _Rows:
            def __len__(self) -> int:
                return len(labels)

            def __getitem__(self, sl: slice) -> np.ndarray:
                return np.asarray(index.reconstruct_batch(labels[sl]), dtype=np.float32)

        return _Rows()

    def _save_payload(self, directory: Path) -> list[Path]:
        import faiss

        f = directory / "index.faiss"
        faiss.write_index(self._index, str(f))
        tf = directory / "tombstones.npy"
        atomic_save_npy(tf, np.asarray(sorted(self._tombstones), dtype=np.int64))
        return [f, tf]

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        import faiss

        f = directory / "index.faiss"
        try:
            index = faiss.read_index(str(f))
        except RuntimeError as exc:
            raise ValueError(
                f"cannot read {f}: it is truncated or corrupt; rebuild the index"
            ) from exc
        tombstones = load_npy(directory / "tombstones.npy")
        expected_total = manifest["count"] + len(tombstones)
        if index.d != self.dim or index.ntotal != expected_total:
            raise ValueError(
                f"{f} holds {index.ntotal} vectors of dim {index.d}; the manifest says "
                f"{expected_total} of dim {self.dim}; rebuild the index"
            )
        self._index = index
        self._tombstones = set(tombstones.astype(np.int64).tolist())
        self._can_remove = False if self._tombstones else None
        self.set_search_params(nprobe=manifest.get("nprobe"), ef_search=manifest.get("ef_search"))
