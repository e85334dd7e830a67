"""Listwise (letter-logit) reranking: permutation averaging, position bias, scorers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from vistrieve.pipeline import RerankStage, RetrievalPipeline
from vistrieve.rerankers.listwise import (
    ChatModelLetterScorer,
    HFLetterScorer,
    ListwisePrompt,
    ListwiseReranker,
    LogitsUnavailableError,
    letter_token_ids,
)
from vistrieve.types import Hit, Item, Query

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


def _corpus() -> dict[str, Item]:
    return {f"i{j}": Item(f"i{j}", captions=(f"a {c} circle",)) for j, c in enumerate(COLOURS)}


class BiasedScorer:
    """Matches the query's colour word (+2) and strongly prefers position A (+bias)."""

    def __init__(self, bias: float = 3.0) -> None:
        self.bias = bias
        self.seen: list[ListwisePrompt] = []

    def letter_logprobs(self, prompts: Sequence[ListwisePrompt]) -> np.ndarray:
        self.seen.extend(prompts)
        width = max(len(p.options) for p in prompts)
        out = np.full((len(prompts), width), -np.inf)
        for i, p in enumerate(prompts):
            colour = p.query.split()[1]
            raw = np.array(
                [
                    2.0 * (colour in o) + (self.bias if j == 0 else 0.0)
                    for j, o in enumerate(p.options)
                ]
            )
            out[i, : len(raw)] = raw - np.logaddexp.reduce(raw)
        return out


def _cands(ids: Sequence[str]) -> list[Hit]:
    return [Hit(i, 1.0 - 0.1 * r, scores={"dense": 1.0 - 0.1 * r}) for r, i in enumerate(ids)]


def test_permutation_averaging_cancels_position_bias() -> None:
    corpus = _corpus()
    query = [Query(text="a blue circle")]
    cands = [_cands(["i0", "i1", "i2", "i3"])]  # the match (i2) is third
    unbalanced = ListwiseReranker(BiasedScorer(), corpus, window=4, n_permutations=1)
    assert unbalanced.rerank(query, cands)[0][0].id == "i0"  # the bias wins: option A
    balanced = ListwiseReranker(BiasedScorer(), corpus, window=4)
    ranked = balanced.rerank(query, cands)[0]
    assert ranked[0].id == "i2"
    assert ranked[0].scores["listwise"] == ranked[0].score
    assert ranked[0].scores["dense"] == pytest.approx(0.8)
    bias = balanced.position_bias()
    # Bias 3 > content 2: the model picks A under every order; the report shows it.
    assert bias["picks"] == [4, 0, 0, 0]
    assert bias["max_deviation"] == pytest.approx(0.75)
    assert balanced.cost()["picks_A"] == 4.0
    assert balanced.cost()["pairs_evaluated"] == 16.0


def test_every_candidate_shown_at_every_position() -> None:
    scorer = BiasedScorer(bias=0.0)
    rr = ListwiseReranker(scorer, _corpus(), window=3)
    rr.rerank([Query(text="a red circle")], [_cands(["i0", "i1", "i2"])])
    positions: dict[str, set[int]] = {}
    for p in scorer.seen:
        for pos, text in enumerate(p.options):
            positions.setdefault(text, set()).add(pos)
    assert all(v == {0, 1, 2} for v in positions.values())
    assert len(scorer.seen) == 3


def test_short_last_group_is_filled_from_the_previous_one() -> None:
    scorer = BiasedScorer(bias=0.0)
    rr = ListwiseReranker(scorer, _corpus(), window=2)
    out = rr.rerank(
        [Query(text="a white circle")], [_cands(["i0", "i1", "i5", "i2", "i3"])], top_k=3
    )
    # Groups (i0, i1), (i5, i2), (i2, i3); two orders each.
    assert len(scorer.seen) == 6
    assert [p.options for p in scorer.seen[4:]] == [
        ["a blue circle", "a yellow circle"],
        ["a yellow circle", "a blue circle"],
    ]
    # i5 wins its group; i0, i1, i3 tie at log 1/2 and keep first-stage order; i2 is last.
    assert [h.id for h in out[0]] == ["i5", "i0", "i1"]
    assert out[0][1].score == pytest.approx(np.log(0.5))


