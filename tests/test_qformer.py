from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vistrieve.rerankers.qformer import (
    QFormerConfig,
    QFormerCrossEncoder,
    QFormerReranker,
    TextVocabulary,
)
from vistrieve.training.qformer import train_qformer
from vistrieve.types import Corpus, Hit, Item, Query

WORDS = ["pad", "a", "red", "blue", "circle", "square", "and"]


def _tokenize(texts: list[str]) -> torch.Tensor:
    rows = [[WORDS.index(w) + 10 for w in t.split()] for t in texts]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


CFG = QFormerConfig(
    width=32, layers=2, heads=4, num_queries=4, max_text_len=8, image_dim=6, vocab_size=12
)


def test_vocabulary_and_padding() -> None:
    vocab = TextVocabulary.build(_tokenize, ["a red circle", "a blue square"])
    assert len(vocab) == 7  # 5 words + pad + unknown
    enc = vocab.encode(["a red circle", "and"], 8)
    assert enc.shape == (2, 3) and int(enc[1, 0]) == 1 and int(enc[1, 1]) == 0
    torch.manual_seed(0)
    model = QFormerCrossEncoder(CFG).eval()
    img = torch.randn(1, 5, 6)
    short = model(img, enc[:1])
    padded = model(img, torch.cat([enc[:1], torch.zeros(1, 4, dtype=torch.long)], 1))
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)


def test_training_lowers_the_listwise_loss() -> None:
    torch.manual_seed(0)
    n = 16
    image_tokens = torch.randn(n, 5, 6)
    texts = [f"{WORDS[1 + i % 3]} {WORDS[3 + i // 3 % 3]} {WORDS[1 + i // 9]}" for i in range(n)]
    vocab = TextVocabulary.build(_tokenize, texts)
    model = QFormerCrossEncoder(CFG)
    losses = train_qformer(
        model,
        vocab,
        image_tokens,
        texts,
        [{i} for i in range(n)],
        [[(i + 1) % n, (i + 2) % n] for i in range(n)],
        steps=80,
        batch_size=8,
        n_neg=3,
        lr=3e-3,
        progress=False,
    )
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_rerank_save_load_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    tokens = {f"i{k}": torch.randn(5, 6) for k in range(4)}
    corpus = Corpus([Item(k, image=k) for k in tokens])  # the "image" is its id here

    def image_tokens(images):  # type: ignore[no-untyped-def]
        return torch.stack([tokens[i] for i in images])

    vocab = TextVocabulary.build(_tokenize, ["a red circle and a blue square"])
    rr = QFormerReranker(QFormerCrossEncoder(CFG), vocab, image_tokens, corpus)
    cands = [[Hit(k, 0.0, scores={"dense": 0.0}) for k in tokens]]
    out = rr.rerank([Query(text="a red circle")], cands, top_k=3)[0]
    assert len(out) == 3 and set(out[0].scores) == {"dense", "qformer"}
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
    assert rr.cost()["pairs_evaluated"] == 4
    rr.save(tmp_path)
    model, token_ids, name = QFormerReranker.load_model(tmp_path)
    again = QFormerReranker(
        model, TextVocabulary(_tokenize, token_ids), image_tokens, corpus, name=name
    )
    assert [
        (h.id, h.score) for h in again.rerank([Query(text="a red circle")], cands, top_k=3)[0]
    ] == [(h.id, h.score) for h in out]
    with pytest.raises(KeyError, match="'zz'"):
        rr.rerank([Query(text="a")], [[Hit("zz", 0.0)]])
    with pytest.raises(ValueError, match="2 queries but 1"):
        rr.rerank([Query(text="a"), Query(text="b")], cands)
    with pytest.raises(ValueError, match="divisible"):
        QFormerConfig(width=30, heads=4)


