"""A small Q-Former cross-encoder reranker that trains on a CPU.

* :mod:`~vistrieve.rerankers.qformer.model`: the cross-encoder (ITM and captioning heads)
  and its compact text vocabulary;
* :mod:`~vistrieve.rerankers.qformer.features`: patch tokens, tokenizer and pair cosine of
  the dual encoder it reads;
* :mod:`~vistrieve.rerankers.qformer.reranker`: the reranker and its loader.

Training (hard-negative mining, listwise and captioning losses, the trainer) lives in
:mod:`vistrieve.training.qformer`.
"""

from __future__ import annotations

from vistrieve.rerankers.qformer.features import (
    PairSimilarity,
    clip_pair_similarity,
    clip_patch_tokens,
    patch_tokens,
    text_tokenizer,
    timm_patch_tokens,
)
from vistrieve.rerankers.qformer.model import QFormerConfig, QFormerCrossEncoder, TextVocabulary
from vistrieve.rerankers.qformer.reranker import (
    CONFIG_FILE,
    EMBEDDED,
    WEIGHTS_FILE,
    QFormerReranker,
    embedded_files,
    load_qformer_reranker,
    read_qformer_meta,
)

__all__ = [
    "CONFIG_FILE",
    "EMBEDDED",
    "WEIGHTS_FILE",
    "PairSimilarity",
    "QFormerConfig",
    "QFormerCrossEncoder",
    "QFormerReranker",
    "TextVocabulary",
    "clip_pair_similarity",
    "clip_patch_tokens",
    "embedded_files",
    "load_qformer_reranker",
    "patch_tokens",
    "read_qformer_meta",
    "text_tokenizer",
    "timm_patch_tokens",
]
