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