def test_dense_residual_starts_at_the_dual_encoder_ranking(tmp_path: Path) -> None:
    import dataclasses

    cfg = dataclasses.replace(CFG, dense_residual=True, dense_scale_init=5.0)
    torch.manual_seed(2)
    tokens = {f"i{k}": torch.randn(5, 6) for k in range(4)}
    corpus = Corpus([Item(k, image=k) for k in tokens])
    cos = {"i0": 0.1, "i1": 0.9, "i2": 0.5, "i3": -0.2}

    def image_tokens(images):  # type: ignore[no-untyped-def]
        return torch.stack([tokens[i] for i in images])

    def dense(texts, ids):  # type: ignore[no-untyped-def]
        return torch.tensor([cos[i] for i in ids])

    vocab = TextVocabulary.build(_tokenize, ["a red circle"])
    model = QFormerCrossEncoder(cfg)
    with pytest.raises(ValueError, match="dense="):
        QFormerReranker(model, vocab, image_tokens, corpus)
    rr = QFormerReranker(model, vocab, image_tokens, corpus, dense=dense)
    cands = [[Hit(k, 0.0) for k in tokens]]
    out = rr.rerank([Query(text="a red circle")], cands)[0]
    assert [h.id for h in out] == ["i1", "i2", "i0", "i3"]
    assert out[0].score == pytest.approx(5.0 * 0.9)
    with pytest.raises(ValueError, match="dense"):
        model(torch.randn(1, 5, 6), torch.ones(1, 3, dtype=torch.long))
    # Training moves away from the anchor only where it lowers the loss.
    n = 8
    texts = [f"{WORDS[1 + i % 3]} {WORDS[3 + i // 3 % 3]}" for i in range(n)]
    emb_t, emb_i = torch.nn.functional.normalize(torch.randn(2, n, 4), dim=-1)
    losses = train_qformer(
        model,
        TextVocabulary.build(_tokenize, texts),
        torch.randn(n, 5, 6),
        texts,
        [{i} for i in range(n)],
        [[(i + 1) % n] for i in range(n)],
        steps=60,
        batch_size=4,
        n_neg=2,
        lr=3e-3,
        progress=False,
        dense=(emb_t, emb_i),
    )
    assert sum(losses[-10:]) < sum(losses[:10])
    rr.save(tmp_path)
    loaded, _, _ = QFormerReranker.load_model(tmp_path)
    assert loaded.config.dense_residual
    assert float(loaded.log_dense_scale.detach()) == pytest.approx(
        float(model.log_dense_scale.detach())
    )


def test_install_embedded_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vistrieve.encoders.embedded as embedded
    from vistrieve.recipes.shapes.qformer import install_embedded_qformer
    from vistrieve.rerankers.qformer import EMBEDDED

    monkeypatch.setattr(embedded, "WEIGHTS_DIR", tmp_path / "weights")
    torch.manual_seed(3)
    vocab = TextVocabulary.build(_tokenize, ["a red circle"])
    rr = QFormerReranker(QFormerCrossEncoder(CFG), vocab, lambda ims: ims, Corpus())
    rr.save(tmp_path / "trained")
    installed = install_embedded_qformer(tmp_path / "trained")
    assert installed.parent == tmp_path / "weights"
    model, token_ids, _ = QFormerReranker.load_model(EMBEDDED)
    assert token_ids == vocab.token_ids
    img, txt = torch.randn(2, 5, 6), vocab.encode(["a red circle"] * 2, 8)
    # float16 storage: scores agree to half precision.
    torch.testing.assert_close(model(img, txt), rr.model(img, txt), atol=2e-2, rtol=2e-2)
    with pytest.raises(FileNotFoundError, match="saved Q-Former"):
        QFormerReranker.load_model(tmp_path / "nowhere")


