"""First-stage retrievers and the registry that reopens any saved one.

Every saved retriever directory records its ``kind`` in ``retriever.json``;
:func:`load_retriever` dispatches on it through :data:`RETRIEVERS`, so the CLI, the service
and the evaluation runner open a dense, hash or GRACE retriever alike:

>>> r = load_retriever("runs/shapes-index")  # doctest: +SKIP
>>> r.retrieve([Query(text="a red circle")], k=5)  # doctest: +SKIP

To add a first stage, subclass :class:`~vistrieve.retrievers.base.IndexedRetriever` (or
write any class with ``retrieve``/``save``/``load``) and register its class under the kind
its ``save`` writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vistrieve.registry import Registry
from vistrieve.retrievers.base import (
    RETRIEVER_FILE,
    BuildReport,
    IndexedRetriever,
    read_retriever_meta,
)
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.retrievers.hashing import HashRetriever
from vistrieve.types import Retriever

RETRIEVERS: Registry[Retriever] = Registry("retriever")
"""Retriever kind -> ``load(directory, **overrides)`` of that kind."""


@RETRIEVERS.register("dense")
def _load_dense(directory: str | os.PathLike[str], **overrides: Any) -> Retriever:
    """A dual encoder over a vector index (exact or FAISS)."""
    return DenseRetriever.load(directory, **overrides)


@RETRIEVERS.register("hash")
def _load_hash(directory: str | os.PathLike[str], **overrides: Any) -> Retriever:
    """CMSEH binary codes in a Hamming index, optionally re-scored with float vectors."""
    return HashRetriever.load(directory, **overrides)


@RETRIEVERS.register("grace")
def _load_grace(directory: str | os.PathLike[str], **overrides: Any) -> Retriever:
    """GRACE generative retrieval: a language model decodes image identifiers."""
    from vistrieve.encoders import create_encoder
    from vistrieve.generative.retriever import GraceRetriever

    meta_file = Path(directory) / RETRIEVER_FILE
    meta = read_retriever_meta(directory) if meta_file.is_file() else {}
    runtime = {k: overrides.pop(k) for k in ("device", "batch_size") if k in overrides}
    encoder = overrides.pop("encoder", None)
    if encoder is None and meta.get("encoder"):
        encoder = create_encoder(meta["encoder"], **runtime)
    overrides.setdefault("num_beams", meta.get("num_beams", 10))
    return GraceRetriever.load(directory, encoder=encoder, **overrides)


def retriever_kind(directory: str | os.PathLike[str]) -> str:
    """The kind of retriever saved in ``directory`` (``dense``, ``hash``, ``grace`` ...).

    Raises:
        FileNotFoundError: ``directory`` holds no saved retriever.
    """
    root = Path(directory)
    if (root / RETRIEVER_FILE).is_file():
        return str(read_retriever_meta(root).get("kind", "dense"))
    from vistrieve.generative.model import MODEL_CONFIG

    if (root / MODEL_CONFIG).is_file():
        return "grace"  # saved before GRACE directories recorded their kind
    if not root.exists():
        raise FileNotFoundError(f"retriever directory not found: {root}")
    raise FileNotFoundError(
        f"{root} is not a vistrieve retriever directory (no {RETRIEVER_FILE}); build one with "
        "`vistrieve index`"
    )


def load_retriever(directory: str | os.PathLike[str], **overrides: Any) -> Retriever:
    """Reopen any saved retriever by the kind its directory records.

    Args:
        directory: A directory written by a retriever's ``save`` (``vistrieve index``,
            ``vistrieve train grace`` ...).
        **overrides: Passed to the kind's loader: encoder runtime options (``device``,
            ``batch_size``), a ready ``encoder``, ``num_beams`` for GRACE ...

    Raises:
        FileNotFoundError: not a saved retriever.
        KeyError: a kind no loader is registered for.
    """
    kind = retriever_kind(directory)
    return RETRIEVERS.create(kind, directory=directory, **overrides)


__all__ = [
    "RETRIEVERS",
    "RETRIEVER_FILE",
    "BuildReport",
    "DenseRetriever",
    "HashRetriever",
    "IndexedRetriever",
    "load_retriever",
    "read_retriever_meta",
    "retriever_kind",
]
