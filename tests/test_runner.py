from __future__ import annotations

import argparse
import json
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vistrieve.cli import eval as eval_cli
from vistrieve.data.tasks import (
    ComposedDataset,
    ComposedExample,
    DialogDataset,
    DialogExample,
    PairedEmbeddings,
)
from vistrieve.evals.metrics import ABSENT_RANK
from vistrieve.evals.report import EvalReport
from vistrieve.evals.runner import (
    ComposedEvaluator,
    DialogEvaluator,
    RetrievalEvaluator,
    evaluate,
    evaluate_embedding_sets,
    evaluate_embeddings,
    item_id_of,
    read_counters,
    stage_objects,
    supports_text_target,
)
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.types import Corpus, DialogTurn, Evaluator, Hit, Item, Query

WORDS = ["red", "green", "blue", "circle", "square", "star"]


# ----------------------------------------------------------------------------- fakes
class KeywordRetriever:
    """Scores items by keyword overlap between the query text and the item's first caption.

    Ties are broken by id. Image queries are 1x1 PIL images whose ``info["id"]`` names their
    item; they score captions by overlap with that item's first caption.
    """

    name = "keyword"

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.pairs = 0

    def _vec(self, text: str) -> np.ndarray:
        words = re.findall(r"[a-z]+", text)
        return np.array([w in words for w in WORDS], dtype=float)

    def cost(self) -> dict[str, float]:
        return {"pairs_evaluated": float(self.pairs)}

    def retrieve(
        self, queries: Sequence[Query], k: int = 10, *, target: str = "image"
    ) -> list[list[Hit]]:
        out = []
        for q in queries:
            if q.kind == "image":
                text = self.corpus[q.image.info["id"]].captions[0]
            else:
                text = q.as_text() if q.kind != "composed" else q.text or ""
            v = self._vec(text)
            if target == "image":
                cands = [
                    (float(self._vec(it.captions[0]) @ v), it.id) for it in self.corpus.values()
                ]
            else:
                cands = [
                    (float(self._vec(c) @ v), f"{it.id}#{j}")
                    for it in self.corpus.values()
                    for j, c in enumerate(it.captions)
                ]
            self.pairs += len(cands)
            cands.sort(key=lambda c: (-c[0], c[1]))
            # Caption hits carry no item_id: the evaluator must read the "{id}#{j}" convention.
            out.append([Hit(h, s) for s, h in cands[:k]])
        return out


class TextOnlyKeyword(KeywordRetriever):
    """The same scores, without a ``target`` parameter (no image -> text search)."""

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:  # type: ignore[override]
        return super().retrieve(queries, k)


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


@dataclass(frozen=True)
class FakeImage:
    words: str


class WordVectorEncoder:
    """A deterministic dual encoder: a text is the sum of fixed random word vectors.

    An image is its description's vector plus a fixed per-image offset, so images and their
    captions are close but never identical and scores have no ties.
    """

    name = "word-vectors"
    dim = 16

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.vectors = {w: rng.normal(size=self.dim) for w in WORDS}
        self.image_passes = 0
        self.text_passes = 0

    def _embed(self, text: str, salt: str) -> np.ndarray:
        v = sum((self.vectors[w] for w in text.split() if w in self.vectors), np.zeros(self.dim))
        noise = np.random.default_rng(zlib.crc32((salt + text).encode())).normal(size=self.dim)
        v = v + 0.8 * noise
        return v / np.linalg.norm(v)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        self.text_passes += len(texts)
        return np.stack([self._embed(t, "text:") for t in texts]).astype(np.float32)

    def encode_image(self, images: Sequence[Any]) -> np.ndarray:
        self.image_passes += len(images)
        return np.stack([self._embed(im.words, "image:") for im in images]).astype(np.float32)


def _word_corpus(n: int = 14, seed: int = 3) -> Corpus:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=3, replace=False))
        # A caption-number token outside the vocabulary keeps every caption text unique, so
        # no two texts share an embedding and scores have no ties.
        caps = tuple(
            " ".join(rng.choice(words.split(), size=2, replace=False)) + f" n{i}x{j}"
            for j in range(int(rng.integers(1, 4)))
        )
        items.append(Item(f"i{i:02d}", image=FakeImage(words), captions=caps))
    return Corpus(items)


