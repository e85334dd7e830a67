from __future__ import annotations

import pytest
from PIL import Image

from vistrieve.types import Corpus, DialogTurn, Hit, Item, Query


def test_query_kinds() -> None:
    img = Image.new("RGB", (4, 4))
    assert Query(text="a red circle").kind == "text"
    assert Query(image=img).kind == "image"
    composed = Query(text="make it green", image=img)
    assert composed.kind == "composed"
    assert composed.reference_image is img and composed.modification == "make it green"
    dialog = Query(text="a shape", dialog=(DialogTurn("what colour?", "red"),))
    assert dialog.kind == "dialog"
    assert Query(text="x").reference_image is None and Query(text="x").modification is None


def test_dialog_text_is_chatir_style() -> None:
    q = Query(
        text="a picture with two shapes",
        dialog=[
            DialogTurn("is there a star?", "no"),
            DialogTurn("what colour is the circle?", "red"),
        ],
    )
    assert isinstance(q.dialog, tuple)
    assert q.as_text(0) == "a picture with two shapes"
    assert q.as_text(1) == "a picture with two shapes, is there a star? no"
    assert q.as_text() == (
        "a picture with two shapes, is there a star? no, what colour is the circle? red"
    )
    with pytest.raises(ValueError, match="rounds"):
        q.as_text(-1)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_empty_query_rejected(text: str | None) -> None:
    with pytest.raises(ValueError, match="empty query"):
        Query(text=text)


def test_query_bad_inputs() -> None:
    with pytest.raises(TypeError):
        Query(text=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Query(text="a", dialog=(("q", "a"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dialog"):
        Query(text="a", image=Image.new("RGB", (2, 2)), dialog=(DialogTurn("q", "a"),))
    with pytest.raises(ValueError, match="no text"):
        Query(image=Image.new("RGB", (2, 2))).as_text()


def test_with_text_keeps_id_and_merges_metadata() -> None:
    q = Query(text="old", id="q1", metadata={"a": 1})
    r = q.with_text("new", rewriter="llm")
    assert (r.text, r.id, dict(r.metadata)) == ("new", "q1", {"a": 1, "rewriter": "llm"})
    assert q.text == "old"


def test_hit_with_stage_records_every_score() -> None:
    h = Hit("img1", 0.3, scores={"dense": 0.3}, metadata={"rank": 4})
    h2 = h.with_stage("rerank", 2.5, rank=0)
    assert h2.score == 2.5
    assert dict(h2.scores) == {"dense": 0.3, "rerank": 2.5}
    assert h2.metadata["rank"] == 0
    h3 = h2.with_stage("aux", 9.0, final=False)
    assert h3.score == 2.5 and h3.scores["aux"] == 9.0


def test_item_and_corpus() -> None:
    a = Item("a", image="x.jpg", captions=["c1", "c2"], labels=["red circle"])
    b = Item("b", captions=("c3",))
    assert a.captions == ("c1", "c2") and a.uri == "x.jpg" and b.uri is None
    corpus = Corpus([a, b])
    assert corpus.ids == ["a", "b"] and len(corpus) == 2 and "a" in corpus
    assert corpus.caption_pairs() == (["c1", "c2", "c3"], ["a", "a", "b"])
    assert corpus.subset(["b"]).ids == ["b"]
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        Corpus([a, a])
    with pytest.raises(KeyError, match="'zz' is not in the corpus"):
        corpus["zz"]
    with pytest.raises(TypeError, match="wrap it"):
        Item("c", captions="one string")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Item("")
