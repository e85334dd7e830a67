"""RetrievalPipeline: rewrite -> retrieve -> rerank, itself a retriever.

The pipeline composes an optional query rewriter, a first-stage retriever and any number of
rerankers, each with its own candidate depth. Every hit that leaves the pipeline carries
the score of every stage it went through in ``Hit.scores`` (the first stage's under its
name, each reranker's under its stage name) and its final score in ``Hit.score``, so a
ranking can always be audited. Because the pipeline answers ``retrieve(queries, k)``, the
evaluation runner, the CLI and the demo take it exactly as they take a retriever, and its
``stages()`` expose every component's cost counters to the runner.

Fusion of a reranker's score with the ranking it received:

* ``"replace"``: the reranker's score is the final score (LAVIS ranks by ITM(+ITC) alone
  inside the top-k).
* ``"weighted"``: ``w * reranker + (1 - w) * previous``, both min-max normalised per query
  so that scores on different scales can be mixed.
* ``"rrf"``: reciprocal-rank fusion of the two rankings, ``1 / (60 + rank)`` summed.

Expansions of one query by the rewriter are merged before reranking: each candidate keeps
its best first-stage score over the expansions (``"max"``) or the RRF of its ranks
(``"rrf"``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vistrieve.types import Hit, Query, QueryRewriter, Reranker, Retriever

logger = logging.getLogger(__name__)

Fusion = Literal["replace", "weighted", "rrf"]
RRF_K = 60


@dataclass(frozen=True)
class RerankStage:
    """One reranking stage.

    Args:
        reranker: The reranker.
        k: How many of the incoming candidates it re-scores (the rest are dropped).
        name: Key of its score in ``Hit.scores`` (default: the reranker's ``name``
            attribute, else its class name).
        fusion: How its score combines with the incoming ranking (see module docs).
        weight: The reranker's weight for ``"weighted"`` fusion, in [0, 1].
    """

    reranker: Reranker
    k: int = 128
    name: str | None = None
    fusion: Fusion = "replace"
    weight: float = 0.5

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError(f"rerank depth k must be positive, got {self.k}")
        if self.fusion not in ("replace", "weighted", "rrf"):
            raise ValueError(f"fusion must be 'replace', 'weighted' or 'rrf', got {self.fusion!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")

    @property
    def label(self) -> str:
        """The stage's key in ``Hit.scores``."""
        return self.name or str(getattr(self.reranker, "name", type(self.reranker).__name__))


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _fuse(previous: Sequence[Hit], reranked: Sequence[Hit], stage: RerankStage) -> list[Hit]:
    """Combine a reranker's output with the ranking it was given; best first."""
    if stage.fusion == "replace":
        fused = {h.id: h.score for h in reranked}
    else:
        prev_rank = {h.id: r for r, h in enumerate(previous)}
        new_rank = {h.id: r for r, h in enumerate(reranked)}
        if stage.fusion == "rrf":
            fused = {
                h.id: 1 / (RRF_K + prev_rank[h.id] + 1) + 1 / (RRF_K + new_rank[h.id] + 1)
                for h in reranked
            }
        else:
            prev_by_id = {h.id: h.score for h in previous}
            ids = [h.id for h in reranked]
            new = _minmax(np.array([h.score for h in reranked], dtype=np.float64))
            old = _minmax(np.array([prev_by_id[i] for i in ids], dtype=np.float64))
            mixed = stage.weight * new + (1 - stage.weight) * old
            fused = dict(zip(ids, mixed.tolist(), strict=True))
    out = [
        Hit(h.id, float(fused[h.id]), scores=dict(h.scores), metadata=dict(h.metadata))
        for h in reranked
    ]
    # Stable: equal fused scores keep the reranker's order.
    out.sort(key=lambda h: -h.score)
    return out


