"""Composed-retrieval baselines shared by the CIReVL experiments (shapes world, real photos)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.types import Hit, Query


class DropModality:
    """Keeps only the image or only the text of composed queries (the unimodal baselines)."""

    def __init__(self, inner: DenseRetriever, keep: str) -> None:
        self.inner, self.keep, self.name = inner, keep, f"{keep}-only"

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
        qs = [Query(image=q.image) if self.keep == "image" else Query(text=q.text) for q in queries]
        return self.inner.retrieve(qs, k=k)


class CaptionPlusModification:
    """Caption of the reference + the modification, no LLM (the caption baseline)."""

    def __init__(self, captioner: Any) -> None:
        self.captioner = captioner

    def rewrite(self, queries: Sequence[Query]) -> list[list[Query]]:
        caps = self.captioner.caption([q.image for q in queries])
        return [[Query(text=f"{c}, {q.text}", id=q.id)] for c, q in zip(caps, queries, strict=True)]

    def cost(self) -> dict[str, float]:
        """The captioner's counters, when it keeps any."""
        cost = getattr(self.captioner, "cost", None)
        return dict(cost()) if cost is not None else {}
