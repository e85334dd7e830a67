"""Evaluation: dataset loaders, metrics (pure numpy), evaluators, the runner and reports.

Example:
    >>> from vistrieve.evals import recall_at_k
    >>> float(recall_at_k([0, 3, 12], 5))
    0.6666666666666666
"""

from __future__ import annotations

from vistrieve.evals.datasets import (
    DatasetFormatError,
    load_captions_csv,
    load_chatir_dialogs,
    load_circo,
    load_cirr,
    load_coco_captions,
    load_fashioniq,
    load_flickr8k,
    load_karpathy,
    load_paired_embeddings,
    load_wiki_xmodal,
    split_by_image,
)
from vistrieve.evals.metrics import (
    ABSENT_RANK,
    cir_map_at_k,
    cir_recall_at_k,
    cir_recall_subset_at_k,
    cumulative_hits_at_k,
    image_text_retrieval_metrics,
    mean_average_precision,
    mrr,
    recall_at_k,
    target_rank,
)
from vistrieve.evals.report import EvalReport, MethodResult, publish_table
from vistrieve.evals.runner import (
    BaseEvaluator,
    ComposedEvaluator,
    DialogEvaluator,
    RetrievalEvaluator,
    evaluate,
    evaluate_embeddings,
)

__all__ = [
    "ABSENT_RANK",
    "BaseEvaluator",
    "ComposedEvaluator",
    "DatasetFormatError",
    "DialogEvaluator",
    "EvalReport",
    "MethodResult",
    "RetrievalEvaluator",
    "cir_map_at_k",
    "cir_recall_at_k",
    "cir_recall_subset_at_k",
    "cumulative_hits_at_k",
    "evaluate",
    "evaluate_embeddings",
    "image_text_retrieval_metrics",
    "load_chatir_dialogs",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_captions_csv",
    "load_coco_captions",
    "load_flickr8k",
    "load_karpathy",
    "load_paired_embeddings",
    "load_wiki_xmodal",
    "mean_average_precision",
    "mrr",
    "publish_table",
    "recall_at_k",
    "split_by_image",
    "target_rank",
]