def _size_of(retriever: Any) -> int | None:
    """How many items a first stage can return, when it says (its corpus or identifiers)."""
    for attr in ("corpus", "identifiers"):
        owner = getattr(retriever, attr, None)
        if owner is not None:
            try:
                return len(owner)
            except TypeError:
                return None
    return None


class RetrievalPipeline:
    """Rewriter -> first-stage retriever -> rerankers; a retriever itself.

    Args:
        retriever: The first stage.
        rerankers: Rerankers in order, each a :class:`RerankStage` or a bare reranker
            (wrapped with the defaults: k = 128, ``"replace"`` fusion).
        rewriter: Optional query rewriter (1 -> n expansions per query).
        k_retrieve: Candidates taken from the first stage (per expansion).
        merge: How expansions of one query are merged (``"max"`` or ``"rrf"``).
        name: The pipeline's name (for reports).

    Example:
        >>> pipe = RetrievalPipeline(dense, [RerankStage(qformer, k=64)])  # doctest: +SKIP
        >>> hits = pipe.retrieve([Query(text="a red circle and a blue square")], k=10)
        >>> hits[0][0].scores  # {'dense': 0.31, 'qformer': 4.2}  # doctest: +SKIP
    """

    def __init__(
        self,
        retriever: Retriever,
        rerankers: Sequence[RerankStage | Reranker] = (),
        *,
        rewriter: QueryRewriter | None = None,
        k_retrieve: int = 128,
        merge: Literal["max", "rrf"] = "max",
        name: str = "pipeline",
    ) -> None:
        if k_retrieve <= 0:
            raise ValueError(f"k_retrieve must be positive, got {k_retrieve}")
        if merge not in ("max", "rrf"):
            raise ValueError(f"merge must be 'max' or 'rrf', got {merge!r}")
        self.retriever = retriever
        self.stages_: list[RerankStage] = [
            s if isinstance(s, RerankStage) else RerankStage(s) for s in rerankers
        ]
        labels = [s.label for s in self.stages_]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rerank stage names must be unique, got {labels}; pass name=")
        self.rewriter = rewriter
        self.k_retrieve = k_retrieve
        self.merge = merge
        self.name = name
        self.spec: dict[str, Any] | None = None
        self.parts: Any = None
        """What :meth:`from_spec` built beside the stages (LLM, questioner, feedback loop)."""
        self.last_timings: dict[str, float] = {}
        """Wall seconds of each stage in the last :meth:`retrieve` call, by stage label."""

    @classmethod
    def from_spec(
        cls, source: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any
    ) -> RetrievalPipeline:
        """Build a pipeline from a spec file (TOML or JSON) or a spec mapping.

        Relative paths in a file are relative to the file's folder. ``overrides`` are
        encoder runtime options for the first stage (``device``, ``batch_size``).

        Raises:
            SpecError: the spec is malformed (the message names the bad key).
        """
        from vistrieve.pipeline.spec import build_parts

        parts = build_parts(source, **overrides)
        pipe = cls(
            parts.retriever,
            [RerankStage(r, **opts) for r, opts in parts.rerankers],
            rewriter=parts.rewriter,
            k_retrieve=parts.k_retrieve,
            name=parts.name,
        )
        pipe.spec = parts.spec
        pipe.parts = parts
        return pipe

    def to_spec(self) -> dict[str, Any]:
        """The normalised spec this pipeline was built from (paths absolute); writing it out
        and building from it again gives the same pipeline.

        Raises:
            ValueError: the pipeline was assembled by hand, not from a spec.
        """
        if self.spec is None:
            raise ValueError(
                "this pipeline was assembled in Python; build it with "
                "RetrievalPipeline.from_spec to get a spec"
            )
        import copy

        return copy.deepcopy(self.spec)

    def stages(self) -> list[tuple[str, Any]]:
        """(label, component) of every stage, for cost accounting."""
        out: list[tuple[str, Any]] = []
        if self.rewriter is not None:
            out.append(("rewriter", self.rewriter))
        out.append((str(getattr(self.retriever, "name", "retriever")), self.retriever))
        out.extend((s.label, s.reranker) for s in self.stages_)
        return out

    def _first_stage(self, queries: Sequence[Query], **kw: Any) -> list[list[Hit]]:
        if self.rewriter is None:
            return self.retriever.retrieve(queries, k=self._depth(), **kw)
        expansions = self.rewriter.rewrite(queries)
        if len(expansions) != len(queries):
            raise ValueError(
                f"rewriter returned {len(expansions)} expansion lists for {len(queries)} queries"
            )
        flat = [q for exp in expansions for q in exp]
        if any(not exp for exp in expansions):
            raise ValueError("rewriter returned no query for some input; return the query itself")
        hits = self.retriever.retrieve(flat, k=self._depth(), **kw)
        merged: list[list[Hit]] = []
        pos = 0
        for exp in expansions:
            lists = hits[pos : pos + len(exp)]
            pos += len(exp)
            merged.append(self._merge(lists))
        return merged

    def _depth(self) -> int:
        """First-stage depth, never more than the first stage holds (no huge buffers)."""
        size = _size_of(self.retriever)
        return self.k_retrieve if size is None else max(1, min(self.k_retrieve, size))

    def _merge(self, lists: Sequence[Sequence[Hit]]) -> list[Hit]:
        if len(lists) == 1:
            return list(lists[0])
        best: dict[str, Hit] = {}
        fused: dict[str, float] = {}
        for ranked in lists:
            for r, h in enumerate(ranked):
                if self.merge == "rrf":
                    fused[h.id] = fused.get(h.id, 0.0) + 1 / (RRF_K + r + 1)
                    best.setdefault(h.id, h)
                elif h.id not in best or h.score > best[h.id].score:
                    best[h.id] = h
                    fused[h.id] = h.score
        out = [
            Hit(i, fused[i], scores=dict(best[i].scores), metadata=dict(best[i].metadata))
            for i in best
        ]
        out.sort(key=lambda h: -h.score)
        return out[: self.k_retrieve]

    def retrieve(self, queries: Sequence[Query], k: int = 10, **kw: Any) -> list[list[Hit]]:
        """Top-``k`` hits per query after every stage; ``scores`` holds each stage's score.

        Extra keyword arguments (``target="text"``) go to the first-stage retriever.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if isinstance(queries, Query):
            raise TypeError("retrieve expects a sequence of queries; wrap a single one in a list")
        if not queries:
            return []
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        current = self._first_stage(queries, **kw)
        timings["first_stage"] = time.perf_counter() - t0
        for stage in self.stages_:
            t0 = time.perf_counter()
            candidates = [c[: stage.k] for c in current]
            nonempty = [i for i, c in enumerate(candidates) if c]
            reranked_all: list[list[Hit]] = [[] for _ in candidates]
            if nonempty:
                out = stage.reranker.rerank(
                    [queries[i] for i in nonempty], [candidates[i] for i in nonempty]
                )
                for i, ranked in zip(nonempty, out, strict=True):
                    got = {h.id for h in ranked}
                    sent = {h.id for h in candidates[i]}
                    if not got <= sent:
                        raise ValueError(
                            f"reranker {stage.label!r} returned ids it was not given: "
                            f"{sorted(got - sent)[:3]}"
                        )
                    labelled = [
                        h if stage.label in h.scores else h.with_stage(stage.label, h.score)
                        for h in ranked
                    ]
                    reranked_all[i] = _fuse(candidates[i], labelled, stage)
            current = reranked_all
            timings[stage.label] = time.perf_counter() - t0
        self.last_timings = timings
        return [
            [
                Hit(
                    h.id,
                    h.score,
                    scores=h.scores,
                    metadata={**h.metadata, "rank": r, "retriever": self.name},
                )
                for r, h in enumerate(ranked[:k])
            ]
            for ranked in current
        ]