def test_bad_input() -> None:
    rr = ListwiseReranker(BiasedScorer(), _corpus())
    with pytest.raises(ValueError, match="empty candidate list"):
        rr.rerank([Query(text="a red circle")], [[]])
    with pytest.raises(KeyError, match="nope"):
        rr.rerank([Query(text="a red circle")], [_cands(["i0", "nope"])])
    with pytest.raises(ValueError, match="window"):
        ListwiseReranker(BiasedScorer(), _corpus(), window=1)
    with pytest.raises(TypeError, match="letter_logprobs"):
        ListwiseReranker(object(), _corpus())  # type: ignore[arg-type]


def test_non_finite_letter_logits_are_an_error() -> None:
    class Broken:
        def letter_logprobs(self, prompts: Sequence[ListwisePrompt]) -> np.ndarray:
            from vistrieve.rerankers.listwise import _normalise_rows

            return _normalise_rows(np.array([[np.nan, 0.0]] * len(prompts)), [2] * len(prompts))

    rr = ListwiseReranker(Broken(), _corpus(), window=2, n_permutations=1)
    with pytest.raises(ValueError, match="not finite"):
        rr.rerank([Query(text="a red circle")], [_cands(["i0", "i1"])])


def test_pipeline_carries_listwise_scores() -> None:
    class Fixed:
        name = "dense"

        def retrieve(self, queries: Sequence[Query], k: int = 10, **kw: object) -> list[list[Hit]]:
            return [_cands(["i0", "i1", "i2", "i3"])[:k] for _ in queries]

    pipe = RetrievalPipeline(
        Fixed(), [RerankStage(ListwiseReranker(BiasedScorer(0.0), _corpus()), k=4)], k_retrieve=4
    )
    hits = pipe.retrieve([Query(text="a green circle")], k=2)[0]
    assert hits[0].id == "i1"
    assert set(hits[0].scores) == {"dense", "listwise"}


# ------------------------------------------------------------------ real scorers, tiny models
def _tiny_lm():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = (
        ["<pad>", "<eos>", "<unk>"]
        + list("ABCDEFGH")
        + [
            "Request:",
            "Options:",
            "Answer:",
            ".",
            "a",
            "circle",
            *COLOURS,
            "Which",
            "option",
            "best",
            "matches",
            "the",
            "request?",
            "with",
            "letter",
            "of",
            "one",
            "only",
            "You",
            "rank",
            "images",
            "for",
            "search",
            "engine",
            "Answer",
        ]
    )
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
    )
    return transformers.LlamaForCausalLM(cfg), tok


