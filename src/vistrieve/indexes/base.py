"""The shared base of every vector index: string ids, validation, manifests, save and load.

Exact search (:class:`ExactIndex`) delegates batches of float32 queries to FAISS's
brute-force ``knn`` (the ``IndexFlatIP`` code path) and scans one or a few queries, or
float16 storage, with a blocked ``torch.matmul`` + top-k merge; ``SQ8Index`` (kind
``"sq8"``) stores 8-bit codes and re-scores its best candidates in float.
:class:`FaissIndex` takes any FAISS index-factory string (``"HNSW32"``, ``"IVF256,Flat"``,
``"IVF1024,PQ16"`` ...) for approximate search, and ``IVFDiskIndex`` (kind ``"ivf_disk"``)
keeps IVF-PQ inverted lists on disk, memory-mapped. FAISS is imported lazily, as
sentence-transformers' ``quantization.py`` does.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, cast

import numpy as np

from vistrieve.errors import IntegrityError
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
    recover_directory,
)

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
        self._pos_map: dict[str, int] | None = {}
        self._labels = np.empty((0,), dtype=np.int64)
        self._next_label = 0

    # -- ids ---------------------------------------------------------------------------
    @property
    def _pos(self) -> dict[str, int]:
        """Position of each id. Built on first use: a loaded index that is only searched
        never needs it, and it holds about 60 B per id (0.6 GB at 10M ids)."""
        if self._pos_map is None:
            self._pos_map = {i: p for p, i in enumerate(self._ids)}
        return self._pos_map

    @_pos.setter
    def _pos(self, value: dict[str, int]) -> None:
        self._pos_map = value

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
        self._pos_map = None
        self._labels = self._labels[keep]
        return int(len(positions))

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` search returning arrays, best first.

        Args:
            queries: (n_queries, dim) float array.
            k: Results per query (> 0).

        Returns:
            ``(scores, positions)``: float32 and int64 arrays of shape
            (n_queries, min(k, len(self))), best first; positions index :attr:`ids`. ``k``
            is clamped to the index size before anything is allocated, so a huge ``k`` costs
            nothing extra. Positions are ``-1`` (score ``-inf``) where an index returns fewer
            results than that (approximate kinds). Scores are higher-is-better: the inner
            product for ``metric="ip"``, the negative squared L2 distance for
            ``metric="l2"``.

        Raises:
            ValueError: ``k <= 0`` or queries of the wrong shape or with NaN/inf values.
        """
        k = min(self._check_k(k), len(self))  # clamped before any allocation
        q = self._check_vectors(queries, "queries")
        n = q.shape[0]
        if not k or not n:
            return np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
        s, p = self._search(q, k)
        return np.asarray(s, dtype=np.float32), np.asarray(p, dtype=np.int64)

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
        file is written, so a failure (or a crash) leaves the previous index intact.

        Raises:
            OverwriteRefusedError: ``path`` exists and is neither empty nor an index (a
                folder of other files is never replaced).
        """
        with atomic_directory(path, marker=MANIFEST_NAME) as tmp:
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
        """Load an index of this class saved by :meth:`save`, checking it against the encoder
        that will query it (:func:`vistrieve.indexes.load_index` loads any kind).

        Args:
            path: The index directory written by ``save``.
            expected_model: Name of the encoder that will query the index; an index built
                with another model is refused (one saved without a model name is accepted
                with a warning).
            expected_dim: Dimension of the query vectors.

        Raises:
            FileNotFoundError: ``path`` or a file listed in its manifest is missing.
            TypeError: the directory holds another kind of index.
            ValueError: not a vistrieve index, another format version, or a truncated or
                corrupt file.
            IndexMismatchError: the index was built with another model or dimension.
        """
        root = Path(path)
        manifest = read_index_manifest(root)
        if manifest["kind"] != cls.kind:
            raise TypeError(
                f"{path} holds a {manifest['kind']!r} index, not a {cls.__name__} "
                f"({cls.kind!r}); use vistrieve.indexes.load_index to load any kind"
            )
        _check_model(root, manifest, expected_model, expected_dim)
        check_files(root, manifest["files"])
        index = cast(_IndexT, cls._from_manifest(manifest))
        ids = read_json(root / "ids.json")
        count = manifest["count"]
        if (
            not isinstance(ids, list)
            or len(ids) != count
            or not all(isinstance(i, str) for i in ids)
        ):
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
        if len(set(ids)) != count:
            raise ValueError(f"{root}/ids.json holds duplicate ids; rebuild the index")
        index._ids = ids
        index._pos_map = None
        index._labels = labels.astype(np.int64)
        index._next_label = int(manifest.get("next_label", int(labels.max(initial=-1)) + 1))
        index._load_payload(root, manifest)
        index._check_loaded(root)
        logger.info("loaded %r from %s", index, root)
        return index

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any]) -> BaseIndex:
        raise NotImplementedError

    def _check_loaded(self, root: Path) -> None:
        """Checks of the loaded payload (float kinds: every stored vector is finite)."""
        vectors = self._stored_vectors()
        if vectors is None:
            return
        step = max(1, (64 * 2**20) // max(1, 4 * self.dim))
        for start in range(0, len(vectors), step):
            block = np.asarray(vectors[start : start + step], dtype=np.float32)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                row = start + int(np.flatnonzero(~finite)[0])
                raise IntegrityError(
                    f"{root}: the vector of item {self._ids[row]!r} (row {row}) holds NaN or "
                    "infinite values, which would rank it first or last for every query; "
                    "rebuild the index or restore it from a backup",
                    root,
                )

    def _stored_vectors(self) -> Any:
        """The stored float vectors (rows in position order) for load checks, or None."""
        return None

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


def read_index_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the manifest of a saved index directory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a vistrieve index (no or malformed manifest) or was
            written in another format version.
    """
    root = Path(path)
    recover_directory(root)
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


def _check_model(
    root: Path,
    manifest: dict[str, Any],
    expected_model: str | None,
    expected_dim: int | None,
) -> None:
    """Refuse an index built with another model or dimension than the one querying it."""
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
