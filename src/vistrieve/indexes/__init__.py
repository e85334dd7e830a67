"""Vector indexes over string ids, and the one registry that creates and loads them.

Every index kind is registered once in :data:`INDEXES` under the ``kind`` its manifest
records; :func:`create_index` builds an empty one from a short spec and :func:`load_index`
reopens any saved one by dispatching on its manifest.

Index specs: ``"exact"`` (float32), ``"exact:float16"``, and ``"faiss:<factory string>"``
for any FAISS index-factory string (``"faiss:HNSW32"``, ``"faiss:IVF256,PQ16"``),
``"sq8"`` (8-bit codes, float re-scoring), ``"bf16"`` (bfloat16 rows, float re-scoring)
and ``"ivf_disk"`` (IVF-PQ, inverted lists on disk; built from shards with
:func:`~vistrieve.indexes.ivf_disk.build_ivf_disk`). Binary hash-code indexes
(``"binary"``) are built by :class:`~vistrieve.indexes.binary.BinaryHashIndex` directly
(they need a bit count, not a dimension).

Example:
    >>> index = create_index("exact", dim=4)
    >>> type(index).__name__
    'ExactIndex'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from vistrieve.indexes.base import BaseIndex, IndexMismatchError, read_index_manifest
from vistrieve.indexes.binary import BinaryHashIndex
from vistrieve.indexes.exact import ExactIndex
from vistrieve.indexes.faiss_index import FaissIndex
from vistrieve.indexes.ivf_disk import (
    IVFDiskIndex,
    build_ivf_disk,
    choose_ivf_params,
    tune_search,
)
from vistrieve.indexes.sharded import ShardedSearch
from vistrieve.indexes.sq import BF16Index, SQ8Index
from vistrieve.registry import Registry
from vistrieve.types import Index

INDEXES: Registry[BaseIndex] = Registry("index")
"""Index kind -> index class: ``INDEXES.create(kind, dim=...)`` builds an empty index and
``INDEXES.get(kind).load(path)`` reopens a saved one."""
INDEXES.register("exact")(ExactIndex)
INDEXES.register("faiss")(FaissIndex)
INDEXES.register("binary")(BinaryHashIndex)
INDEXES.register("sq8")(SQ8Index)
INDEXES.register("bf16")(BF16Index)
INDEXES.register("ivf_disk")(IVFDiskIndex)


def register_index_kind(kind: str, cls: type[BaseIndex]) -> None:
    """Register a :class:`~vistrieve.indexes.base.BaseIndex` subclass under ``kind`` so that
    :func:`load_index` reopens its directories and :func:`create_index` builds it.

    Raises:
        TypeError: ``cls`` is not a ``BaseIndex`` subclass.
        ValueError: ``kind`` is already registered, or differs from ``cls.kind``.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseIndex)):
        raise TypeError(f"{cls!r} is not a BaseIndex subclass")
    if cls.kind != kind:
        raise ValueError(f"{cls.__name__}.kind is {cls.kind!r}; register it under that name")
    INDEXES.register(kind)(cls)


def index_kinds() -> list[str]:
    """The registered index kinds."""
    return INDEXES.list()


def create_index(spec: str | Index, dim: int, *, model: str | None = None, **kw: Any) -> Index:
    """Build an empty index from a spec, or check and pass a ready index through.

    Args:
        spec: ``"exact"``, ``"exact:float16"``, ``"faiss:<factory>"``, another registered
            kind, or an index.
        dim: Embedding dimension.
        model: Name of the encoder whose embeddings the index holds (for manifests).

    Raises:
        ValueError: a ready index of another dimension or a malformed spec.
        KeyError: an unknown index kind (close matches are suggested).
    """
    if not isinstance(spec, str):
        if spec.dim != dim:
            raise ValueError(f"index has dim {spec.dim}, embeddings have dim {dim}")
        return spec
    kind, _, arg = spec.partition(":")
    cls: Any = INDEXES.get(kind)
    if kind == "exact":
        if arg and arg not in ("float32", "float16"):
            raise ValueError(f"exact index dtype must be float32 or float16, got {arg!r}")
        return cls(dim, model=model, dtype=arg or "float32", **kw)
    if kind == "faiss":
        if not arg:
            raise ValueError("faiss index spec needs a factory string, e.g. 'faiss:HNSW32'")
        return cls(dim, arg, model=model, **kw)
    if arg:
        raise ValueError(f"index kind {kind!r} takes no ':' argument (got {spec!r})")
    return cls(dim, model=model, **kw)


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
    manifest = read_index_manifest(path)
    kind = manifest["kind"]
    if kind not in INDEXES:
        raise ValueError(
            f"{Path(path)}: unknown index kind {kind!r} (known: {index_kinds()}); register it "
            "with vistrieve.indexes.register_index_kind before loading"
        )
    cls = cast(type[BaseIndex], INDEXES.get(kind))
    return cls.load(path, expected_model=expected_model, expected_dim=expected_dim)


__all__ = [
    "INDEXES",
    "BaseIndex",
    "BinaryHashIndex",
    "ExactIndex",
    "FaissIndex",
    "IVFDiskIndex",
    "IndexMismatchError",
    "BF16Index",
    "SQ8Index",
    "ShardedSearch",
    "build_ivf_disk",
    "choose_ivf_params",
    "create_index",
    "index_kinds",
    "load_index",
    "read_index_manifest",
    "register_index_kind",
    "tune_search",
]
