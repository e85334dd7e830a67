from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vistrieve.rerankers.qformer import (
    QFormerConfig,
    QFormerCrossEncoder,
    QFormerReranker,
    TextVocabulary,
    train_qformer,
)
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
    from vistrieve.rerankers.qformer import EMBEDDED, install_embedded_qformer

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
    from vistrieve.rerankers.qformer import clip_patch_tokens, train_qformer_reranker

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