def test_train_qformer_reranker_end_to_end(tmp_path: Path) -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.rerankers.qformer import clip_patch_tokens
    from vistrieve.training.qformer import train_qformer_reranker

    encoder = create_encoder("clip-tiny-test", progress=False)
    corpus = ShapesWorld(seed=0, n_train=12, n_val=0, n_test=0, swap_fraction=0.0).corpus("train")
    seen: list[tuple[str, str, list[str]]] = []

    def positives_of(caption: str, owner: str, mined: list[str]) -> set[str]:
        seen.append((caption, owner, mined))
        return {mined[-1]} if mined[-1] != owner else set()

    record = train_qformer_reranker(
        encoder,
        corpus,
        clip_patch_tokens(encoder),
        encoder.tokenizer,  # type: ignore[attr-defined]
        tmp_path / "qf",
        steps=3,
        k_mine=4,
        n_hard=2,
        batch_size=4,
        positives_of=positives_of,
        progress=False,
        command="test",
    )
    assert record["train_captions"] == len(seen) == sum(len(it.captions) for it in corpus.values())
    assert all(len(m) == 4 for _, _, m in seen)
    assert record["mined_true_matches_moved_to_positives"] > 0
    assert (tmp_path / "qf" / "train_record.json").is_file()
    model, _, _ = QFormerReranker.load_model(tmp_path / "qf")
    assert model.config.dense_residual and model.config.image_dim == 32  # ViT width


def test_vocabulary_encode_matches_a_per_token_mapping_and_caches() -> None:
    import numpy as np
    import torch

    from vistrieve.rerankers.qformer import TextVocabulary

    table = {"a": 5, "red": 9, "circle": 40000, "blue": 7}

    def tokenize(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 6, dtype=torch.long)
        for r, t in enumerate(texts):
            for c, w in enumerate(t.split()[:6]):
                out[r, c] = table.get(w, 60000)  # 60000: a token never seen in training
        return out

    vocab = TextVocabulary.build(tokenize, ["a red circle", "a blue"])
    texts = ["a red circle", "a green circle", "a blue", "a red circle"]
    got = vocab.encode(texts, max_len=4)
    raw = tokenize(texts)[:, :4].numpy()
    compact = {t: i + 2 for i, t in enumerate(vocab.token_ids)}
    want = np.vectorize(lambda v: 0 if v == 0 else compact.get(int(v), 1))(raw)
    assert np.array_equal(got.numpy(), want)
    assert got[1, 1].item() == 1  # "green": unknown
    assert torch.equal(vocab.encode(["a blue"], max_len=4), got[2:3])  # cached, same ids


def test_warm_caches_patch_tokens_and_dense_embeddings() -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.rerankers.qformer import clip_pair_similarity, clip_patch_tokens

    encoder = create_encoder("clip-tiny-test", progress=False)
    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=6, swap_fraction=0.0).corpus("test")
    texts = [c for it in corpus.values() for c in it.captions]
    vocab = TextVocabulary.build(encoder.tokenizer, texts)  # type: ignore[attr-defined]
    cfg = QFormerConfig(width=32, layers=1, heads=4, num_queries=2, image_dim=32,
                        vocab_size=len(vocab), dense_residual=True)  # fmt: skip
    dense = clip_pair_similarity(encoder, corpus)
    rr = QFormerReranker(QFormerCrossEncoder(cfg), vocab, clip_patch_tokens(encoder), corpus,
                         dense=dense)  # fmt: skip
    assert rr.warm() == len(corpus) and rr.warm() == 0
    assert set(dense.images) == set(corpus)
    passes = encoder.image_passes  # type: ignore[attr-defined]
    hits = [Hit(id=i, score=0.0) for i in corpus]
    rr.rerank([Query(text=texts[0])], [hits])
    assert encoder.image_passes == passes  # type: ignore[attr-defined]  # nothing re-encoded


