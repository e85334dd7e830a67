"""Vector indexes over string ids: exact (blocked torch matmul) and FAISS (any factory string).

On a 2-core CPU faiss-cpu's ``IndexFlatIP`` is several times slower than a blocked
``torch.matmul`` + ``torch.topk`` over the same data, so exact search never goes through
FAISS here: :class:`ExactIndex` keeps the vectors in a torch tensor and scans them in
blocks with a running top-k merge. :class:`FaissIndex` takes any FAISS index-factory string
(``"HNSW32"``, ``"IVF256,Flat"``, ``"IVF1024,PQ16"`` ...) for approximate search.

Both share :class:`BaseIndex`: string ids mapped to int64 labels, add / remove by id,
``search`` returning :class:`~vistrieve.types.Hit` lists, and ``save``/``load`` of a directory
written atomically (temporary directory, then rename), without pickle, with a
``manifest.json`` recording kind, model, dimension, count, metric, format version and the
byte size of every file so that a truncated file is reported clearly. ``load_index`` checks
the manifest against the encoder that will query the index.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from vistrieve.types import Hit
from vistrieve.utils.io import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    atomic_directory,
    atomic_save_npy,
    atomic_write_json,
    check_files,
    file_record,
    load_npy,
    read_json,
)

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]


class IndexMismatchError(ValueError):
    """An index was built with another model, dimension or code size than the caller's."""