def test_hf_letter_scorer_matches_manual_logits() -> None:
    import torch

    model, tok = _tiny_lm()
    scorer = HFLetterScorer(model, tok, system=None, batch_size=2)
    prompts = [
        ListwisePrompt("a red circle", ["a red circle", "a blue circle"]),
        ListwisePrompt("a blue circle", ["a red circle", "a blue circle", "a green circle"]),
        ListwisePrompt("a green circle", ["a green circle", "a blue circle"]),
    ]
    got = scorer.letter_logprobs(prompts)
    assert got.shape == (3, 3)
    assert np.isneginf(got[0, 2]) and np.isneginf(got[2, 2])
    np.testing.assert_allclose(np.exp(got[1]).sum(), 1.0, rtol=1e-6)
    # Unbatched, unpadded reference for prompt 1 (batching and left padding change nothing).
    ids = tok(scorer._text(prompts[1]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    letters = [tok.convert_tokens_to_ids(c) for c in "ABC"]
    ref = torch.log_softmax(logits[letters], dim=-1).numpy()
    np.testing.assert_allclose(got[1], ref, atol=1e-4)
    assert scorer.cost()["llm_calls"] == 3.0


def test_letter_token_ids_need_single_tokens() -> None:
    _, tok = _tiny_lm()
    assert letter_token_ids(tok, ["A", "B"]) == [
        [tok.convert_tokens_to_ids("A")],
        [tok.convert_tokens_to_ids("B")],
    ]
    with pytest.raises(ValueError, match="single token for option letter 'Z'"):
        letter_token_ids(tok, ["Z"])


def _fake_chat(responses):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    return GenericFakeChatModel(messages=iter(responses))


def test_chat_model_scorer_reads_logprobs() -> None:
    from langchain_core.messages import AIMessage

    top = [
        {"token": "B", "logprob": -0.1},
        {"token": " A", "logprob": -2.5},
        {"token": "Sure", "logprob": -4.0},
    ]
    reply = AIMessage(
        content="B",
        response_metadata={
            "logprobs": {"content": [{"token": "B", "logprob": -0.1, "top_logprobs": top}]}
        },
    )
    scorer = ChatModelLetterScorer(_fake_chat([reply]), system=None, floor_logprob=-30.0)
    got = scorer.letter_logprobs([ListwisePrompt("a red circle", ["x", "y", "z"])])
    raw = np.array([-2.5, -0.1, -30.0])
    np.testing.assert_allclose(got[0], raw - np.logaddexp.reduce(raw))


def test_chat_model_without_logprobs_is_an_error_not_option_a() -> None:
    from langchain_core.messages import AIMessage

    scorer = ChatModelLetterScorer(_fake_chat([AIMessage(content="A")]))
    rr = ListwiseReranker(scorer, _corpus(), window=2, n_permutations=1)
    with pytest.raises(LogitsUnavailableError, match="no token log-probabilities"):
        rr.rerank([Query(text="a red circle")], [_cands(["i0", "i1"])])


def test_vision_scorer_shows_images_in_display_order() -> None:
    import torch
    from PIL import Image

    from vistrieve.rerankers.listwise import HFVisionLetterScorer

    _, tok = _tiny_lm()
    vocab = len(tok)
    seen: dict[str, object] = {}

    class Processor:
        tokenizer = tok

        def apply_chat_template(self, messages, add_generation_prompt):  # type: ignore[no-untyped-def]
            seen["messages"] = messages
            return "chat:"

        def __call__(self, text, images, return_tensors):  # type: ignore[no-untyped-def]
            seen["text"], seen["images"] = text, images

            class Enc(dict):
                def to(self, device):  # type: ignore[no-untyped-def]
                    return self

            return Enc(input_ids=torch.zeros(1, 5, dtype=torch.long))

    class Model(torch.nn.Module):
        def forward(self, input_ids):  # type: ignore[no-untyped-def]
            logits = torch.zeros(1, 5, vocab)
            logits[0, -1, tok.convert_tokens_to_ids("B")] = 2.0  # prefers the second image
            return type("Out", (), {"logits": logits})()

    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    scorer = HFVisionLetterScorer(Model(), Processor(), system=None)
    prompt = ListwisePrompt("a blue square", ["<image>", "<image>"], images=[red, blue])
    got = scorer.letter_logprobs([prompt])
    assert seen["images"] == [red, blue] and seen["text"] == "chat:Answer:"
    parts = seen["messages"][0]["content"]  # type: ignore[index]
    assert [p["type"] for p in parts].count("image") == 2
    np.testing.assert_allclose(
        np.exp(got[0]), [1 / (1 + np.e**2), np.e**2 / (1 + np.e**2)], rtol=1e-5
    )
    with pytest.raises(ValueError, match="2 options but 1 images"):
        scorer.letter_logprobs([ListwisePrompt("q", ["<image>", "<image>"], images=[red])])