# ----------------------------------------------------------------------------- retrieval
def test_retrieval_evaluator_hand_computed() -> None:
    ev = RetrievalEvaluator(CORPUS, name="toy", ks=(2, 1))
    m = ev(KeywordRetriever(CORPUS))
    # text->image: "red circle", "circle red" -> a; "blue square", "square" -> b;
    # "green star" -> c; "red star" ties a and c (1 word each), a first by id: rank 1.
    assert m["toy_text_to_image_R@1"] == pytest.approx(5 / 6)
    assert m["toy_text_to_image_R@2"] == pytest.approx(1.0)
    assert m["toy_text_to_image_MRR@2"] == pytest.approx((5 + 0.5) / 6)
    # image->text: a's query "red circle" ties its own two captions at 2 -> hit at 1;
    # b "blue square" -> "blue square" (2); c "green star" -> "green star" (2).
    assert m["toy_image_to_text_R@1"] == pytest.approx(1.0)
    assert m["toy_image_to_text_MRR@2"] == pytest.approx(1.0)
    assert set(m) == {
        f"toy_{d}_{x}" for d in ("text_to_image", "image_to_text") for x in ("R@1", "R@2", "MRR@2")
    }
    assert ev.primary_metric == "toy_text_to_image_R@1" and ev.depth == 2
    assert ev.last_notes == []


def test_image_to_text_skipped_with_a_note_or_forced_off() -> None:
    ev = RetrievalEvaluator(CORPUS, name="toy", ks=(1,))
    m = ev(TextOnlyKeyword(CORPUS))
    assert set(m) == {"toy_text_to_image_R@1", "toy_text_to_image_MRR@1"}
    assert ev.last_notes and "image->text not evaluated" in ev.last_notes[0]
    off = RetrievalEvaluator(CORPUS, ks=(1,), image_to_text=False)(KeywordRetriever(CORPUS))
    assert set(off) == {"text_to_image_R@1", "text_to_image_MRR@1"}
    assert supports_text_target(KeywordRetriever(CORPUS))
    assert not supports_text_target(TextOnlyKeyword(CORPUS))


def test_item_id_of_conventions() -> None:
    assert item_id_of(Hit("x#3", 0.0, metadata={"item_id": "y"}), "text") == "y"
    assert item_id_of(Hit("img#1", 0.0), "text") == "img"
    assert item_id_of(Hit("img#1", 0.0), "image") == "img#1"


def test_retrieve_path_agrees_with_embedding_fast_path() -> None:
    corpus = _word_corpus()
    encoder = WordVectorEncoder()
    dense = DenseRetriever.build(encoder, corpus, index="exact")
    # depth 20 >= 14 images: every text->image positive is in its list, so MRR@20 is MRR.
    ev = RetrievalEvaluator(corpus, name="w", ks=(1, 5, 20))
    through_retrieve = ev(dense)
    fast = ev.evaluate_encoder(encoder)
    for key in [k for k in fast if "_R@" in k]:
        assert through_retrieve[key] == pytest.approx(fast[key]), key
    assert through_retrieve["w_text_to_image_MRR@20"] == pytest.approx(fast["w_text_to_image_MRR"])
    # Not every metric is trivially 0 or 1, so the comparison means something.
    assert 0 < fast["w_text_to_image_R@1"] < 1
    assert "w_mean_R" in fast


def test_evaluate_embeddings_by_hand() -> None:
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float32)
    m = evaluate_embeddings(img, txt, [0, 0, 2, 1], name="e", ks=(1, 2))
    # text 1 prefers image 1 (0.8) over its image 0 (0.6): rank 1. Others rank 0.
    assert m["e_text_to_image_R@1"] == pytest.approx(3 / 4)
    assert m["e_text_to_image_R@2"] == pytest.approx(1.0)
    assert m["e_text_to_image_MRR"] == pytest.approx((3 + 0.5) / 4)
    assert m["e_image_to_text_R@1"] == pytest.approx(1.0)
    report = evaluate_embedding_sets(
        {"set": PairedEmbeddings(img, txt, np.array([0, 0, 2, 1]))}, name="e", ks=(1, 2)
    )
    assert report.methods["set"].metrics == m
    assert report.sections["embeddings[e]"].primary_metric == "e_text_to_image_R@1"