class BaseIndex:
    """Shared bookkeeping: ids, validation, manifests, save/load.

    Subclasses implement ``_add(vectors, labels)``, ``_remove(positions)``,
    ``_search(queries, k) -> (scores, positions)``, ``_save_payload(dir) -> list[Path]``
    and ``_load_payload(dir, manifest)``; positions index :attr:`ids`.
    """

    kind: ClassVar[str] = "base"
    dtype_in: ClassVar[type] = np.float32

    def __init__(self, dim: int, *, metric: Metric = "ip", model: str | None = None) -> None:
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        self.dim = int(dim)
        self.metric: Metric = metric
        self.model = model
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}

    # -- ids ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._pos

    @property
    def ids(self) -> list[str]:
        """Ids of the stored items, in storage order."""
        return list(self._ids)

    def _check_ids(self, ids: Sequence[str], n: int) -> list[str]:
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of strings, not one string")
        out = list(ids)
        if len(out) != n:
            raise ValueError(f"got {n} vectors but {len(out)} ids")
        seen: set[str] = set()
        for i in out:
            if not isinstance(i, str) or not i:
                raise ValueError(f"ids must be non-empty strings, got {i!r}")
            if i in seen or i in self._pos:
                raise ValueError(f"duplicate id {i!r}: ids must be unique in an index")
            seen.add(i)
        return out

    def _check_vectors(self, x: np.ndarray, what: str = "embeddings") -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape (n, {self.dim}), got {arr.shape}; "
                "was the index built with another encoder?"
            )
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{what} must be numeric, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=self.dtype_in)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return arr

    # -- public API --------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        """Add vectors (n, dim) under new, unique string ids."""
        vecs = self._check_vectors(embeddings)
        new_ids = self._check_ids(ids, vecs.shape[0])
        if not new_ids:
            return
        start = len(self._ids)
        self._add(vecs, np.arange(start, start + len(new_ids), dtype=np.int64))
        self._ids.extend(new_ids)
        self._pos.update({i: start + k for k, i in enumerate(new_ids)})

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete items by id; returns how many were removed.

        Raises:
            KeyError: an id is not in the index (unless ``missing_ok``).
        """
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of strings, not one string")
        missing = [i for i in ids if i not in self._pos]
        if missing and not missing_ok:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        positions = sorted({self._pos[i] for i in ids if i in self._pos})
        if not positions:
            return 0
        self._remove(np.asarray(positions, dtype=np.int64))
        gone = set(positions)
        self._ids = [i for p, i in enumerate(self._ids) if p not in gone]
        self._pos = {i: p for p, i in enumerate(self._ids)}
        return len(positions)

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` search returning arrays.

        Returns:
            ``(scores, positions)``: float32 and int64 arrays of shape (n_queries, k), best
            first; positions index :attr:`ids`; padded with ``-inf`` / ``-1`` when fewer
            than ``k`` items exist. For ``metric="l2"`` the score is the negative squared
            L2 distance, so higher is always better.
        """
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = self._check_vectors(queries, "queries")
        n = q.shape[0]
        kk = min(int(k), len(self))
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        pos = np.full((n, k), -1, dtype=np.int64)
        if kk and n:
            s, p = self._search(q, kk)
            scores[:, : s.shape[1]] = s
            pos[:, : p.shape[1]] = p
        return scores, pos

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query (lists are shorter when the index holds fewer items)."""
        scores, pos = self.search_arrays(queries, k)
        ids = self._ids
        return [
            [Hit(ids[p], float(s)) for s, p in zip(srow, prow, strict=True) if p >= 0]
            for srow, prow in zip(scores, pos, strict=True)
        ]

    # -- persistence ---------------------------------------------------------------------
    def _manifest_extra(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save into directory ``path`` atomically (replacing an older index there)."""
        with atomic_directory(path) as tmp:
            atomic_write_json(tmp / "ids.json", self._ids)
            files = [tmp / "ids.json", *self._save_payload(tmp)]
            manifest = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "model": self.model,
                "dim": self.dim,
                "count": len(self),
                "metric": self.metric,
                **self._manifest_extra(),
                "files": [file_record(f) for f in files],
            }
            atomic_write_json(tmp / MANIFEST_NAME, manifest)

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        raise NotImplementedError

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_model: str | None = None,
        expected_dim: int | None = None,
    ) -> BaseIndex:
        """Load an index saved by :meth:`save` (see :func:`load_index`)."""
        index = load_index(path, expected_model=expected_model, expected_dim=expected_dim)
        if not isinstance(index, cls):
            raise TypeError(f"{path} holds a {type(index).__name__}, not a {cls.__name__}")
        return index

    # -- subclass hooks --------------------------------------------------------------------
    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _remove(self, positions: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _save_payload(self, directory: Path) -> list[Path]:
        raise NotImplementedError

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        raise NotImplementedError


_KINDS: dict[str, type[BaseIndex]] = {}


def register_index_kind(kind: str, cls: type[BaseIndex]) -> None:
    """Make ``load_index`` able to load manifests of ``kind`` with ``cls``."""
    _KINDS[kind] = cls


def load_index(
    path: str | os.PathLike[str],
    *,
    expected_model: str | None = None,
    expected_dim: int | None = None,
) -> BaseIndex:
    """Load any saved vistrieve index, checking it against the caller's model.

    Args:
        path: The index directory.
        expected_model: Name of the encoder that will query the index; an index built with
            another model is refused.
        expected_dim: Dimension of the query vectors.

    Raises:
        FileNotFoundError: ``path`` or a file listed in its manifest is missing.
        ValueError: the directory is not a vistrieve index, has an unknown format version,
            or a file is truncated.
        IndexMismatchError: built with another model or dimension.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"index directory not found: {root}")
    mf = root / MANIFEST_NAME
    if not mf.is_file():
        raise ValueError(f"{root} is not a vistrieve index: it has no {MANIFEST_NAME}")
    manifest = read_json(mf)
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise ValueError(f"{mf} is not a vistrieve index manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root} has index format version {manifest.get('format_version')}; this "
            f"vistrieve reads version {FORMAT_VERSION}: rebuild the index"
        )
    kind = manifest["kind"]
    if kind not in _KINDS:
        raise ValueError(f"{root}: unknown index kind {kind!r} (known: {sorted(_KINDS)})")
    built_model, built_dim = manifest.get("model"), manifest.get("dim")
    if (expected_model is not None and built_model != expected_model) or (
        expected_dim is not None and built_dim != expected_dim
    ):
        raise IndexMismatchError(
            f"index at {root} was built with model {built_model!r} (dim {built_dim}) but the "
            f"encoder is {expected_model!r} (dim {expected_dim}); rebuild the index with this "
            "encoder or load it with the one it was built with"
        )
    check_files(root, manifest.get("files", []))
    cls = _KINDS[kind]
    index = cls._from_manifest(manifest)
    ids = read_json(root / "ids.json")
    if not isinstance(ids, list) or len(ids) != manifest["count"]:
        raise ValueError(f"{root}/ids.json does not hold {manifest['count']} ids")
    index._ids = [str(i) for i in ids]
    index._pos = {i: p for p, i in enumerate(index._ids)}
    index._load_payload(root, manifest)
    return index


# --------------------------------------------------------------------------- exact
class ExactIndex(BaseIndex):
    """Exact top-k search by blocked matrix multiply in torch.

    Args:
        dim: Vector dimension.
        metric: ``"ip"`` (inner product; cosine for normalised vectors) or ``"l2"``
            (scores are negative squared distances).
        dtype: Storage precision; ``float16`` halves memory, and each block is converted
            to float32 before the multiply (CPU half-precision matmul is slow).
        model: Name of the encoder the vectors come from (recorded in the manifest).
        query_block: Queries per block.
        db_block: Database rows per block.

    Ties are broken towards the lower storage position (earlier insertion).

    Example:
        >>> index = ExactIndex(4)
        >>> index.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        >>> [h.id for h in index.search(np.array([[0, 1, 0, 0]], np.float32), 2)[0]]
        ['b', 'a']
    """

    kind = "exact"

    def __init__(
        self,
        dim: int,
        *,
        metric: Metric = "ip",
        dtype: Literal["float32", "float16"] = "float32",
        model: str | None = None,
        query_block: int = 1024,
        db_block: int = 131072,
    ) -> None:
        super().__init__(dim, metric=metric, model=model)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if query_block <= 0 or db_block <= 0:
            raise ValueError("query_block and db_block must be positive")
        self.dtype = dtype
        self.query_block = query_block
        self.db_block = db_block
        self._data = torch.empty((0, dim), dtype=getattr(torch, dtype))
        self._sqnorm = torch.empty((0,), dtype=torch.float32)

    def _manifest_extra(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        return cls(
            manifest["dim"], metric=manifest["metric"], dtype=manifest["dtype"],
            model=manifest.get("model"),
        )

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        t = torch.from_numpy(vectors).to(self._data.dtype)
        self._data = torch.cat([self._data, t])
        if self.metric == "l2":
            self._sqnorm = torch.cat([self._sqnorm, (t.float() ** 2).sum(1)])

    def _remove(self, positions: np.ndarray) -> None:
        keep = torch.ones(len(self._data), dtype=torch.bool)
        keep[torch.from_numpy(positions)] = False
        self._data = self._data[keep]
        if self.metric == "l2":
            self._sqnorm = self._sqnorm[keep]

    def reconstruct(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` as float32 (len(ids), dim)."""
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        idx = torch.tensor([self._pos[i] for i in ids], dtype=torch.int64)
        return self._data[idx].float().numpy()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q_all = torch.from_numpy(queries)
        n_db = self._data.shape[0]
        out_s = np.empty((q_all.shape[0], k), dtype=np.float32)
        out_p = np.empty((q_all.shape[0], k), dtype=np.int64)
        with torch.inference_mode():
            for qs in range(0, q_all.shape[0], self.query_block):
                q = q_all[qs : qs + self.query_block]
                best_s: torch.Tensor | None = None
                best_p: torch.Tensor | None = None
                for ds in range(0, n_db, self.db_block):
                    block = self._data[ds : ds + self.db_block]
                    if block.dtype != torch.float32:
                        block = block.float()
                    s = q @ block.T
                    if self.metric == "l2":
                        s = 2 * s - self._sqnorm[ds : ds + self.db_block]
                    kb = min(k, s.shape[1])
                    bs, bp = torch.topk(s, kb, dim=1, sorted=False)
                    bp += ds
                    if best_s is None or best_p is None:
                        best_s, best_p = bs, bp
                    else:
                        cs = torch.cat([best_s, bs], 1)
                        cp = torch.cat([best_p, bp], 1)
                        ks = min(k, cs.shape[1])
                        best_s, sel = torch.topk(cs, ks, dim=1, sorted=False)
                        best_p = torch.gather(cp, 1, sel)
                assert best_s is not None and best_p is not None
                if self.metric == "l2":
                    best_s = best_s - (q**2).sum(1, keepdim=True)
                # Deterministic order: score descending, then lower position first.
                order = np.lexsort((best_p.numpy(), -best_s.numpy()), axis=1)
                out_s[qs : qs + len(q)] = np.take_along_axis(best_s.numpy(), order, 1)
                out_p[qs : qs + len(q)] = np.take_along_axis(best_p.numpy(), order, 1)
        return out_s, out_p

    def _save_payload(self, directory: Path) -> list[Path]:
        f = directory / "vectors.npy"
        arr = self._data.numpy()
        atomic_save_npy(f, arr)
        return [f]

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        arr = load_npy(directory / "vectors.npy")
        if arr.shape != (manifest["count"], manifest["dim"]):
            raise ValueError(
                f"{directory}/vectors.npy has shape {arr.shape}, manifest says "
                f"({manifest['count']}, {manifest['dim']})"
            )
        self._data = torch.from_numpy(np.ascontiguousarray(arr)).to(getattr(torch, self.dtype))
        if self.metric == "l2":
            self._sqnorm = (self._data.float() ** 2).sum(1)


# --------------------------------------------------------------------------- faiss
class FaissIndex(BaseIndex):
    """Approximate search with any FAISS index-factory string.

    Args:
        dim: Vector dimension.
        factory: FAISS factory string (``"HNSW32"``, ``"IVF256,Flat"``, ``"IVF1024,PQ16"``).
        metric: ``"ip"`` or ``"l2"`` (scores: inner product, or negative squared distance).
        model: Encoder name recorded in the manifest.
        train_size: Most vectors used to train an index that needs training (the first
            ``add`` trains it on a seeded sample).
        nprobe: IVF cells visited per query.
        ef_search: HNSW search breadth.

    Deletion uses FAISS ``remove_ids`` where the index supports it. HNSW graphs do not:
    there removed ids become tombstones that search over-fetches past and filters out;
    :meth:`compact` rebuilds the index without them.
    """

    kind = "faiss"

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
        import faiss

        self.factory = factory
        self.train_size = train_size
        self.nprobe = nprobe
        self.ef_search = ef_search
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            base = faiss.index_factory(self.dim, factory, faiss_metric)
        except RuntimeError as exc:
            raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from exc
        self._index = self._wrap(base)
        self._labels = np.empty((0,), dtype=np.int64)  # faiss label of each position
        self._next_label = 0
        self._tombstones: set[int] = set()
        self._apply_params()

    @staticmethod
    def _wrap(base: Any) -> Any:
        import faiss

        # An ID map gives every index type the same int64 labels and remove_ids path.
        return faiss.IndexIDMap2(base)

    def _apply_params(self) -> None:
        import faiss

        inner = faiss.downcast_index(
            self._index.index if isinstance(self._index, faiss.IndexIDMap2) else self._index
        )
        if self.nprobe is not None and hasattr(inner, "nprobe"):
            inner.nprobe = self.nprobe
        hnsw = getattr(inner, "hnsw", None)
        if self.ef_search is not None and hnsw is not None:
            hnsw.efSearch = self.ef_search

    def _manifest_extra(self) -> dict[str, Any]:
        return {
            "factory": self.factory, "train_size": self.train_size, "nprobe": self.nprobe,
            "ef_search": self.ef_search, "next_label": self._next_label,
            "tombstones": sorted(self._tombstones),
        }

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        return cls(
            manifest["dim"], manifest["factory"], metric=manifest["metric"],
            model=manifest.get("model"), train_size=manifest.get("train_size"),
            nprobe=manifest.get("nprobe"), ef_search=manifest.get("ef_search"),
        )

    @property
    def needs_training(self) -> bool:
        """Whether the index still has to be trained (done by the first ``add``)."""
        return not self._index.is_trained

    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if not self._index.is_trained:
            n = vectors.shape[0]
            limit = self.train_size or n
            sample = vectors
            if n > limit:
                rng = np.random.default_rng(0)
                sample = vectors[np.sort(rng.choice(n, limit, replace=False))]
            try:
                self._index.train(sample)
            except RuntimeError as exc:
                raise ValueError(
                    f"FAISS index {self.factory!r} could not be trained on {sample.shape[0]} "
                    f"vectors ({exc}); the first add needs more vectors, e.g. at least "
                    "39 x the number of IVF cells"
                ) from exc
            self._apply_params()
        fl = np.arange(self._next_label, self._next_label + len(vectors), dtype=np.int64)
        self._index.add_with_ids(vectors, fl)
        self._next_label += len(vectors)
        self._labels = np.concatenate([self._labels, fl])

    def _remove(self, positions: np.ndarray) -> None:
        import faiss

        fl = self._labels[positions]
        try:
            removed = self._index.remove_ids(faiss.IDSelectorBatch(fl))
            if removed != len(fl):
                raise RuntimeError(f"removed {removed} of {len(fl)}")
        except RuntimeError:
            self._tombstones.update(int(x) for x in fl)
        keep = np.ones(len(self._labels), dtype=bool)
        keep[positions] = False
        self._labels = self._labels[keep]

    def compact(self) -> None:
        """Rebuild without tombstones (needs an index whose vectors can be reconstructed)."""
        if not self._tombstones:
            return
        try:
            vecs = np.stack([self._index.reconstruct(int(label)) for label in self._labels])
        except RuntimeError as exc:
            raise ValueError(f"{self.factory!r} cannot reconstruct vectors to compact: {exc}") from exc
        fresh = FaissIndex(
            self.dim, self.factory, metric=self.metric, model=self.model,
            train_size=self.train_size, nprobe=self.nprobe, ef_search=self.ef_search,
        )
        fresh.add(vecs, self._ids)
        self._index, self._labels = fresh._index, fresh._labels
        self._next_label, self._tombstones = fresh._next_label, set()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        fetch = min(k + len(self._tombstones), self._index.ntotal)
        d, fl = self._index.search(queries, fetch)
        pos_of = {int(label): p for p, label in enumerate(self._labels)}
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_p = np.full((len(queries), k), -1, dtype=np.int64)
        for r in range(len(queries)):
            c = 0
            for dist, label in zip(d[r], fl[r], strict=True):
                p = pos_of.get(int(label))
                if label < 0 or p is None:
                    continue
                out_s[r, c] = dist if self.metric == "ip" else -dist
                out_p[r, c] = p
                c += 1
                if c == k:
                    break
        return out_s, out_p

    def _save_payload(self, directory: Path) -> list[Path]:
        import faiss

        f = directory / "index.faiss"
        faiss.write_index(self._index, str(f))
        lf = directory / "labels.npy"
        atomic_save_npy(lf, self._labels)
        return [f, lf]

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        import faiss

        try:
            self._index = faiss.read_index(str(directory / "index.faiss"))
        except RuntimeError as exc:
            raise ValueError(f"cannot read {directory}/index.faiss: truncated or corrupt ({exc})") from exc
        self._labels = load_npy(directory / "labels.npy").astype(np.int64)
        self._next_label = int(manifest.get("next_label", len(self._labels)))
        self._tombstones = {int(x) for x in manifest.get("tombstones", [])}
        self._apply_params()


register_index_kind(ExactIndex.kind, ExactIndex)
register_index_kind(FaissIndex.kind, FaissIndex)

__all__ = [
    "BaseIndex",
    "ExactIndex",
    "FaissIndex",
    "IndexMismatchError",
    "load_index",
    "register_index_kind",
]
