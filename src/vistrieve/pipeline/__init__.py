"""The retrieval pipeline: rewrite -> first stage -> rerank, itself a retriever, and the spec
file that builds one (:func:`~vistrieve.pipeline.spec.load_spec`).

Example:
    >>> pipe = RetrievalPipeline.from_spec("pipeline.toml")  # doctest: +SKIP
    >>> pipe.retrieve([Query(text="a dog on the grass")], k=10)  # doctest: +SKIP
"""

from __future__ import annotations

from vistrieve.pipeline.core import RRF_K, Fusion, RerankStage, RetrievalPipeline

__all__ = ["RRF_K", "Fusion", "RerankStage", "RetrievalPipeline"]