# ----------------------------------------------------------------------------- composed
CORPUS4 = Corpus([*CORPUS.values(), Item("d", image=_img("d"), captions=("blue star",))])


def test_composed_evaluator_drops_reference() -> None:
    # "red star" ties a ("red circle") and c ("green star"); a ranks first by id. a is the
    # reference of e1, so it is dropped there and c counts at rank 0.
    examples = [
        ComposedExample("e0", "b", "red circle", ("a",)),
        ComposedExample("e1", "a", "red star", ("c",)),
    ]
    ev = ComposedEvaluator(ComposedDataset(CORPUS, examples), name="cir", ks=(1, 2))
    m = ev(KeywordRetriever(CORPUS))
    assert m["cir_R@1"] == 1.0 and m["cir_mAP@1"] == 1.0
    assert ev.primary_metric == "cir_R@1"
    assert not any("subset" in k for k in m)
    # The reference is b here, so a stays in the ranking and c is second.
    kept = ComposedEvaluator(
        ComposedDataset(CORPUS, [ComposedExample("e1", "b", "red star", ("c",))]), ks=(1, 2)
    )(KeywordRetriever(CORPUS))
    assert kept == {"R@1": 0.0, "R@2": 1.0, "mAP@1": 0.0, "mAP@2": 0.5}


