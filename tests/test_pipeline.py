from __future__ import annotations

from collections.abc import Sequence

import pytest

from vistrieve.evals.runner import RetrievalEvaluator, evaluate
from vistrieve.pipeline import RerankStage, RetrievalPipeline
from vistrieve.types import Corpus, Hit, Item, Query, Retriever

ITEMS = {f"i{n}": float(n) for n in range(10)}  # first-stage score of each item


class Fixed:
    """First stage: ranks i9 > i8 > ... > i0 for every query, recording the queries."""

    name = "dense"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
        self.seen.extend(q.text or "" for q in queries)
        ranked = sorted(ITEMS, key=lambda i: -ITEMS[i])[:k]
        if any(q.text == "shifted" for q in queries):
            ranked = ranked[1:] + ranked[:1]
        return [
            [
                Hit(i, ITEMS[i], scores={"dense": ITEMS[i]}, metadata={"rank": r})
                for r, i in enumerate(ranked)
            ]
            for _ in queries
        ]


class Reverse:
    """Reranker preferring low item numbers; counts the pairs it scores."""

    name = "reverse"

    def __init__(self) -> None:
        self.pairs = 0
        self.sizes: list[int] = []

    def cost(self) -> dict[str, float]:
        return {"pairs_evaluated": float(self.pairs)}

    def rerank(
        self,
        queries: Sequence[Query],
        candidates: Sequence[Sequence[Hit]],
        top_k: int | None = None,
    ) -> list[list[Hit]]:
        out = []
        for cands in candidates:
            self.pairs += len(cands)
            self.sizes.append(len(cands))
            scored = [h.with_stage(self.name, 100.0 - ITEMS[h.id]) for h in cands]
            out.append(sorted(scored, key=lambda h: -h.score))
        return out


class Expand:
    name = "expand"

    def rewrite(self, queries: Sequence[Query]) -> list[list[Query]]:
        return [[q, q.with_text("shifted")] for q in queries]


def test_retrieve_only_and_is_a_retriever() -> None:
    pipe = RetrievalPipeline(Fixed(), k_retrieve=5)
    assert isinstance(pipe, Retriever)
    hits = pipe.retrieve([Query(text="x")], k=3)[0]
    assert [h.id for h in hits] == ["i9", "i8", "i7"]
    assert [h.metadata["rank"] for h in hits] == [0, 1, 2]


def test_rerank_depth_scores_and_replace_fusion() -> None:
    rr = Reverse()
    pipe = RetrievalPipeline(Fixed(), [RerankStage(rr, k=4)], k_retrieve=8)
    hits = pipe.retrieve([Query(text="x"), Query(text="y")], k=3)
    assert rr.sizes == [4, 4]
    # Top 4 of the first stage are i9..i6; the reranker prefers low numbers.
    assert [h.id for h in hits[0]] == ["i6", "i7", "i8"]
    top = hits[0][0]
    assert top.scores == {"dense": 6.0, "reverse": 94.0} and top.score == 94.0


def test_weighted_and_rrf_fusion() -> None:
    # weighted, w = 0.5: normalised first-stage (i9=1 ... i6=0) and reverse (i6=1 ... i9=0)
    # tie at 0.5 for all: the reranker's order is kept.
    pipe = RetrievalPipeline(Fixed(), [RerankStage(Reverse(), k=4, fusion="weighted", weight=0.5)])
    hits = pipe.retrieve([Query(text="x")], k=4)[0]
    assert [h.id for h in hits] == ["i6", "i7", "i8", "i9"]
    assert all(h.score == pytest.approx(0.5) for h in hits)
    # w = 0.8 leans to the reranker: i6 gets 0.8, i9 gets 0.2.
    pipe = RetrievalPipeline(Fixed(), [RerankStage(Reverse(), k=4, fusion="weighted", weight=0.8)])
    hits = pipe.retrieve([Query(text="x")], k=4)[0]
    assert hits[0].id == "i6" and hits[0].score == pytest.approx(0.8)
    assert hits[-1].id == "i9" and hits[-1].score == pytest.approx(0.2)
    # rrf: i9 first-stage rank 0, rerank rank 3 -> 1/61 + 1/64; i6: 1/64 + 1/61: equal again.
    pipe = RetrievalPipeline(Fixed(), [RerankStage(Reverse(), k=4, fusion="rrf")])
    hits = pipe.retrieve([Query(text="x")], k=4)[0]
    assert hits[0].score == pytest.approx(1 / 61 + 1 / 64)


def test_rewriter_expansions_are_merged() -> None:
    first = Fixed()
    pipe = RetrievalPipeline(first, rewriter=Expand(), k_retrieve=3)
    hits = pipe.retrieve([Query(text="q")], k=5)[0]
    assert first.seen == ["q", "shifted"]
    # "q" gives i9, i8, i7; "shifted" gives i8, i7, i9 -> union keeps best score per id.
    assert [h.id for h in hits] == ["i9", "i8", "i7"]
    rrf = RetrievalPipeline(Fixed(), rewriter=Expand(), k_retrieve=3, merge="rrf")
    ids = [h.id for h in rrf.retrieve([Query(text="q")], k=3)[0]]
    # i8: ranks 1 and 0 -> 1/62 + 1/61 is the best fused score.
    assert ids[0] == "i8"


def test_cost_through_the_runner() -> None:
    rr = Reverse()
    corpus = Corpus([Item(i, captions=(f"caption {i}",)) for i in ITEMS])
    pipe = RetrievalPipeline(Fixed(), [RerankStage(rr, k=5)], k_retrieve=10)
    report = evaluate({"pipe": pipe}, [RetrievalEvaluator(corpus, ks=(1,))])
    assert report.methods["pipe"].cost["reverse.pairs_evaluated"] == 10 * 5
    assert ("reverse", rr) in pipe.stages()


def test_bad_input() -> None:
    class Liar(Reverse):
        def rerank(self, queries, candidates, top_k=None):  # type: ignore[no-untyped-def]
            return [[Hit("zzz", 1.0)] for _ in candidates]

    with pytest.raises(ValueError, match="ids it was not given"):
        RetrievalPipeline(Fixed(), [Liar()]).retrieve([Query(text="x")])
    with pytest.raises(ValueError, match="k must be positive"):
        RetrievalPipeline(Fixed()).retrieve([Query(text="x")], k=0)
    with pytest.raises(ValueError, match="unique"):
        RetrievalPipeline(Fixed(), [Reverse(), Reverse()])
    with pytest.raises(ValueError, match="fusion"):
        RerankStage(Reverse(), fusion="max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap"):
        RetrievalPipeline(Fixed()).retrieve(Query(text="x"))  # type: ignore[arg-type]
    assert RetrievalPipeline(Fixed()).retrieve([]) == []


def test_k_larger_than_the_corpus_reranks_everything_there_is() -> None:
    rr = Reverse()
    pipe = RetrievalPipeline(Fixed(), [RerankStage(rr, k=500)], k_retrieve=1000)
    hits = pipe.retrieve([Query(text="x")], k=50)[0]
    assert rr.sizes == [len(ITEMS)]  # all ten items, no padding, no error
    assert [h.id for h in hits] == [f"i{n}" for n in range(10)]
    assert [h.metadata["rank"] for h in hits] == list(range(10))