def _reference_states(  # type: ignore[no-untyped-def]
    model: QFormerCrossEncoder, image: torch.Tensor, ids: torch.Tensor, *, causal: bool = False
):
    """Every pair through every layer, all rows: the textbook Q-Former pass (BLIP-2's ITG
    mask when ``causal``: queries see queries, text sees the queries and earlier text)."""
    nq, (b, t) = model.config.num_queries, ids.shape
    x = torch.cat([model.queries.expand(b, -1, -1), model.token_emb(ids) + model.pos_emb[:t]], 1)
    keep = torch.cat([torch.ones(b, nq, dtype=torch.bool), ids != 0], 1)[:, None, None, :]
    if causal:
        mask = torch.zeros(nq + t, nq + t, dtype=torch.bool)
        mask[:, :nq] = True
        mask[nq:, nq:] = torch.ones(t, t, dtype=torch.bool).tril()
        keep = mask[None, None] & keep
    img = model.image_proj(image) + (model.image_pos if model.config.image_tokens else 0)
    for layer in model.layers:
        h = layer.ln1(x)
        x = x + layer.self_attn.attend(h, *layer.self_attn.kv(h), keep)
        q = x[:, :nq]
        q = q + layer.cross_attn.attend(layer.ln2(q), *layer.cross_attn.kv(img))
        x = torch.cat([q, x[:, nq:]], 1)
        x = x + layer.mlp(layer.ln3(x))
    return model.ln(x)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_itm_shortcuts_match_the_full_forward(layers: int) -> None:
    import dataclasses

    torch.manual_seed(layers)
    cfg = dataclasses.replace(CFG, layers=layers, image_tokens=5)
    model = QFormerCrossEncoder(cfg).eval()
    torch.nn.init.normal_(model.itm_head.weight)
    image = torch.randn(9, 5, 6)
    ids = torch.randint(1, 12, (9, 6))
    ids[:4] = ids[0]  # one text against four images, as in reranking
    ids[5:, 4:] = 0  # padding
    with torch.no_grad():
        states = _reference_states(model, image, ids)[:, : cfg.num_queries]
        want = model.itm_head(states.mean(1)).squeeze(-1)
        torch.testing.assert_close(model.itm_logit(image, ids), want)
    with pytest.raises(ValueError, match="5 image tokens"):
        model(torch.randn(1, 4, 6), ids[:1])
    with pytest.raises(ValueError, match="max_text_len"):
        model(image[:1], torch.ones(1, 9, dtype=torch.long))


def test_weights_with_packed_attention_projections_load() -> None:
    torch.manual_seed(4)
    model = QFormerCrossEncoder(CFG).eval()
    packed = {}
    for key, value in model.state_dict().items():
        stem, _, leaf = key.rpartition(".")
        attn, _, proj = stem.rpartition(".")
        if proj in ("q_proj", "k_proj", "v_proj"):
            if proj == "q_proj":  # nn.MultiheadAttention's layout: one in_proj for q, k, v
                parts = [
                    model.state_dict()[f"{attn}.{p}.{leaf}"] for p in ("q_proj", "k_proj", "v_proj")
                ]
                packed[f"{attn}.in_proj_{leaf}"] = torch.cat(parts)
        else:
            packed[key] = value
    assert any("in_proj_weight" in k for k in packed)
    again = QFormerCrossEncoder(CFG).eval()
    again.load_state_dict(packed)
    image, ids = torch.randn(3, 5, 6), torch.randint(1, 12, (3, 4))
    torch.testing.assert_close(again(image, ids), model(image, ids))


def test_captioning_head_is_causal_and_ignores_padding() -> None:
    import dataclasses

    torch.manual_seed(5)
    model = QFormerCrossEncoder(dataclasses.replace(CFG, captioning=True)).eval()
    image = torch.randn(2, 5, 6)
    ids = torch.tensor([[2, 3, 4, 5, 6], [2, 3, 4, 5, 7]])
    with torch.no_grad():
        per_token = model.token_logprobs(image[:1].expand(2, -1, -1), ids)
        # A later token does not change what the earlier ones were predicted from.
        torch.testing.assert_close(per_token[0, :3], per_token[1, :3])
        assert not torch.allclose(per_token[0, 3], per_token[1, 3])
        padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
        torch.testing.assert_close(
            model.text_logprob(image, padded), model.text_logprob(image, ids)
        )
        assert (model.token_logprobs(image, padded)[:, 4:] == 0).all()
        # Log-probabilities of a distribution over the vocabulary.
        assert (per_token < 0).all()
        total = model.text_logprob(image, ids)
        torch.testing.assert_close(total, model.token_logprobs(image, ids).sum(1))
        # lm_weight adds the log-likelihood to the matching logit.
        mixed = dataclasses.replace(model.config, lm_weight=0.5)
        model.config = mixed
        torch.testing.assert_close(
            model(image, ids), model.matching_logit(image, ids) + 0.5 * total
        )
        # Both terms from one encoding of the image; the captioning one only when asked.
        matching, lm = model.score_terms(image, ids)
        torch.testing.assert_close(matching, model.matching_logit(image, ids))
        assert lm is not None
        torch.testing.assert_close(lm, total)
        assert model.score_terms(image, ids, captioning=False)[1] is None
    with pytest.raises(ValueError, match="captioning"):
        QFormerCrossEncoder(CFG).text_logprob(image, ids)
    with pytest.raises(ValueError, match="lm_weight needs captioning"):
        dataclasses.replace(CFG, lm_weight=1.0)


