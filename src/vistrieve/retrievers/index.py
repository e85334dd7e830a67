"""Vector indexes over string ids: exact (blocked torch matmul) and FAISS (any factory string).

On a 2-core CPU faiss-cpu's ``IndexFlatIP`` is several times slower than a blocked
``torch.matmul`` + ``torch.topk`` over the same data, so exact search never goes through
FAISS here: :class:`ExactIndex` keeps the vectors in a torch tensor and scans them block by
block with a running top-k merge. :class:`FaissIndex` takes any FAISS index-factory string
(``"HNSW32"``, ``"IVF256,Flat"``, ``"IVF1024,PQ16"`` ...) for approximate search; FAISS is
imported lazily, as sentence-transformers' ``quantization.py`` does.

Both derive from :class:`BaseIndex`, which holds the bookkeeping any index kind shares
(including a binary-code Hamming index built on FAISS ``IndexBinary*``): string ids mapped
to int64 labels, input validation, ``search`` returning :class:`~vistrieve.types.Hit` lists,
and ``save`` into a directory assembled atomically (temporary directory, then swap) without
pickle: ids as JSON, arrays as ``.npy`` (``allow_pickle=False``), FAISS indexes through
``faiss.write_index``, and a ``manifest.json`` recording format version, kind, model,
dimension, count, metric and the byte size of every file. :func:`load_index` dispatches on
the manifest's kind (extensible with :func:`register_index_kind`), detects truncated and
missing files, and refuses an index built with another encoder.

Layout of a saved index directory::

    manifest.json   {"format_version", "kind", "model", "dim", "count", "metric",
                     "next_label", <kind-specific fields>, "files": [{"name", "bytes"}...]}
    ids.json        the ids, in storage order
    labels.npy      int64 label of each id (FAISS labels; increasing)
    vectors.npy     ExactIndex: (count, dim) float32 or float16
    index.faiss     FaissIndex: the FAISS index; tombstones.npy: removed labels still in it
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

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

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
_IndexT = TypeVar("_IndexT", bound="BaseIndex")

_FLOAT16_MAX = 65504.0
_CONVERT_BYTES = 128 * 2**20


class IndexMismatchError(ValueError):
    """An index was built with another model or dimension than the one querying it."""


# ------------------------------------------------------------------------------- base
class BaseIndex:
    """Shared bookkeeping of every index kind: ids, labels, validation, manifests, save/load.

    Items live at *positions* ``0 .. len(index) - 1`` in insertion order (removal closes
    the gaps, so positions shift); :attr:`ids` lists them. Each item also gets an int64
    *label* when added, unique for the index's lifetime and increasing with position; FAISS
    indexes store these labels, so they stay valid across removals.

    Subclasses set :attr:`kind` and implement the hooks ``_add(vectors, labels)``,
    ``_remove(positions, labels)``, ``_search(queries, k)`` (``k <= len(self)``; returns
    scores and positions, best first), ``_save_payload(directory)`` (returns the files it
    wrote), ``_load_payload(directory, manifest)``, ``_from_manifest(manifest)`` and
    optionally ``_manifest_extra()``. A kind whose vectors are not float (binary codes)
    overrides ``_check_vectors`` and :attr:`metrics`.

    Args:
        dim: Vector dimension.
        metric: Similarity; one of :attr:`metrics`.
        model: Name of the encoder whose embeddings the index holds, recorded in the
            manifest so that :func:`load_index` can refuse queries from another encoder.
    """

    kind: ClassVar[str] = "base"
    metrics: ClassVar[tuple[str, ...]] = ("ip", "l2")

    def __init__(self, dim: int, *, metric: str = "ip", model: str | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if metric not in self.metrics:
            raise ValueError(f"metric must be one of {self.metrics}, got {metric!r}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a str or None, got {type(model).__name__}")
        self.dim = int(dim)
        self.metric = metric
        self.model = model
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._labels = np.empty((0,), dtype=np.int64)
        self._next_label = 0

    # -- ids ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._pos

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._manifest_extra().items())
        return (
            f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}{extra}, "
            f"model={self.model!r}, count={len(self)})"
        )

    @property
    def ids(self) -> list[str]:
        """A copy of the ids of the live items, in insertion order (index with positions)."""
        return list(self._ids)

    def labels_of(self, ids: Sequence[str]) -> np.ndarray:
        """The int64 labels of ``ids``: shape (len(ids),).

        Raises:
            KeyError: an id is not in the index.
        """
        return self._labels[self._positions_of(ids)]

    def _positions_of(self, ids: Sequence[str]) -> np.ndarray:
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of strings, not one string (wrap it)")
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in the index, e.g. {missing[:5]}")
        return np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def _positions_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Positions of ``labels`` (any shape); -1 where a label is not live."""
        flat = np.asarray(labels, dtype=np.int64)
        if len(self._labels) == 0:
            return np.full(flat.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._labels, flat)
        pos_c = np.minimum(pos, len(self._labels) - 1)
        ok = (flat >= 0) & (self._labels[pos_c] == flat)
        return np.where(ok, pos_c, -1).astype(np.int64)

    def _check_ids(self, ids: Sequence[str], n: int) -> list[str]:
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of strings, not one string (wrap it)")
        out = list(ids)
        if len(out) != n:
            raise ValueError(f"got {n} vectors but {len(out)} ids; give one id per vector")
        seen: set[str] = set()
        for i in out:
            if not isinstance(i, str) or not i:
                raise ValueError(f"ids must be non-empty strings, got {i!r}")
            if i in seen:
                raise ValueError(f"duplicate id {i!r} within the batch: ids must be unique")
            if i in self._pos:
                raise ValueError(
                    f"duplicate id {i!r}: it is already in the index (remove it first to "
                    "replace its vector)"
                )
            seen.add(i)
        return out

    def _check_vectors(self, x: np.ndarray, what: str = "embeddings") -> np.ndarray:
        """Validate ``x`` as a (n, dim) finite float array; returns it as C-contiguous float32."""
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape (n, {self.dim}), got {arr.shape}; "
                "were they made by another encoder than the index's?"
            )
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{what} must be a float array, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise ValueError(f"{what} contain NaN or infinite values (first in row {bad})")
        return arr

    @staticmethod
    def _check_k(k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return int(k)

    # -- public API --------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        """Add vectors under new, unique string ids.

        Args:
            embeddings: (n, dim) float array (stored as float32 or float16).
            ids: n non-empty strings, none already in the index.

        Raises:
            ValueError: wrong shape, NaN/inf values, id count mismatch, empty or duplicate
                ids (the error names the first duplicate).
        """
        vecs = self._check_vectors(embeddings)
        new_ids = self._check_ids(ids, vecs.shape[0])
        if not new_ids:
            return
        labels = np.arange(self._next_label, self._next_label + len(new_ids), dtype=np.int64)
        self._add(vecs, labels)
        start = len(self._ids)
        self._ids.extend(new_ids)
        self._pos.update({i: start + j for j, i in enumerate(new_ids)})
        self._labels = np.concatenate([self._labels, labels])
        self._next_label += len(new_ids)

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete items by id; later items move down to close the gaps.

        Args:
            ids: Ids to delete.
            missing_ok: Ignore ids that are not in the index instead of raising.

        Returns:
            How many items were removed.

        Raises:
            KeyError: an id is not in the index (unless ``missing_ok``).
        """
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of strings, not one string (wrap it)")
        if not missing_ok:
            self._positions_of(ids)
        positions = np.asarray(sorted({self._pos[i] for i in ids if i in self._pos}), np.int64)
        if len(positions) == 0:
            return 0
        self._remove(positions, self._labels[positions])
        keep = np.ones(len(self._ids), dtype=bool)
        keep[positions] = False
        self._ids = [i for i, kept in zip(self._ids, keep.tolist(), strict=True) if kept]
        self._pos = {i: p for p, i in enumerate(self._ids)}
        self._labels = self._labels[keep]
        return int(len(positions))

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` search returning arrays, best first.

        Args:
            queries: (n_queries, dim) float array.
            k: Results per query (> 0).

        Returns:
            ``(scores, positions)``: float32 and int64 arrays of shape (n_queries, k), best
            first; positions index :attr:`ids`. Rows are padded with ``-inf`` / ``-1`` when
            fewer than ``k`` results exist. Scores are higher-is-better: the inner product
            for ``metric="ip"``, the negative squared L2 distance for ``metric="l2"``.

        Raises:
            ValueError: ``k <= 0`` or queries of the wrong shape or with NaN/inf values.
        """
        k = self._check_k(k)
        q = self._check_vectors(queries, "queries")
        n = q.shape[0]
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        pos = np.full((n, k), -1, dtype=np.int64)
        kk = min(k, len(self))
        if kk and n:
            s, p = self._search(q, kk)
            scores[:, :kk] = s
            pos[:, :kk] = p
        return scores, pos

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first.

        Args:
            queries: (n_queries, dim) float array.
            k: Hits per query (> 0); a list is shorter when fewer results exist.

        Returns:
            One list of :class:`~vistrieve.types.Hit` per query; scores as in
            :meth:`search_arrays`.
        """
        scores, pos = self.search_arrays(queries, k)
        ids = self._ids
        return [
            [Hit(ids[p], s) for s, p in zip(srow, prow, strict=True) if p >= 0]
            for srow, prow in zip(scores.tolist(), pos.tolist(), strict=True)
        ]

    # -- persistence ---------------------------------------------------------------------
    def _manifest_extra(self) -> dict[str, Any]:
        return {}

    def manifest(self) -> dict[str, Any]:
        """The manifest fields describing this index (without the file records)."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model,
            "dim": self.dim,
            "count": len(self),
            "metric": self.metric,
            "next_label": self._next_label,
            **self._manifest_extra(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save into the directory ``path``, replacing an index saved there before.

        The directory is assembled in a temporary sibling and swapped in only when every
        file is written, so a failure leaves the previous index intact.
        """
        with atomic_directory(path) as tmp:
            atomic_write_json(tmp / "ids.json", self._ids)
            atomic_save_npy(tmp / "labels.npy", self._labels)
            files = [tmp / "ids.json", tmp / "labels.npy", *self._save_payload(tmp)]
            manifest = {**self.manifest(), "files": [file_record(f) for f in files]}
            atomic_write_json(tmp / MANIFEST_NAME, manifest)
        logger.info("saved %r to %s", self, path)

    @classmethod
    def load(
        cls: type[_IndexT],
        path: str | os.PathLike[str],
        *,
        expected_model: str | None = None,
        expected_dim: int | None = None,
    ) -> _IndexT:
        """Load an index of this class saved by :meth:`save` (see :func:`load_index`).

        Raises:
            TypeError: the directory holds another kind of index.
        """
        index = load_index(path, expected_model=expected_model, expected_dim=expected_dim)
        if not isinstance(index, cls):
            raise TypeError(
                f"{path} holds a {type(index).__name__}, not a {cls.__name__}; "
                "use vistrieve.retrievers.index.load_index to load any kind"
            )
        return index

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        raise NotImplementedError

    # -- subclass hooks --------------------------------------------------------------------
    def _add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _remove(self, positions: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _save_payload(self, directory: Path) -> list[Path]:
        raise NotImplementedError

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        raise NotImplementedError


_INDEX_KINDS: dict[str, type[BaseIndex]] = {}


def register_index_kind(kind: str, cls: type[BaseIndex]) -> None:
    """Let :func:`load_index` load manifests whose ``"kind"`` is ``kind`` with ``cls``.

    Example:
        >>> register_index_kind("exact", ExactIndex)
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseIndex)):
        raise TypeError(f"{cls!r} is not a BaseIndex subclass")
    known = _INDEX_KINDS.get(kind)
    if known is not None and known is not cls:
        logger.warning("index kind %r now loads with %s (was %s)", kind, cls, known)
    _INDEX_KINDS[kind] = cls


def index_kinds() -> list[str]:
    """The index kinds :func:`load_index` can load."""
    return sorted(_INDEX_KINDS)


def read_index_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the manifest of a saved index directory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a vistrieve index (no or malformed manifest) or was
            written in another format version.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"index directory not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is not a vistrieve index: it is a file, not a directory")
    mf = root / MANIFEST_NAME
    if not mf.is_file():
        raise ValueError(
            f"{root} is not a vistrieve index: it has no {MANIFEST_NAME} "
            "(indexes are written with index.save(path))"
        )
    manifest = read_json(mf)
    required = {
        "format_version": int,
        "kind": str,
        "dim": int,
        "count": int,
        "metric": str,
        "files": list,
    }
    if not isinstance(manifest, dict):
        raise ValueError(f"{mf} is not a vistrieve index manifest (not a JSON object)")
    for key, typ in required.items():
        if not isinstance(manifest.get(key), typ):
            raise ValueError(
                f"{mf} is not a vistrieve index manifest: field {key!r} is missing or not "
                f"a {typ.__name__}"
            )
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{root} has index format version {manifest['format_version']}; this vistrieve "
            f"reads version {FORMAT_VERSION}: rebuild the index with this version"
        )
    return manifest


def load_index(
    path: str | os.PathLike[str],
    *,
    expected_model: str | None = None,
    expected_dim: int | None = None,
) -> BaseIndex:
    """Load any saved vistrieve index, checking it against the encoder that will query it.

    Args:
        path: The index directory written by ``save``.
        expected_model: Name of the encoder that will query the index; an index built with
            another model is refused (one saved without a model name is accepted with a
            warning).
        expected_dim: Dimension of the query vectors.

    Returns:
        The index, of the class registered for the manifest's kind.

    Raises:
        FileNotFoundError: ``path`` or a file listed in its manifest is missing.
        ValueError: not a vistrieve index, another format version, an unknown kind, or a
            truncated or corrupt file.
        IndexMismatchError: the index was built with another model or dimension.

    Example:
        >>> index = load_index("runs/img_index", expected_model="ViT-B-32")  # doctest: +SKIP
    """
    root = Path(path)
    manifest = read_index_manifest(root)
    kind = manifest["kind"]
    cls = _INDEX_KINDS.get(kind)
    if cls is None:
        raise ValueError(
            f"{root}: unknown index kind {kind!r} (known: {index_kinds()}); import the module "
            "that registers it before loading"
        )
    built_model, built_dim = manifest.get("model"), manifest["dim"]
    model_differs = (
        expected_model is not None and built_model is not None and built_model != expected_model
    )
    if model_differs or (expected_dim is not None and built_dim != expected_dim):
        if expected_model is not None:
            got = f"the encoder is {expected_model!r}"
            if expected_dim is not None:
                got += f" (dim {expected_dim})"
            fix = f"rebuild the index with {expected_model!r}, or query it with {built_model!r}"
        else:
            got = f"the queries have dim {expected_dim}"
            fix = f"query it with embeddings of {built_model!r}, or rebuild it"
        raise IndexMismatchError(
            f"index at {root} was built with model {built_model!r} (dim {built_dim}) but "
            f"{got}; {fix}"
        )
    if expected_model is not None and built_model is None:
        logger.warning("index at %s records no model; assuming it matches %r", root, expected_model)
    check_files(root, manifest["files"])
    index = cls._from_manifest(manifest)
    ids = read_json(root / "ids.json")
    count = manifest["count"]
    if not isinstance(ids, list) or len(ids) != count or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{root}/ids.json does not hold {count} string ids; rebuild the index")
    labels = load_npy(root / "labels.npy")
    if (
        labels.shape != (count,)
        or labels.dtype.kind not in "iu"
        or (count > 1 and not bool(np.all(np.diff(labels) > 0)))
    ):
        raise ValueError(
            f"{root}/labels.npy must hold {count} increasing integer labels, got shape "
            f"{labels.shape} ({labels.dtype}); rebuild the index"
        )
    index._ids = ids
    index._pos = {i: p for p, i in enumerate(ids)}
    if len(index._pos) != count:
        raise ValueError(f"{root}/ids.json holds duplicate ids; rebuild the index")
    index._labels = labels.astype(np.int64)
    index._next_label = int(manifest.get("next_label", int(labels.max(initial=-1)) + 1))
    index._load_payload(root, manifest)
    logger.info("loaded %r from %s", index, root)
    return index


# ------------------------------------------------------------------------------ exact
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


# ------------------------------------------------------------------------------ faiss
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


register_index_kind(ExactIndex.kind, ExactIndex)
register_index_kind(FaissIndex.kind, FaissIndex)

__all__ = [
    "BaseIndex",
    "ExactIndex",
    "FaissIndex",
    "IndexMismatchError",
    "index_kinds",
    "load_index",
    "read_index_manifest",
    "register_index_kind",
]