def test_composed_multi_target_map_and_subsets() -> None:
    # "red circle": a 2, then b, c, d tied at 0 (id order). Reference d is dropped:
    # ranking a, b, c. Targets a and c: AP@3 = (1/1 + 2/3) / 2.
    multi = ComposedExample("m", "d", "red circle", ("a", "c"), subset_ids=("d", "b", "c"))
    single = ComposedExample("s", "d", "red circle", ("c",), subset_ids=("d", "c", "a"))
    ev = ComposedEvaluator(ComposedDataset(CORPUS4, [multi, single]), ks=(1, 3), subset_ks=(1, 2))
    m = ev(KeywordRetriever(CORPUS4))
    assert m["mAP@3"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 1) / 2)
    assert m["mAP@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["R@1"] == pytest.approx(0.5) and m["R@3"] == pytest.approx(1.0)
    # Subsets without the reference: {b, c} ranks b, c -> c second for "m";
    # {c, a} ranks a, c -> c second for "s".
    assert m["R_subset@1"] == pytest.approx(0.0) and m["R_subset@2"] == pytest.approx(1.0)
    assert ev.depth == len(CORPUS4)  # subsets rank over the whole gallery


# ----------------------------------------------------------------------------- dialog
def test_dialog_evaluator_cumulative_hits_and_ranks() -> None:
    dialogs = [
        # round 1 "green" finds c; round 2 adds "circle", which ties a and c (a first), so c
        # leaves the top 1 -- the cumulative curve keeps the hit.
        DialogExample(
            "d0",
            "c",
            "a shape",
            (DialogTurn("colour?", "green"), DialogTurn("other shape?", "circle")),
        ),
        DialogExample("d1", "b", "a shape", (DialogTurn("colour?", "blue"),)),
    ]
    ev = DialogEvaluator(DialogDataset(CORPUS, dialogs), name="chat", k=1)
    m = ev(KeywordRetriever(CORPUS))
    # round 0 "a shape" matches nothing: a first for both -> miss.
    assert m == {"chat_hits@1_round0": 0.0, "chat_hits@1_round1": 1.0, "chat_hits@1_round2": 1.0}
    assert ev.last_ranks.tolist() == [[ABSENT_RANK, 0, ABSENT_RANK], [ABSENT_RANK, 0, 0]]
    assert ev.last_curves == {"chat_hits@1": [0.0, 1.0, 1.0]}
    assert ev.last_curve == [0.0, 1.0, 1.0]
    assert ev.primary_metric == "chat_hits@1_round2"
    two = DialogEvaluator(DialogDataset(CORPUS, dialogs), k=2, rounds=0)
    # k = 2: round 0 ranks a, b, c -> d1's target b is second.
    assert two(KeywordRetriever(CORPUS)) == {"hits@2_round0": 0.5}
    with pytest.raises(ValueError, match="rounds"):
        DialogEvaluator(DialogDataset(CORPUS, dialogs), rounds=-1)


# ----------------------------------------------------------------------------- cost
class Counters:
    def __init__(self) -> None:
        self.text_passes = 0
        self.image_passes = 0


class AttrReranker:
    def __init__(self) -> None:
        self.pairs_evaluated = 0
        self.llm_calls = True  # a flag, not a counter: ignored


class LLMRewriter:
    def __init__(self, encoder: Counters) -> None:
        self.encoder = encoder
        self.calls = 0
        self.tokens = 0

    def cost(self) -> dict[str, float]:
        return {"llm_calls": float(self.calls), "llm_tokens": float(self.tokens)}

    def report_notes(self) -> list[str]:
        return ["rewrites are cached"]


class First:
    name = "first"

    def __init__(self, encoder: Counters) -> None:
        self.encoder = encoder


class Pipe:
    """A pipeline whose stages share one encoder; each call costs known amounts."""

    name = "first"  # same label as its first stage: the stage keeps "first"

    def __init__(self) -> None:
        self.encoder = Counters()
        self.rewriter = LLMRewriter(self.encoder)
        self.first = First(self.encoder)
        self.reranker = AttrReranker()

    def stages(self) -> list[tuple[str, Any]]:
        return [("rewriter", self.rewriter), ("first", self.first), ("rr", self.reranker)]

    def report_notes(self) -> list[str]:
        return ["R@K cannot exceed the number of beams (4)"]

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
        self.rewriter.calls += 1
        self.rewriter.tokens += 7 * len(queries)
        self.encoder.text_passes += len(queries)
        self.reranker.pairs_evaluated += 3 * len(queries)
        return [[Hit("x", 1.0)] for _ in queries]


class CountingEvaluator:
    """A minimal evaluator: only the Evaluator protocol, no base class."""

    primary_metric = "n"

    def __call__(self, retriever: Any) -> dict[str, float]:
        hits = retriever.retrieve([Query(text=f"q{i}") for i in range(4)], k=1)
        return {"n": float(len(hits))}


def test_stage_objects_and_counters() -> None:
    pipe = Pipe()
    labels = [label for label, _ in stage_objects(pipe)]
    assert labels == ["rewriter", "rewriter.encoder", "first", "rr", "first#2"]
    pipe.retrieve([Query(text="q")])
    assert read_counters(pipe) == {
        "rewriter.llm_calls": 1.0,
        "rewriter.llm_tokens": 7.0,
        "rewriter.encoder.image_passes": 0.0,
        "rewriter.encoder.text_passes": 1.0,
        "rr.pairs_evaluated": 3.0,
    }

    class BadCost:
        def cost(self) -> dict[str, Any]:
            return {"pairs": "many"}

    with pytest.raises(TypeError, match="must be a number"):
        read_counters(BadCost())


def test_runner_cost_notes_and_plugged_in_evaluator() -> None:
    pipe = Pipe()
    pipe.retrieve([Query(text="warm-up")])  # counts before the run are not reported
    report = evaluate({"pipe": pipe}, [CountingEvaluator(), CountingEvaluator()])
    r = report.methods["pipe"]
    assert r.metrics == {"n": 4.0}
    assert list(report.sections) == ["CountingEvaluator", "CountingEvaluator#2"]
    assert r.cost_by_evaluator["CountingEvaluator"] == {
        "rewriter.llm_calls": 1.0,
        "rewriter.llm_tokens": 28.0,
        "rewriter.encoder.image_passes": 0.0,
        "rewriter.encoder.text_passes": 4.0,
        "rr.pairs_evaluated": 12.0,
    }
    assert r.cost["rewriter.llm_tokens"] == 56.0 and r.cost["rr.pairs_evaluated"] == 24.0
    assert set(r.seconds) == {"CountingEvaluator", "CountingEvaluator#2"}
    assert all(s >= 0 for s in r.seconds.values())
    assert r.notes == ["rewrites are cached", "R@K cannot exceed the number of beams (4)"]


def test_runner_reads_dense_encoder_passes_and_evaluator_notes() -> None:
    corpus = _word_corpus(n=6)
    encoder = WordVectorEncoder()
    dense = DenseRetriever.build(encoder, corpus)
    n_captions = len(corpus.caption_pairs()[0])
    report = evaluate(
        {"dense": dense, "keyword-free": TextOnlyKeyword(CORPUS)},
        [RetrievalEvaluator(corpus, ks=(1,))],
        continue_on_error=True,
    )
    cost = report.methods["dense"].cost
    assert cost["dense.encoder.text_passes"] == n_captions
    assert cost["dense.encoder.image_passes"] == len(corpus)
    # TextOnlyKeyword searches another corpus (every query misses, nothing fails); its note
    # says why image->text is missing.
    notes = report.methods["keyword-free"].notes
    assert any("image->text not evaluated" in n for n in notes)


def test_runner_errors(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
            raise RuntimeError("boom")

    class Short:
        def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
            return []

    evaluators: list[Evaluator] = [
        RetrievalEvaluator(CORPUS, name="toy", ks=(1,)),
        CountingEvaluator(),
    ]
    with pytest.raises(RuntimeError, match=r"method 'broken' failed in RetrievalEvaluator\[toy\]"):
        evaluate({"broken": Broken()}, evaluators)
    with pytest.raises(RuntimeError) as info:
        evaluate({"short": Short()}, evaluators)
    assert isinstance(info.value.__cause__, ValueError)
    assert "one list per query" in str(info.value)

    with caplog.at_level(logging.ERROR, logger="vistrieve.evals.runner"):
        report = evaluate(
            {"kw": KeywordRetriever(CORPUS), "broken": Broken()},
            evaluators,
            continue_on_error=True,
        )
    broken = report.methods["broken"]
    assert set(broken.errors) == {"RetrievalEvaluator[toy]", "CountingEvaluator"}
    assert "boom" in broken.errors["CountingEvaluator"] and broken.failed
    assert not broken.metrics and not report.methods["kw"].failed
    assert report.methods["kw"].metrics["toy_text_to_image_R@1"] == pytest.approx(5 / 6)
    assert sum("method 'broken' failed" in rec.getMessage() for rec in caplog.records) == 2
    with pytest.raises(ValueError, match="no methods"):
        evaluate({}, evaluators)


def test_dialog_curves_reach_the_report() -> None:
    dialogs = [DialogExample("d0", "c", "a shape", (DialogTurn("colour?", "green"),))]
    report = evaluate(
        {"kw": KeywordRetriever(CORPUS)},
        [DialogEvaluator(DialogDataset(CORPUS, dialogs), name="chat", k=1)],
    )
    assert report.methods["kw"].curves == {"chat_hits@1": [0.0, 1.0]}
    assert report.sections["DialogEvaluator[chat]"].metrics == [
        "chat_hits@1_round0",
        "chat_hits@1_round1",
    ]


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vistrieve")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cli.add_eval_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_eval_cli_on_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    code = _run(
        [
            "eval",
            "--dataset",
            "shapes",
            "--split",
            "val",
            "--shapes-n",
            "8",
            "--task",
            "retrieval",
            "--task",
            "composed",
            "--task",
            "dialog",
            "--rounds",
            "2",
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
    assert "## RetrievalEvaluator[shapes-val]" in text and "| clip-tiny-test |" in text
    report = EvalReport.from_json(out / "report.json")
    metrics = report.methods["clip-tiny-test"].metrics
    for key in (
        "shapes-val_text_to_image_R@1",
        "shapes-val_image_to_text_R@10",
        "shapes-val-cir_R@1",
        "shapes-val-cir_mAP@50",
        "shapes-val-chat_hits@10_round2",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert report.methods["clip-tiny-test"].curves["shapes-val-chat_hits@10"]
    assert report.info["dataset"] == "shapes" and report.info["split"] == "val"
    assert any("index built" in n for n in report.methods["clip-tiny-test"].notes)
    assert report.methods["clip-tiny-test"].cost["dense.encoder.text_passes"] > 0
    assert (out / "report.md").is_file()
    assert sorted(p.name for p in out.glob("*.png")) == [
        "dialog_shapes-val-chat_hits_10.png",
        "recall_shapes-val-cir.png",
        "recall_shapes-val_image_to_text.png",
        "recall_shapes-val_text_to_image.png",
    ]


def _karpathy(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "flickr30k-images"
    root.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    images = []
    for i, (word, rgb) in enumerate(colours.items()):
        Image.new("RGB", (32, 32), rgb).save(root / f"{i}.jpg")
        sentences = [{"raw": f"a {word} square"}, {"raw": f"{word} colour"}]
        images.append({"filename": f"{i}.jpg", "split": "test", "imgid": i, "sentences": sentences})
    images.append({"filename": "9.jpg", "split": "train", "sentences": [{"raw": "x"}]})
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    return path, root


def test_documented_karpathy_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduction command of the module docstring, with a tiny model in its place."""
    import vistrieve.encoders as encoders

    seen: list[tuple[str, dict[str, Any]]] = []
    real = encoders.create_encoder

    def fake(name: str, **kw: Any) -> Any:
        seen.append((name, kw))
        return real("clip-tiny-test", num_workers=0)

    monkeypatch.setattr(encoders, "create_encoder", fake)
    json_path, root = _karpathy(tmp_path)
    monkeypatch.chdir(tmp_path)
    documented = (
        "eval --dataset karpathy --karpathy-json dataset_flickr30k.json --image-root "
        "flickr30k-images --split test --encoder open_clip --model ViT-B-32 --pretrained openai"
    )
    assert documented.replace("eval ", "vistrieve eval ", 1) in " ".join(
        str(eval_cli.__doc__).replace("\\\n", " ").split()
    )
    assert _run([*documented.split(), "--out", "rep"]) == 0
    assert seen == [("open_clip", {"model": "ViT-B-32", "pretrained": "openai"})]
    report = EvalReport.from_json(tmp_path / "rep" / "report.json")
    method = report.methods["open_clip:ViT-B-32:openai"]
    assert report.info["images"] == 3 and report.info["captions"] == 6
    assert "karpathy-test_image_to_text_R@10" in method.metrics
    # 3 images: every positive is inside the top 10.
    assert method.metrics["karpathy-test_text_to_image_R@10"] == 1.0
    capsys.readouterr()


def test_index_dir_method_matches_encoder_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vistrieve.encoders import create_encoder
    from vistrieve.evals.datasets import load_karpathy

    json_path, root = _karpathy(tmp_path)
    corpus = load_karpathy(json_path, root)
    DenseRetriever.build(
        create_encoder("clip-tiny-test", num_workers=0), corpus, directory=tmp_path / "idx"
    )
    argv = ["eval", "--dataset", "karpathy", "--data", str(json_path), "--image-root", str(root)]
    argv += ["--encoder", "clip-tiny-test", "--index-dir", str(tmp_path / "idx")]
    argv += ["--num-workers", "0", "--ks", "1,2", "--out", str(tmp_path / "rep")]
    assert _run(argv) == 0
    report = EvalReport.from_json(tmp_path / "rep" / "report.json")
    built = report.methods["clip-tiny-test"].metrics
    loaded = report.methods[str(tmp_path / "idx")].metrics
    assert set(built) == set(loaded) and "karpathy-test_text_to_image_R@2" in built
    for key in built:
        assert loaded[key] == pytest.approx(built[key]), key
    capsys.readouterr()


def test_eval_cli_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "image_embeddings.npy", np.eye(3, dtype=np.float32))
    txt = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    np.save(d / "text_embeddings.npy", txt)
    out = tmp_path / "rep"
    argv = ["eval", "--dataset", "embeddings", "--data", str(d), "--ks", "1", "--out", str(out)]
    assert _run(argv) == 0
    m = EvalReport.from_json(out / "report.json").methods["emb"].metrics
    # text 1 describes image 1 but scores image 1 at 0.8 -- a hit; one caption per image.
    assert m["emb_text_to_image_R@1"] == 1.0
    assert m["emb_image_to_text_R@1"] == pytest.approx(1.0)
    assert "| emb | 100.0 |" in capsys.readouterr().out


@pytest.mark.shared_data
def test_eval_cli_reproduces_clip_vitl14_flickr30k(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared_data / "flickr30k-clip-vitl14-1k"
    argv = ["eval", "--dataset", "embeddings", "--data", str(src), "--out", str(tmp_path)]
    assert _run(argv) == 0
    m = EvalReport.from_json(tmp_path / "report.json").methods[src.name].metrics
    # Published for plain cosine search over these embeddings: 0.717 / 0.92 / 0.954.
    assert m[f"{src.name}_text_to_image_R@1"] == pytest.approx(0.717, abs=5e-4)
    assert m[f"{src.name}_text_to_image_R@5"] == pytest.approx(0.92, abs=5e-4)
    assert m[f"{src.name}_text_to_image_R@10"] == pytest.approx(0.954, abs=5e-4)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "shapes"], "at least one method"),
        (["--dataset", "flickr8k", "--encoder", "clip-tiny-test"], "needs --data"),
        (["--dataset", "karpathy", "--encoder", "clip-tiny-test"], "--karpathy-json"),
        (["--dataset", "karpathy", "--task", "composed"], "only has the retrieval task"),
        (["--dataset", "shapes", "--split", "dev", "--encoder", "clip-tiny-test"], "has splits"),
        (["--encoder", "no-such-encoder"], "unknown encoder .no-such-encoder."),
        (["--dataset", "embeddings"], "needs --data"),
        (["--encoder", "clip-tiny-test", "--model", "ViT-B-32"], "bare --encoder open_clip"),
        (["--encoder", "lit"], "lit:HEADS_DIR"),
        (["--encoder", "clip-tiny-test:7"], "takes no ':' arguments"),
    ],
)
def test_eval_cli_usage_errors(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=message):
        _run(["eval", *argv, "--out", str(tmp_path)])


def test_eval_cli_unknown_dataset_and_bad_ks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["eval", "--dataset", "nope"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["eval", "--ks", "0,5"])
    assert "positive" in capsys.readouterr().err


def test_encoder_specs() -> None:
    args = _parser().parse_args(["eval", "--device", "cpu"])
    assert eval_cli._encoder_args("open_clip:RN50:yfcc15m", args) == (
        "open_clip",
        {"model": "RN50", "pretrained": "yfcc15m", "device": "cpu"},
        "open_clip:RN50:yfcc15m",
    )
    assert eval_cli._encoder_args("open_clip:hf-hub:org/repo", args)[1]["model"] == (
        "hf-hub:org/repo"
    )
    assert eval_cli._encoder_args("hf:/models/clip", args)[1]["name_or_path"] == "/models/clip"
    # Local paths are stored absolute, so a saved spec means the same from any directory.
    assert eval_cli._encoder_args("lit:runs/lit", args)[1]["heads"] == str(
        Path("runs/lit").resolve()
    )


def test_eval_cli_coco_and_csv_give_the_same_figures_for_the_same_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dataset coco`` and ``--dataset csv`` over one set of images and captions."""
    _, root = _karpathy(tmp_path)
    words = ["red", "green", "blue"]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)],
        "annotations": [
            {"image_id": i, "caption": c}
            for i, w in enumerate(words)
            for c in (f"a {w} square", f"{w} colour")
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    rows = [f"{i}.jpg,{c}" for i, w in enumerate(words) for c in (f"a {w} square", f"{w} colour")]
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    common = ["--images", str(root), "--encoder", "clip-tiny-test", "--num-workers", "0"]
    common += ["--ks", "1,2"]
    metrics = {}
    for kind, name in (("coco", "captions.json"), ("csv", "captions.csv")):
        out = tmp_path / f"rep-{kind}"
        argv = ["eval", "--dataset", kind, "--captions", str(tmp_path / name), *common]
        assert _run([*argv, "--out", str(out)]) == 0
        got = EvalReport.from_json(out / "report.json").methods["clip-tiny-test"].metrics
        metrics[kind] = {key.split("_", 1)[1]: v for key, v in got.items()}
    assert metrics["coco"] and metrics["coco"] == pytest.approx(metrics["csv"])
    assert "text_to_image_R@2" in metrics["coco"]
    with pytest.raises(SystemExit, match="--captions"):
        _run(["eval", "--dataset", "coco", "--encoder", "clip-tiny-test"])
    capsys.readouterr()
