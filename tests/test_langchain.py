"""LangChain adapters: the standard retriever test suite, query conventions, compressor."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from vistrieve.integrations.langchain import (  # noqa: E402
    VistrieveCompressor,
    VistrieveRetriever,
    parse_query,
)
from vistrieve.types import DialogTurn, Hit, Query  # noqa: E402


@functools.lru_cache(maxsize=1)
def _shapes() -> tuple[Any, Any]:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever

    corpus = ShapesWorld(seed=0, n_train=10, n_val=4, n_test=12).corpus("test")
    return DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus), corpus


class TestVistrieveRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' standard retriever suite against the adapter over a dense index."""

    @property
    def retriever_constructor(self) -> type[VistrieveRetriever]:
        return VistrieveRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        retriever, corpus = _shapes()
        return {"retriever": retriever, "corpus": corpus, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "a red circle and a blue square"


@functools.lru_cache(maxsize=1)
def _pipeline_spec() -> str:
    """A spec of the shapes index followed by the shipped Q-Former (written once)."""
    import tempfile

    retriever, _ = _shapes()
    root = Path(tempfile.mkdtemp(prefix="vistrieve-lc-"))
    retriever.save(root / "index")
    (root / "pipeline.toml").write_text(
        '[retriever]\npath = "index"\nk = 8\n\n[[rerank]]\nkind = "qformer"\nk = 8\n'
    )
    return str(root / "pipeline.toml")


class TestVistrieveRetrieverOnAPipeline(RetrieversIntegrationTests):
    """The same standard suite against a pipeline with a reranker, built from a spec."""

    @property
    def retriever_constructor(self) -> Any:
        return VistrieveRetriever.from_spec

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"spec": _pipeline_spec(), "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "a red circle and a blue square"


def test_a_spec_built_retriever_reports_both_stages() -> None:
    docs = VistrieveRetriever.from_spec(_pipeline_spec(), k=3).invoke("a red circle")
    assert len(docs) == 3
    assert set(docs[0].metadata["scores"]) == {"dense", "qformer"}
    assert docs[0].metadata["image"] is not None


def test_documents_carry_ids_scores_and_captions() -> None:
    retriever, corpus = _shapes()
    docs = VistrieveRetriever(retriever=retriever, corpus=corpus, k=3).invoke("a red circle")
    assert len(docs) == 3
    for d in docs:
        assert d.metadata["id"] in corpus and d.page_content in corpus[d.metadata["id"]].captions
        assert d.metadata["scores"]["dense"] == pytest.approx(d.metadata["score"])
    assert [d.metadata["score"] for d in docs] == sorted(
        (d.metadata["score"] for d in docs), reverse=True
    )


def test_query_convention() -> None:
    assert parse_query("a red circle") == Query(text="a red circle")
    assert parse_query("{not json") == Query(text="{not json")
    composed = parse_query(json.dumps({"image": "ref.png", "text": "make it blue"}))
    assert composed.kind == "composed" and composed.image == "ref.png"
    dialog = parse_query(json.dumps({"text": "something red", "dialog": [["how many?", "two"]]}))
    assert dialog.dialog == (DialogTurn("how many?", "two"),)
    assert parse_query(json.dumps({"image": "x.png"})).kind == "image"
    with pytest.raises(ValueError, match="unknown query fields"):
        parse_query(json.dumps({"txt": "typo"}))
    with pytest.raises(ValueError, match="pairs"):
        parse_query(json.dumps({"text": "x", "dialog": [["only a question"]]}))


def test_image_query_through_the_adapter(tmp_path: Any) -> None:
    retriever, corpus = _shapes()
    item = next(iter(corpus.values()))
    path = tmp_path / "q.png"
    item.image.save(path)
    docs = VistrieveRetriever(retriever=retriever, corpus=corpus, k=2).invoke(
        json.dumps({"image": str(path)})
    )
    assert docs[0].metadata["id"] == item.id


class _Reverse:
    name = "reverse"

    def rerank(
        self, queries: Sequence[Query], candidates: Sequence[Sequence[Hit]], top_k: Any = None
    ) -> list[list[Hit]]:
        out = []
        for cands in candidates:
            ranked = [h.with_stage(self.name, float(i)) for i, h in enumerate(cands)][::-1]
            out.append(ranked[:top_k] if top_k else ranked)
        return out


def test_reranker_as_a_document_compressor() -> None:
    docs = [Document(page_content=f"d{i}", metadata={"id": f"i{i}", "score": 1.0 - i / 10})
            for i in range(4)]  # fmt: skip
    out = VistrieveCompressor(reranker=_Reverse(), top_n=2).compress_documents(docs, "q")
    assert [d.metadata["id"] for d in out] == ["i3", "i2"]
    assert out[0].metadata["scores"]["reverse"] == 3.0 and out[0].page_content == "d3"
    assert VistrieveCompressor(reranker=_Reverse()).compress_documents([], "q") == []
    with pytest.raises(ValueError, match="metadata\\['id'\\]"):
        VistrieveCompressor(reranker=_Reverse()).compress_documents([Document("x")], "q")
