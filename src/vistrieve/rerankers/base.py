"""The shared base of rerankers: validation, scoring hook, regrouping and sorting.

Every reranker receives queries and, per query, the candidate hits of an earlier stage; it
returns the same candidates re-scored, best first, each carrying its new score under the
reranker's ``name`` in ``Hit.scores`` (and score components, such as BLIP-2's ITM and ITC
terms, under ``"{name}.{component}"``). :class:`BaseReranker` does all of that around one
hook, :meth:`BaseReranker._score_lists` (one score array per candidate list).
:class:`PairwiseReranker` narrows the hook to :meth:`PairwiseReranker.score_pairs` over
aligned (query text, image id) pairs, so a new cross-encoder implements only its scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from vistrieve.types import Hit, Item, Query

Scores = np.ndarray | Mapping[str, np.ndarray]
"""Scores of candidates: an array, or components by name with the final one under ``score``."""


def _as_array(x: Any) -> np.ndarray:
    detach = getattr(x, "detach", None)
    if callable(detach):  # a torch tensor
        x = detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _components(scores: Scores) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if isinstance(scores, Mapping):
        if "score" not in scores:
            raise ValueError(f"score components {sorted(scores)} lack the final 'score'")
        extra = {k: _as_array(v) for k, v in scores.items() if k != "score"}
        return _as_array(scores["score"]), extra
    return _as_array(scores), {}


class BaseReranker:
    """Validation, regrouping and sorting around one scoring hook.

    Subclasses set ``name`` and ``corpus`` and implement :meth:`_score_lists`; with
    :attr:`needs_text` true (the default) an image-only query is refused before scoring.
    """

    name: str = "reranker"
    corpus: Mapping[str, Item]
    needs_text: ClassVar[bool] = True
    record_components: bool = True

    def _score_lists(
        self, queries: Sequence[Query], candidates: Sequence[Sequence[Hit]]
    ) -> list[Scores]:
        """Scores of each query's candidates, aligned with them (one entry per query)."""
        raise NotImplementedError

    def check_candidates(self, ids: Sequence[str]) -> None:
        """Refuse candidate ids that are not in the reranker's corpus.

        Raises:
            KeyError: the first missing ids are named.
        """
        missing = [i for i in ids if i not in self.corpus]
        if missing:
            raise KeyError(f"candidate ids not in the reranker's corpus: {missing[:5]}")

    def rerank(
        self,
        queries: Sequence[Query],
        candidates: Sequence[Sequence[Hit]],
        top_k: int | None = None,
    ) -> list[list[Hit]]:
        """Re-score each query's candidates; returns them best first (``top_k`` kept).

        Equal scores keep the incoming order. An empty candidate list gives an empty result.

        Raises:
            TypeError: a single query instead of a sequence.
            ValueError: different numbers of queries and candidate lists, or an image-only
                query for a reranker that reads query text.
            KeyError: a candidate id missing from the corpus.
        """
        if isinstance(queries, Query):
            raise TypeError("rerank expects a sequence of queries; wrap a single one in a list")
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        if self.needs_text:
            for qi, q in enumerate(queries):
                if q.kind == "image":
                    raise ValueError(
                        f"{type(self).__name__} scores query text; query {qi} is image-only"
                    )
        scored = self._score_lists(queries, candidates)
        if len(scored) != len(candidates):
            raise ValueError(f"scoring returned {len(scored)} lists for {len(candidates)}")
        out: list[list[Hit]] = []
        for cands, scores in zip(candidates, scored, strict=True):
            final, extra = _components(scores)
            if len(final) != len(cands):
                raise ValueError(f"{len(final)} scores for {len(cands)} candidates")
            ranked = []
            for j, h in enumerate(cands):
                hit = h.with_stage(self.name, float(final[j]))
                if self.record_components:
                    for comp, vals in extra.items():
                        hit = hit.with_stage(f"{self.name}.{comp}", float(vals[j]), final=False)
                ranked.append(hit)
            ranked.sort(key=lambda h: -h.score)  # stable: ties keep the incoming order
            out.append(ranked[:top_k] if top_k is not None else ranked)
        return out


class PairwiseReranker(BaseReranker):
    """A reranker that scores each (query text, candidate image) pair independently.

    Implement :meth:`score_pairs`; candidates of all queries are scored in one call, so a
    batched cross-encoder sees every pair at once.
    """

    def score_pairs(self, texts: Sequence[str], image_ids: Sequence[str]) -> Any:
        """Scores of aligned (text, image id) pairs: an array or tensor, or components by
        name with the final score under ``"score"``."""
        raise NotImplementedError

    def _score_lists(
        self, queries: Sequence[Query], candidates: Sequence[Sequence[Hit]]
    ) -> list[Scores]:
        texts: list[str] = []
        ids: list[str] = []
        for q, cands in zip(queries, candidates, strict=True):
            texts.extend([q.as_text()] * len(cands))
            ids.extend(h.id for h in cands)
        if not ids:
            return [np.zeros(0) for _ in candidates]
        final, extra = _components(self.score_pairs(texts, ids))
        out: list[Scores] = []
        pos = 0
        for cands in candidates:
            n = len(cands)
            part = {k: v[pos : pos + n] for k, v in extra.items()}
            out.append({"score": final[pos : pos + n], **part} if part else final[pos : pos + n])
            pos += n
        return out


__all__ = ["BaseReranker", "PairwiseReranker", "Scores"]
