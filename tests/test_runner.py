from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistrieve.cli import main
from vistrieve.data.tasks import ComposedDataset, ComposedExample, DialogDataset, DialogExample
from vistrieve.evals.report import EvalReport
from vistrieve.evals.runner import (
    ComposedEvaluator,
    DialogEvaluator,
    RetrievalEvaluator,
    evaluate,
)
from vistrieve.types import Corpus, DialogTurn, Hit, Item, Query

WORDS = ["red", "green", "blue", "circle", "square", "star"]


class KeywordRetriever:
    """Scores items by keyword overlap between the query text and the item's first caption.

    Images are given as 1x1 PIL images whose id is stored in ``info``; an image query
    scores captions by the overlap with the image item's caption.
    """

    name = "keyword"

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.calls = 0
        self.pairs = 0

    def _vec(self, text: str) -> np.ndarray:
        return np.array([w in text.split() for w in WORDS], dtype=float)

    def cost(self) -> dict[str, float]:
        return {"pairs_evaluated": float(self.pairs)}

    def retrieve(
        self, queries: Sequence[Query], k: int = 10, *, target: str = "image"
    ) -> list[list[Hit]]:
        self.calls += 1
        out = []
        for q in queries:
            text = q.as_text() if q.kind != "image" else self.corpus[q.image.info["id"]].captions[0]
            if q.kind == "composed":
                text = q.text or ""
            v = self._vec(text)
            if target == "image":
                cands = [
                    (float(self._vec(it.captions[0]) @ v), it.id, it.id)
                    for it in self.corpus.values()
                ]
            else:
                cands = [
                    (float(self._vec(c) @ v), f"{it.id}#{j}", it.id)
                    for it in self.corpus.values()
                    for j, c in enumerate(it.captions)
                ]
            self.pairs += len(cands)
            cands.sort(key=lambda c: (-c[0], c[1]))
            out.append([Hit(h, s, metadata={"item_id": i}) for s, h, i in cands[:k]])
        return out


def _img(item_id: str) -> Image.Image:
    im = Image.new("RGB", (1, 1))
    im.info["id"] = item_id
    return im


CORPUS = Corpus(
    [
        Item("a", image=_img("a"), captions=("red circle", "circle red")),
        Item("b", image=_img("b"), captions=("blue square", "square")),
        Item("c", image=_img("c"), captions=("green star", "red star")),
    ]
)


def test_retrieval_evaluator_hand_computed() -> None:
    r = KeywordRetriever(CORPUS)
    m = RetrievalEvaluator(CORPUS, name="toy", ks=(1, 2))(r)
    # text->image: "red circle" -> a (2) first: hit; "circle red" hit; "blue square" hit;
    # "square" hit; "green star" -> c hit; "red star": a and c both score 1, tie -> a first
    # (id order) -> miss at 1, hit at 2.  R@1 = 5/6, R@2 = 1.
    assert m["toy_text_to_image_R@1"] == pytest.approx(5 / 6)
    assert m["toy_text_to_image_R@2"] == pytest.approx(1.0)
    assert m["toy_text_to_image_MRR@2"] == pytest.approx((5 + 0.5) / 6)
    # image->text: each image's own first caption scores highest -> all hits at 1.
    assert m["toy_image_to_text_R@1"] == pytest.approx(1.0)
    assert RetrievalEvaluator(CORPUS, name="toy").primary_metric == "toy_text_to_image_R@1"


def test_composed_evaluator_drops_reference() -> None:
    # "red star" ties a ("red circle") and c ("green star"); a ranks first by id. a is the
    # reference of e1, so it is dropped there and c counts at rank 1.
    examples = [
        ComposedExample("e0", "b", "red circle", ("a",)),
        ComposedExample("e1", "a", "red star", ("c",)),
    ]
    m = ComposedEvaluator(ComposedDataset(CORPUS, examples), name="cir", ks=(1, 2))(
        KeywordRetriever(CORPUS)
    )
    # e0: ranking a, c, b -> hit@1. e1: ranking a(dropped), c, b -> hit@1.
    assert m["cir_R@1"] == 1.0
    assert m["cir_mAP@1"] == 1.0
    kept = ComposedEvaluator(
        ComposedDataset(CORPUS, [ComposedExample("e1", "b", "red star", ("c",))]), ks=(1, 2)
    )(KeywordRetriever(CORPUS))
    # Without dropping a (the reference is b here), c is second: miss at 1, hit at 2.
    assert kept["R@1"] == 0.0 and kept["R@2"] == 1.0 and kept["mAP@2"] == 0.5


def test_dialog_evaluator_cumulative() -> None:
    dialogs = [
        DialogExample(
            "d0", "c", "a shape", (DialogTurn("colour?", "green"), DialogTurn("shape?", "star"))
        ),
        DialogExample("d1", "b", "a shape", (DialogTurn("colour?", "blue"),)),
    ]
    ev = DialogEvaluator(DialogDataset(CORPUS, dialogs), name="chat", k=1)
    m = ev(KeywordRetriever(CORPUS))
    # round 0: "a shape" matches nothing -> ties -> a first: both miss.
    # round 1: d0 "green" -> c hit; d1 "blue" -> b hit.
    assert m["chat_hits@1_round0"] == 0.0
    assert m["chat_hits@1_round1"] == 1.0 and m["chat_hits@1_round2"] == 1.0
    assert ev.last_curve == [0.0, 1.0, 1.0]


def test_runner_cost_errors_and_report(tmp_path: Path) -> None:
    class Broken:
        def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
            raise RuntimeError("boom")

    r = KeywordRetriever(CORPUS)
    evaluators = [RetrievalEvaluator(CORPUS, name="toy", ks=(1,))]
    report = evaluate({"kw": r, "broken": Broken()}, evaluators, continue_on_error=True)
    kw = report.methods["kw"]
    # 6 text queries x 3 images + 3 image queries x 6 captions = 36 pairs.
    assert kw.cost["keyword.pairs_evaluated"] == 36
    assert report.methods["broken"].error and "boom" in report.methods["broken"].error
    with pytest.raises(RuntimeError, match="method 'broken' failed"):
        evaluate({"broken": Broken()}, evaluators)

    md = report.to_markdown()
    assert "| kw | 83.3 |" in md and "broken FAILED" in md
    files = report.save(tmp_path / "rep")
    pngs = [f for f in files if f.suffix == ".png"]
    assert pngs and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in pngs)
    back = EvalReport.from_json(tmp_path / "rep" / "report.json")
    assert back.methods["kw"].metrics == kw.metrics


def test_dialog_plot(tmp_path: Path) -> None:
    dialogs = [DialogExample("d0", "c", "a shape", (DialogTurn("colour?", "green"),))]
    report = evaluate(
        {"kw": KeywordRetriever(CORPUS)},
        [DialogEvaluator(DialogDataset(CORPUS, dialogs), name="chat", k=1)],
    )
    assert report.methods["kw"].curves
    assert any(p.name == "dialog_hits.png" for p in report.save_plots(tmp_path))


def test_eval_cli_on_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--dataset",
            "shapes",
            "--split",
            "val",
            "--shapes-n",
            "60",
            "--task",
            "retrieval",
            "--task",
            "composed",
            "--encoder",
            "clip-tiny-test",
            "--num-workers",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "shapes-val_text_to_image_R@1" in text and "cir_R@1" in text
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "nope"])
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "shapes", "--out", str(out)])
