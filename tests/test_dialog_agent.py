"""The candidate-grounded dialog agent: questioner, reformulation, score accumulation,
simulated users and dialog metrics (a word-overlap stand-in retriever, fake chat models)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from vistrieve.evals.dialog import CachedUser, CaptionUser, dialog_table, run_agent_dialogs
from vistrieve.evals.metrics import (
    ABSENT_RANK,
    best_log_rank_integral,
    dialog_metrics,
    mean_rank_per_round,
    rank_worsened_share,
)
from vistrieve.llm import LangChainLLM
from vistrieve.query_rewriting.dialog_agent import (
    CandidateEvidence,
    CandidateQuestioner,
    CaptionWords,
    ConcatReformulator,
    DialogAgent,
    LLMCandidateQuestioner,
    LLMReformulator,
    RuleReformulator,
    answer_kind,
    canonical_word,
    dialog_facts,
)
from vistrieve.types import DialogTurn, Hit, Query

CAPTIONS = {
    "dog-ball": ["a brown dog runs on the grass with a red ball"],
    "dog-snow": ["a black dog plays in the snow", "a dog playing"],
    "dog-water": ["a dog swims in the water"],
    "cat-sofa": ["a cat sleeps on a sofa"],
    "boy-beach": ["a boy runs on the beach"],
    "girl-snow": ["two girls play in the snow"],
}


class WordRetriever:
    """Scores ids by content words shared with the query (ties by id)."""

    def __init__(self) -> None:
        self.calls = 0
        self.voc = CaptionWords()

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
        self.calls += 1
        out = []
        for q in queries:
            words = self.voc.attributes(q.as_text())
            score = {i: len(words & self.voc.attributes(c[0])) for i, c in CAPTIONS.items()}
            ranked = sorted(CAPTIONS, key=lambda i: (-score[i], i))[:k]
            out.append([Hit(i, float(score[i])) for i in ranked])
        return out


def _agent(**kw: object) -> DialogAgent:
    evidence = CandidateEvidence(CaptionWords(), lambda i: CAPTIONS[i])
    return DialogAgent(WordRetriever(), evidence=evidence, pool=len(CAPTIONS), **kw)  # type: ignore[arg-type]


def test_answer_kind_and_word_folding() -> None:
    assert [answer_kind(a) for a in ("Yes.", "no, not a dog", "I don't know", "", "red")] == [
        "yes",
        "no",
        "unknown",
        "unknown",
        "other",
    ]
    assert canonical_word("dogs") == canonical_word("dog") == "dog"
    assert canonical_word("puppies") == "dog"
    assert canonical_word("running") == canonical_word("runs") == "run"
    assert canonical_word("children") == canonical_word("kids") == "child"


def test_caption_words_questions_use_the_surface_word() -> None:
    voc = CaptionWords()
    voc.attributes("two dogs run on the grass near a red ball")
    assert voc.question("ball") == "Is there a ball in the picture?"
    assert voc.question("red") == "Is anything red in the picture?"
    assert voc.question("grass") == "Is there grass in the picture?"
    assert voc.question("dog") == "Are there dogs in the picture?"
    assert voc.attributes(voc.question("ball")) == {"ball"}


def test_facts_confirm_deny_and_ignore_unknown_answers() -> None:
    turns = [
        DialogTurn("Is there a ball in the picture?", "yes"),
        DialogTurn("Is there snow in the picture?", "no"),
        DialogTurn("Is anything red in the picture?", "I don't know"),
        DialogTurn("What is the dog doing?", "running"),
    ]
    facts = dialog_facts(CaptionWords(), "a dog", turns)
    assert facts.given == {"dog"}
    assert facts.confirmed == ["ball", "run"]
    assert facts.denied == ["snow"]
    assert {"ball", "snow", "red"} <= facts.asked


def test_rule_reformulation_never_pastes_questions_or_negatives() -> None:
    turns = [
        DialogTurn("Is there a ball in the picture?", "yes"),
        DialogTurn("Is there snow in the picture?", "no"),
        DialogTurn("Is anything red in the picture?", "I don't know"),
    ]
    text = RuleReformulator(CaptionWords())("a dog on grass", turns)
    assert text == "a dog on grass with ball"
    assert "?" not in text and "snow" not in text and "red" not in text
    assert RuleReformulator(CaptionWords())("a dog", turns[2:]) == "a dog"
    assert "snow" in ConcatReformulator()("a dog", turns)  # the baseline pastes everything


def test_questioner_picks_the_splitting_attribute_and_skips_known_ones() -> None:
    agent = _agent()
    ranking = agent.rank("a dog")
    q = CandidateQuestioner(agent.evidence, k=3)
    options = dict(q.options("a dog", [], ranking))
    assert "dog" not in options  # given in the caption
    assert all(0.0 <= g <= 1.0 for g in options.values())
    first = q("a dog", [], ranking)
    assert first is not None and "?" in first
    turns = [DialogTurn(first, "no")]
    again = q("a dog", turns, agent.rank("a dog", turns))
    assert again != first


def test_denied_attribute_pushes_candidates_down_and_confirmed_pulls_up() -> None:
    agent = _agent(confirm_weight=1.0, deny_weight=1.0)
    before = agent.rank("a dog")
    turns = [DialogTurn("Is there snow in the picture?", "no")]
    after = agent.rank("a dog", turns)
    assert after.rank_of("dog-snow") > before.rank_of("dog-snow")  # type: ignore[operator]
    turns = [DialogTurn("Is there water in the picture?", "yes")]
    assert agent.rank("a dog", turns).ids[0] == "dog-water"


def test_accumulated_scores_keep_the_target_after_a_vague_answer() -> None:
    turns = [DialogTurn("Is there a sofa in the picture?", "yes, a cat sleeping on a sofa")]
    last_only = _agent(accumulate=False, confirm_weight=0.0, deny_weight=0.0)
    kept = _agent(accumulate=True, confirm_weight=0.0, deny_weight=0.0)
    assert last_only.rank("a brown dog with a ball", []).ids[0] == "dog-ball"
    assert kept.rank("a brown dog with a ball", turns).ids[0] == "dog-ball"
    assert last_only.rank("a brown dog with a ball", turns).ids[0] != "dog-ball"


def test_agent_caches_round_queries() -> None:
    agent = _agent()
    agent.rank("a dog")
    calls = agent.retriever.calls  # type: ignore[attr-defined]
    agent.rank("a dog")
    assert agent.retriever.calls == calls  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="empty caption"):
        agent.rank("  ")


def test_caption_user_yes_no_unknown_and_cache(tmp_path: Path) -> None:
    user = CaptionUser({"t": ["Two dogs are running on the grass", "puppies playing"]})
    assert user.answer("t", "Is there a dog in the picture?") == "yes"
    assert user.answer("t", "Is someone or something running?") == "yes"
    assert user.answer("t", "Is there a cat in the picture?") == "no"  # another animal named
    assert user.answer("t", "Is there snow in the picture?") == "no"  # a salient place
    assert user.answer("t", "Is anything red in the picture?") == "I don't know"
    assert user.answer("t", "Is there an animal in the picture?") == "yes"  # hypernym
    with pytest.raises(KeyError, match="no captions"):
        user.answer("other", "Is there a dog?")
    unsure = CaptionUser({"t": ["a dog"]}, unsure=1.0)
    assert unsure.answer("t", "Is there a dog in the picture?") == "I don't know"
    cached = CachedUser(user, tmp_path / "answers.json")
    assert cached.answer("t", "Is there a dog in the picture?") == "yes"
    cached.save()
    replay = CachedUser(CaptionUser({}), tmp_path / "answers.json")
    assert replay.answer("t", "Is there a dog in the picture?") == "yes" and replay.hits == 1


def test_live_agent_dialogs_reach_the_target() -> None:
    agent = _agent()
    user = CaptionUser(CAPTIONS)
    res = run_agent_dialogs(agent, ["a dog"], ["dog-snow"], user, rounds=3, progress=False)
    assert res.ranks.shape == (1, 4)
    assert res.ranks[0, -1] == 0 and res.ranks[0, 0] > 0
    assert all("?" not in q for q in res.queries[0])
    m = res.metrics(k=1)
    assert m["hits@1_round3"] == 1.0 and m["mean_rank_round3"] == 1.0
    assert "| H@1 r0 |" in dialog_table({"agent": res}, k=1)


def test_dialog_metrics() -> None:
    ranks = np.array([[5, 3, 4], [ABSENT_RANK, 0, 0]])
    assert rank_worsened_share(ranks, 100) == 0.25
    assert mean_rank_per_round(ranks, 100).tolist() == [53.0, 2.5, 3.0]
    # best log rank: dialog 1 log(6), log(4), log(4); dialog 2 log(100), 0, 0
    want = ((np.log(6) + 2 * np.log(4) + np.log(4)) / 4 + (np.log(100) + 0) / 4) / 2
    assert best_log_rank_integral(ranks, 100) == pytest.approx(want)
    m = dialog_metrics(ranks, 100, k=5)
    assert m["hits@5_round0"] == 0.0 and m["hits@5_round1"] == 1.0
    with pytest.raises(ValueError, match="n_gallery"):
        best_log_rank_integral(ranks, 0)


def test_llm_questioner_and_reformulator_with_fallbacks() -> None:
    agent = _agent()
    ranking = agent.rank("a dog")
    base = CandidateQuestioner(agent.evidence, k=6)
    top = [a for a, _ in base.options("a dog", [], ranking, n=5)]
    good = agent.vocabulary.question(top[1])
    llm = LangChainLLM(FakeListChatModel(responses=[f"Question: {good}", "Question: how old?"]))
    q = LLMCandidateQuestioner(llm, base)
    assert q("a dog", [], ranking) == good
    assert q("a dog", [], ranking) == agent.vocabulary.question(top[0])  # fallback
    assert q.cost()["question_fallbacks"] == 1.0
    turns = [DialogTurn("Is there a ball in the picture?", "yes")]
    llm2 = LangChainLLM(
        FakeListChatModel(
            responses=[
                "Description: a dog with a ball",
                "Description: Is there a ball in the picture?",
            ]
        )
    )
    ref = LLMReformulator(llm2, CaptionWords())
    assert ref("a dog", turns) == "a dog with a ball"
    assert ref("a dog", turns) == "a dog with ball"  # question pasted: rule-based fallback
    assert ref("a dog", [DialogTurn("Is there snow?", "I don't know")]) == "a dog"


def test_shapes_vocabulary_and_scene_user_agree() -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.recipes.shapes.dialog import SceneUser, ShapesAttributes, shapes_dialogs

    voc = ShapesAttributes()
    attrs = voc.attributes("a large red circle on the left and a small blue square")
    assert {"red circle", "circle on the left", "red circle on the left", "blue square"} <= attrs
    assert not any("large" in a or "small" in a for a in attrs)
    facts = dialog_facts(voc, "something white", [DialogTurn(voc.question("red circle"), "no")])
    assert facts.denied == ["red circle"] and facts.known(voc, "red circle on the left")
    assert not facts.known(voc, "red")
    world = ShapesWorld(n_test=20, n_dialogs=4)
    setup = shapes_dialogs(world, "test")
    user = SceneUser(world)
    for target in setup.targets:
        for a in voc.attributes(" ".join(setup.evidence_texts(target))):
            assert user.answer(target, voc.question(a)) == "yes", a


def test_eval_cli_runs_live_dialogs(tmp_path: Path) -> None:
    import json

    from vistrieve.cli.main import main

    out = tmp_path / "eval"
    argv = ["eval", "--dataset", "shapes", "--shapes-n", "30", "--task", "dialog",
            "--encoder", "shapes-clip", "--dialogs", "3", "--rounds", "2",
            "--questioner", "candidate", "--questioner", "generic",
            "--reformulator", "rules", "--scoring", "accumulate", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "dialog_agent.json").read_text())
    assert len(record) == 2
    for row in record.values():
        assert {"hits@10_round2", "bri", "mean_rank_round2", "rank_worse_share"} <= set(row)
        assert len(row["example"]["turns"]) <= 2
    assert "BRI" in (out / "dialog_agent.md").read_text()


class _Describer:
    """Describes an image named ``img:ID`` with the captions of ``ID``."""

    def __init__(self) -> None:
        self.described: list[str] = []

    def describe(self, images: Sequence[str], n: int = 5) -> list[list[str]]:
        self.described.extend(images)
        return [CAPTIONS[str(im).removeprefix("img:")][:n] for im in images]


def test_a_captioner_gives_a_captionless_gallery_evidence_to_ask_from() -> None:
    from vistrieve.query_rewriting.dialog_agent import captioned_texts
    from vistrieve.types import Corpus, Item

    retriever = WordRetriever()
    retriever.corpus = Corpus([Item(id=i, image=f"img:{i}") for i in CAPTIONS])  # type: ignore[attr-defined]
    bare = DialogAgent(retriever, pool=len(CAPTIONS))  # type: ignore[arg-type]
    assert bare.evidence.of("dog-ball") == {}
    assert bare.questioner("a dog", [], bare.rank("a dog")) is None  # nothing to ask about

    retriever.corpus = Corpus(  # type: ignore[attr-defined]
        [Item(id=i, image=f"img:{i}") for i in CAPTIONS if i != "cat-sofa"]
        + [Item(id="cat-sofa", image="img:cat-sofa", captions=("a cat on a blue sofa",))]
    )

    describer = _Describer()
    texts = captioned_texts(describer, retriever)
    assert texts("cat-sofa") == ("a cat on a blue sofa",)  # own captions win
    assert texts("dog-snow") == tuple(CAPTIONS["dog-snow"])
    assert texts("missing") == ()
    evidence = CandidateEvidence(CaptionWords(), texts)
    agent = DialogAgent(retriever, evidence=evidence, pool=len(CAPTIONS))  # type: ignore[arg-type]
    question = agent.questioner("a dog", [], agent.rank("a dog"))
    assert question is not None and "?" in question
    assert "img:cat-sofa" not in describer.described
    with pytest.raises(ValueError, match="no corpus"):
        captioned_texts(describer, object())