def test_captioning_training_lowers_the_captioning_loss() -> None:
    import dataclasses

    import numpy as np

    from vistrieve.training.qformer import captioning_loss

    torch.manual_seed(6)
    n = 12
    image_tokens = torch.randn(n, 5, 6)
    # Each image's caption is fixed by the image: learnable only by looking at it.
    texts = [f"a {WORDS[2 + i % 2]} {WORDS[4 + i // 2 % 2]}" for i in range(n)]
    vocab = TextVocabulary.build(_tokenize, texts)
    model = QFormerCrossEncoder(dataclasses.replace(CFG, captioning=True))
    ids = vocab.encode(texts, 8)
    rows = np.arange(n)
    with torch.no_grad():
        before = float(captioning_loss(model, image_tokens, ids, rows, rows))
    with pytest.raises(ValueError, match="captioning_steps must be"):
        train_qformer(model, vocab, image_tokens, texts, [{i} for i in rows], [[]] * n,
                      steps=5, captioning_steps=6, progress=False)  # fmt: skip
    losses = train_qformer(
        model, vocab, image_tokens, texts, [{i} for i in rows],
        [[(i + 1) % n] for i in rows], steps=80, batch_size=4, n_neg=2, lr=3e-3,
        captioning_steps=40, captioning_weight=1.0, captioning_batch_size=8, progress=False,
    )  # fmt: skip
    assert len(losses) == 80
    with torch.no_grad():
        after = float(captioning_loss(model, image_tokens, ids, rows, rows))
    assert after < 0.6 * before
    with pytest.raises(ValueError, match="captioning=True"):
        train_qformer(QFormerCrossEncoder(CFG), vocab, image_tokens, texts,
                      [{i} for i in rows], [[]] * n, steps=5, captioning_steps=2,
                      progress=False)  # fmt: skip


def test_choose_lm_weight_scores_each_weight_on_mined_candidates() -> None:
    import dataclasses

    from vistrieve.training.qformer import MinedData, choose_lm_weight

    torch.manual_seed(7)
    n = 6
    model = QFormerCrossEncoder(dataclasses.replace(CFG, captioning=True)).eval()
    texts = [f"a {WORDS[2 + i % 2]} circle" for i in range(n)]
    vocab = TextVocabulary.build(_tokenize, texts)
    data = MinedData(
        items=[], image_tokens=torch.randn(n, 5, 6), texts=texts,
        positives=[{i} for i in range(n)], negatives=[[(i + 1) % n, (i + 2) % n] for i in range(n)],
        dense=None, extra_positives=0,
    )  # fmt: skip
    table = choose_lm_weight(model, vocab, data, (0.0, 1.0, 1e6))
    assert set(table) == {0.0, 1.0, 1e6}
    ids = vocab.encode(texts, 8)

    def r1(score) -> float:  # type: ignore[no-untyped-def]
        hits = 0
        for r in range(n):
            cands = [r, *data.negatives[r]]
            with torch.no_grad():
                s = score(data.image_tokens[cands], ids[r : r + 1].expand(3, -1))
            hits += bool(s[0] > s[1:].max())
        return 100.0 * hits / n

    assert table[0.0] == pytest.approx(r1(model.matching_logit))
    assert table[1e6] == pytest.approx(r1(model.text_logprob))
    with pytest.raises(ValueError, match="captioning head"):
        choose_lm_weight(QFormerCrossEncoder(CFG), vocab, data)


