"""vistrieve: image-text retrieval where multimodal and LLMs augment a fast first stage.

The core types are imported eagerly (they are light); the heavier components load on first
access through a module ``__getattr__`` so that ``import vistrieve`` stays fast.

Example:
    >>> import vistrieve
    >>> enc = vistrieve.create_encoder("clip-tiny-test")
    >>> enc.dim
    32
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vistrieve.types import (
    Corpus as Corpus,
)
from vistrieve.types import (
    DialogTurn as DialogTurn,
)
from vistrieve.types import (
    Encoder as Encoder,
)
from vistrieve.types import (
    GenerativeRetriever as GenerativeRetriever,
)
from vistrieve.types import (
    Hit as Hit,
)
from vistrieve.types import (
    Index as Index,
)
from vistrieve.types import (
    Item as Item,
)
from vistrieve.types import (
    Query as Query,
)
from vistrieve.types import (
    QueryRewriter as QueryRewriter,
)
from vistrieve.types import (
    Reranker as Reranker,
)
from vistrieve.types import (
    Retriever as Retriever,
)

if TYPE_CHECKING:
    from vistrieve.data.shapes import ShapesWorld as ShapesWorld
    from vistrieve.encoders import create_encoder as create_encoder
    from vistrieve.indexes import ExactIndex as ExactIndex
    from vistrieve.indexes import FaissIndex as FaissIndex
    from vistrieve.indexes import create_index as create_index
    from vistrieve.indexes import load_index as load_index
    from vistrieve.llm import create_llm as create_llm
    from vistrieve.pipeline import RerankStage as RerankStage
    from vistrieve.pipeline import RetrievalPipeline as RetrievalPipeline
    from vistrieve.query_rewriting import create_rewriter as create_rewriter
    from vistrieve.rerankers import load_reranker as load_reranker
    from vistrieve.retrievers import load_retriever as load_retriever
    from vistrieve.retrievers.dense import DenseRetriever as DenseRetriever

__version__ = "0.1.0"

_LAZY = {
    "load_retriever": "vistrieve.retrievers",
    "load_reranker": "vistrieve.rerankers",
    "create_llm": "vistrieve.llm",
    "create_rewriter": "vistrieve.query_rewriting",
    "ShapesWorld": "vistrieve.data.shapes",
    "RetrievalPipeline": "vistrieve.pipeline",
    "RerankStage": "vistrieve.pipeline",
    "create_encoder": "vistrieve.encoders",
    "DenseRetriever": "vistrieve.retrievers.dense",
    "create_index": "vistrieve.indexes",
    "ExactIndex": "vistrieve.indexes",
    "FaissIndex": "vistrieve.indexes",
    "load_index": "vistrieve.indexes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vistrieve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Corpus",
    "DenseRetriever",
    "DialogTurn",
    "Encoder",
    "ExactIndex",
    "FaissIndex",
    "GenerativeRetriever",
    "Hit",
    "Index",
    "Item",
    "Query",
    "QueryRewriter",
    "RerankStage",
    "Reranker",
    "RetrievalPipeline",
    "Retriever",
    "ShapesWorld",
    "__version__",
    "create_encoder",
    "create_index",
    "create_llm",
    "create_rewriter",
    "load_index",
    "load_reranker",
    "load_retriever",
]
