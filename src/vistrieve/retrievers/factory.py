"""Index and retriever factories: build components from a short spec string.

Index specs: ``"exact"`` (float32), ``"exact:float16"``, and ``"faiss:<factory string>"``
for any FAISS index-factory string (``"faiss:HNSW32"``, ``"faiss:IVF256,PQ16"``).
"""

from __future__ import annotations

from typing import Any

from vistrieve.registry import Registry
from vistrieve.types import Index

INDEXES: Registry[Index] = Registry("index")


@INDEXES.register("exact")
def _exact(dim: int, model: str | None = None, dtype: str = "float32", **kw: Any) -> Index:
    """Exact search: blocked torch matmul + top-k (float32 or float16 storage)."""
    from vistrieve.retrievers.index import ExactIndex

    return ExactIndex(dim, model=model, dtype=dtype, **kw)  # type: ignore[arg-type]


@INDEXES.register("faiss")
def _faiss(dim: int, model: str | None = None, factory: str = "HNSW32", **kw: Any) -> Index:
    """Any FAISS index-factory string (IVF, HNSW, PQ ...), trained on first add if needed."""
    from vistrieve.retrievers.index import FaissIndex

    return FaissIndex(dim, factory, model=model, **kw)


def create_index(spec: str | Index, dim: int, *, model: str | None = None, **kw: Any) -> Index:
    """Build an empty index from a spec, or check and pass a ready index through.

    Args:
        spec: ``"exact"``, ``"exact:float16"``, ``"faiss:<factory>"``, or an index.
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
    if kind == "exact":
        if arg and arg not in ("float32", "float16"):
            raise ValueError(f"exact index dtype must be float32 or float16, got {arg!r}")
        return INDEXES.create("exact", dim=dim, model=model, dtype=arg or "float32", **kw)
    if kind == "faiss":
        if not arg:
            raise ValueError("faiss index spec needs a factory string, e.g. 'faiss:HNSW32'")
        return INDEXES.create("faiss", dim=dim, model=model, factory=arg, **kw)
    return INDEXES.create(kind, dim=dim, model=model, **kw)