def test_train_qformer_reranker_with_captioning_chooses_lm_weight(tmp_path: Path) -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.rerankers.qformer import clip_patch_tokens
    from vistrieve.training.qformer import train_qformer_reranker

    encoder = create_encoder("clip-tiny-test", progress=False)
    world = ShapesWorld(seed=0, n_train=10, n_val=5, n_test=0, swap_fraction=0.0)
    record = train_qformer_reranker(
        encoder, world.corpus("train"), clip_patch_tokens(encoder),
        encoder.tokenizer,  # type: ignore[attr-defined]
        tmp_path / "qf", steps=4, k_mine=4, batch_size=4, progress=False, layers=1,
        captioning_steps=2, captioning_weight=0.5, val_corpus=world.corpus("val"),
        lm_weights=(0.0, 2.0),
    )  # fmt: skip
    table = record["validation_r1_by_lm_weight"]
    assert set(table) == {"0.0", "2.0"} and all(0 <= v <= 100 for v in table.values())
    best = max(table, key=lambda w: (table[w], -float(w)))
    model, _, _ = QFormerReranker.load_model(tmp_path / "qf")
    assert model.config.captioning and model.config.layers == 1
    assert model.config.lm_weight == float(best) == record["config"]["lm_weight"]
    assert model.config.image_tokens == 16  # 32 px / 8 px patches of the tiny test ViT


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_captioning_shortcuts_match_the_full_causal_forward(layers: int) -> None:
    import dataclasses

    torch.manual_seed(10 + layers)
    model = QFormerCrossEncoder(dataclasses.replace(CFG, layers=layers, captioning=True)).eval()
    image = torch.randn(7, 5, 6)
    ids = torch.randint(1, 12, (7, 6))
    ids[:3] = ids[0]
    ids[4:, 3:] = 0
    with torch.no_grad():
        text = _reference_states(model, image, ids, causal=True)[:, CFG.num_queries : -1]
        logp = torch.log_softmax(model.lm_head(text), -1)
        want = logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * (ids[:, 1:] != 0)
        torch.testing.assert_close(model.token_logprobs(image, ids), want)


def test_eval_cli_takes_a_reranking_pipeline_as_a_method(tmp_path: Path) -> None:
    import json

    from vistrieve.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--dataset", "shapes", "--shapes-n", "12", "--encoder", "shapes-clip",
                 "--rerank", "embedded", "--rerank-k", "4", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    label = "shapes-clip + qformer (k=4, replace)"
    assert set(report["methods"]) == {"shapes-clip", label}
    reranked = report["methods"][label]
    assert "shapes-test_text_to_image_R@1" in reranked["metrics"]
    assert not any("image_to_text" in key for key in reranked["metrics"])  # text queries only
    # R@5 and R@10 come from the reranked top 4, the rest of the list is dropped.
    assert (
        reranked["metrics"]["shapes-test_text_to_image_R@5"]
        <= report["methods"]["shapes-clip"]["metrics"]["shapes-test_text_to_image_R@5"] + 1e-9
    )
    with pytest.raises(SystemExit, match="retrieval"):
        main(["eval", "--dataset", "shapes", "--task", "composed", "--encoder", "shapes-clip",
              "--rerank", "embedded", "--out", str(out)])  # fmt: skip


def test_pair_similarity_warms_all_images_in_one_encoder_call() -> None:
    """One encode call for the whole corpus: each call starts the encoder's decode workers."""
    import numpy as np

    from vistrieve.rerankers.qformer.features import PairSimilarity
    from vistrieve.types import Corpus, Item

    class CountingEncoder:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def encode_image(self, images: list[str]) -> np.ndarray:
            self.calls.append(len(images))
            return np.stack([np.full(3, float(im.split("-")[1])) for im in images])

    corpus = Corpus([Item(id=f"i{n}", image=f"img-{n}") for n in range(600)])
    enc = CountingEncoder()
    sim = PairSimilarity(enc, corpus)
    assert sim.warm(list(corpus)) == 600 and enc.calls == [600]
    assert sim.warm(["i3", "i599"]) == 0 and enc.calls == [600]  # cached: no call
    assert sim.images["i599"].tolist() == [599.0, 599.0, 599.0]
