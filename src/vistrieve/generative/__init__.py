"""Generative retrieval (GRACE): a language model memorises the corpus and answers a query
by generating an image identifier under a trie of valid identifiers.

* :mod:`~vistrieve.generative.identifiers`: numeric, string, semantic, structured and atomic
  identifier schemes;
* :mod:`~vistrieve.generative.trie`: the prefix tree and ``prefix_allowed_tokens_fn``;
* :mod:`~vistrieve.generative.model`: :class:`GraceModel` (any transformers seq2seq or
  causal LM, images as projected prefix embeddings);
* :mod:`~vistrieve.generative.train`: "memorise" and "retrieve" training with resume;
* :mod:`~vistrieve.generative.retriever`: :class:`GraceRetriever`, a retriever.
"""

from __future__ import annotations

from vistrieve.generative.identifiers import (
    SCHEMES,
    IdentifierError,
    Identifiers,
    build_identifiers,
    extend_identifiers,
)
from vistrieve.generative.model import GraceModel, word_tokenizer
from vistrieve.generative.retriever import GraceRetriever
from vistrieve.generative.train import GraceTrainConfig, train_grace
from vistrieve.generative.trie import Trie

__all__ = [
    "SCHEMES",
    "GraceModel",
    "GraceRetriever",
    "GraceTrainConfig",
    "IdentifierError",
    "Identifiers",
    "Trie",
    "build_identifiers",
    "extend_identifiers",
    "train_grace",
    "word_tokenizer",
]
