from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistrieve.encoders import create_encoder, encoder_spec
from vistrieve.encoders.base import TorchEncoder
from vistrieve.utils.images import ImageLoadError


def _images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tiny() -> TorchEncoder:
    enc = create_encoder("clip-tiny-test", num_workers=0)
    assert isinstance(enc, TorchEncoder)
    return enc


def test_tiny_encoder_shapes_and_normalisation(tiny: TorchEncoder) -> None:
    t = tiny.encode_text(["a red circle", "a blue square", "a green star"])
    i = tiny.encode_image(_images(5))
    assert t.shape == (3, 32) and i.shape == (5, 32)
    assert t.dtype == np.float32 and i.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    assert not np.allclose(t[0], t[1])


def test_batching_does_not_change_results(tiny: TorchEncoder) -> None:
    imgs = _images(7)
    texts = [f"shape number {i}" for i in range(7)]
    full_i, full_t = tiny.encode_image(imgs), tiny.encode_text(texts)
    small = create_encoder("clip-tiny-test", batch_size=2, num_workers=0)
    np.testing.assert_allclose(small.encode_image(imgs), full_i, atol=1e-5)
    np.testing.assert_allclose(small.encode_text(texts), full_t, atol=1e-5)


def test_same_seed_same_model_other_seed_differs() -> None:
    a = create_encoder("clip-tiny-test", seed=1).encode_text(["x y"])
    b = create_encoder("clip-tiny-test", seed=1).encode_text(["x y"])
    c = create_encoder("clip-tiny-test", seed=2).encode_text(["x y"])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_paths_and_workers(tiny: TorchEncoder, tmp_path: Path) -> None:
    imgs = _images(6)
    paths = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"{i}.png"
        im.save(p)
        paths.append(str(p))
    enc = create_encoder("clip-tiny-test", batch_size=2, num_workers=2)
    np.testing.assert_allclose(enc.encode_image(paths), tiny.encode_image(imgs), atol=1e-5)


def test_unreadable_images(tiny: TorchEncoder, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = tmp_path / "good.png"
    _images(1)[0].save(good)
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        tiny.encode_image([str(good), str(bad)])
    with pytest.raises(ImageLoadError, match="not found"):
        tiny.encode_image([str(tmp_path / "missing.png")])
    emb, ok, failures = tiny.encode_image_tolerant([str(good), str(bad), str(good)])
    assert emb.shape == (2, 32) and ok == [0, 2]
    assert [f.index for f in failures] == [1] and "bad.jpg" in failures[0].source


def test_text_input_errors(tiny: TorchEncoder) -> None:
    with pytest.raises(TypeError, match="not one string"):
        tiny.encode_text("a red circle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text #1 is empty"):
        tiny.encode_text(["ok", "  "])
    with pytest.raises(TypeError, match="not one path"):
        tiny.encode_image("x.png")  # type: ignore[arg-type]


def test_pass_counters_and_spec(tiny: TorchEncoder) -> None:
    before = tiny.text_passes
    tiny.encode_text(["a", "b"])
    assert tiny.text_passes == before + 2
    assert encoder_spec(tiny) == {"name": "clip-tiny-test"}
    assert create_encoder(tiny) is tiny


def test_open_clip_factory_errors() -> None:
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-B-322'"):
        create_encoder("open_clip", model="ViT-B-322")
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        create_encoder("open_clip", model="vistrieve-tiny-test", pretrained="laion9000")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        create_encoder("open_clip", model="vistrieve-tiny-test", pretrained="/nope/w.safetensors")
    with pytest.raises(KeyError, match="unknown encoder"):
        create_encoder("opn_clip")


def test_open_clip_local_checkpoint_round_trip(tmp_path: Path) -> None:
    enc = create_encoder("open_clip", model="vistrieve-tiny-test", seed=3)
    ckpt = tmp_path / "tiny.pt"
    torch.save(enc.model.state_dict(), ckpt)  # type: ignore[attr-defined]
    loaded = create_encoder("open_clip", model="vistrieve-tiny-test", pretrained=str(ckpt), seed=4)
    np.testing.assert_allclose(
        loaded.encode_text(["a red circle"]), enc.encode_text(["a red circle"]), atol=1e-6
    )
    assert loaded.name.endswith("tiny.pt")


def _tiny_hf(kind: str) -> tuple[object, object, object]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipModel,
    )

    words = ["[PAD]", "[UNK]", "a", "red", "blue", "circle", "square"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(words),
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, tokenizer, proc


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_backend_tiny(kind: str, tmp_path: Path) -> None:
    from vistrieve.encoders.hf import HFClipEncoder

    model, tokenizer, proc = _tiny_hf(kind)
    enc = HFClipEncoder(model, tokenizer, proc, name=f"tiny-{kind}", num_workers=0)  # type: ignore[arg-type]
    assert enc.padding == ("max_length" if kind == "siglip" else True)
    t = enc.encode_text(["a red circle", "a blue square"])
    i = enc.encode_image(_images(3))
    assert t.shape == (2, enc.dim) and i.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    # Saved with save_pretrained, it loads back through from_pretrained from a local dir.
    model.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    proc.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    again = HFClipEncoder.from_pretrained(str(tmp_path), num_workers=0)
    np.testing.assert_allclose(again.encode_text(["a red circle", "a blue square"]), t, atol=1e-5)


def test_hf_missing_local_dir() -> None:
    from vistrieve.encoders.hf import HFClipEncoder

    with pytest.raises(FileNotFoundError, match="model directory not found"):
        HFClipEncoder.from_pretrained("./no/such/model")
