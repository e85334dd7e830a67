from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vistrieve.pipeline import RerankStage, RetrievalPipeline
from vistrieve.rerankers.blip2 import Blip2ItmReranker
from vistrieve.types import Corpus, Hit, Item, Query

WORDS = ["[PAD]", "[UNK]", "[CLS]", "a", "red", "blue", "circle", "square", "and"]


@pytest.fixture(scope="module")
def parts():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    cfg = Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        qformer_config=dict(
            vocab_size=len(WORDS),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            pad_token_id=0,
            use_qformer_text_input=True,
        ),
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(cfg).eval()
    proc = BlipImageProcessor(size={"height": 32, "width": 32})
    rng = np.random.default_rng(0)
    corpus = Corpus(
        [
            Item(f"i{n}", image=Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
            for n in range(5)
        ]
    )
    return model, tokenizer, proc, corpus


def _reranker(parts, **kw):  # type: ignore[no-untyped-def]
    model, tokenizer, proc, corpus = parts
    return Blip2ItmReranker(model, tokenizer, proc, corpus, **kw)


def test_scores_match_the_model_heads(parts) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, proc, corpus = parts
    rr = _reranker(parts)
    s = rr.score_pairs(["a red circle", "a blue square"], ["i1", "i3"])
    pixels = proc(images=[corpus["i1"].image, corpus["i3"].image], return_tensors="pt")[
        "pixel_values"
    ]
    enc = tokenizer(["a red circle", "a blue square"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        itm = model(
            pixel_values=pixels,
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            use_image_text_matching_head=True,
        ).logits_per_image[:, 1]
        itc = model(
            pixel_values=pixels,
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            use_image_text_matching_head=False,
        ).logits_per_image.diagonal()
    torch.testing.assert_close(s["itm"], itm, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s["itc"], itc, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s["score"], itm + itc)  # the LAVIS fusion


def test_modes_batching_and_cost(parts) -> None:  # type: ignore[no-untyped-def]
    cands = [[Hit(f"i{n}", 0.0, scores={"dense": 0.0}) for n in range(5)]]
    q = [Query(text="a red circle and a blue square")]
    full = _reranker(parts).rerank(q, cands)[0]
    small = _reranker(parts, batch_size=2).rerank(q, cands)[0]
    assert [h.id for h in full] == [h.id for h in small]
    assert [h.score for h in full] == sorted((h.score for h in full), reverse=True)
    top = full[0]
    assert set(top.scores) == {"dense", "blip2", "blip2.itm", "blip2.itc"}
    assert top.score == pytest.approx(top.scores["blip2.itm"] + top.scores["blip2.itc"])
    itm_only = _reranker(parts, mode="itm").rerank(q, cands)[0]
    by_id = {h.id: h for h in full}
    assert all(
        h.score == pytest.approx(by_id[h.id].scores["blip2.itm"], abs=1e-5) for h in itm_only
    )
    rr = _reranker(parts)
    rr.rerank(q * 2, cands * 2, top_k=2)
    assert rr.cost() == {"pairs_evaluated": 10.0, "images_encoded": 5.0}


def test_in_a_pipeline(parts) -> None:  # type: ignore[no-untyped-def]
    class First:
        name = "dense"

        def retrieve(self, queries, k=10):  # type: ignore[no-untyped-def]
            return [
                [Hit(f"i{n}", 1.0 - n / 10, scores={"dense": 1.0 - n / 10}) for n in range(5)][:k]
                for _ in queries
            ]

    pipe = RetrievalPipeline(First(), [RerankStage(_reranker(parts), k=3)])
    hits = pipe.retrieve([Query(text="a red circle")], k=3)[0]
    assert {h.id for h in hits} == {"i0", "i1", "i2"}
    assert all("dense" in h.scores and "blip2" in h.scores for h in hits)


def test_bad_input(parts) -> None:  # type: ignore[no-untyped-def]
    rr = _reranker(parts)
    with pytest.raises(KeyError, match="'nope' is not in the reranker's corpus"):
        rr.rerank([Query(text="a")], [[Hit("nope", 0.0)]])
    with pytest.raises(ValueError, match="image-only"):
        rr.rerank([Query(image=Image.new("RGB", (4, 4)))], [[Hit("i0", 0.0)]])
    with pytest.raises(ValueError, match="2 queries but 1 candidate"):
        rr.rerank([Query(text="a"), Query(text="b")], [[Hit("i0", 0.0)]])
    assert rr.rerank([Query(text="a")], [[]]) == [[]]
    with pytest.raises(ValueError, match="mode"):
        _reranker(parts, mode="itm*itc")
