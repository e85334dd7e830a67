from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vistrieve.encoders.lit import LitEncoder, LitHeads, MeanPoolTextTower, map_lukemelas_state_dict
from vistrieve.training.lit import evaluate_heads, train_heads


def _tiny_text_tower() -> MeanPoolTextTower:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "a", "dog", "cat", "runs", "on", "grass", "beach"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
        )
    ).eval()
    return MeanPoolTextTower(bert, tokenizer)


class _TinyImageTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def _encoder(heads: LitHeads | None = None) -> LitEncoder:
    from torchvision import transforms as T

    torch.manual_seed(1)
    pre = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    return LitEncoder(
        _TinyImageTower(),
        _tiny_text_tower(),
        heads or LitHeads(16, 32, 8),
        pre,
        name="tiny-lit",
        num_workers=0,
    )


def test_shapes_normalisation_and_padding_invariance() -> None:
    from PIL import Image

    enc = _encoder()
    t = enc.encode_text(["a dog runs", "a cat on grass on a beach"])
    i = enc.encode_image([Image.new("RGB", (40, 40), (200, 10, 10)), Image.new("RGB", (40, 40))])
    assert t.shape == (2, 8) and i.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    # Mean pooling ignores padding: a text embeds the same alone and in a longer batch.
    np.testing.assert_allclose(enc.encode_text(["a dog runs"])[0], t[0], atol=1e-5)


def test_heads_round_trip(tmp_path: Path) -> None:
    heads = LitHeads(16, 32, 8)
    heads.save(tmp_path, meta={"note": "x"})
    again = LitHeads.load(tmp_path)
    a, b = _encoder(heads), _encoder(again)
    np.testing.assert_array_equal(a.encode_text(["a dog"]), b.encode_text(["a dog"]))
    (tmp_path / "heads.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        LitHeads.load(tmp_path)


def test_training_lowers_loss_and_beats_random() -> None:
    rng = np.random.default_rng(0)
    concepts = rng.standard_normal((60, 12)).astype(np.float32)
    img = np.concatenate([concepts, rng.standard_normal((60, 4)).astype(np.float32)], 1)
    t2i = np.repeat(np.arange(60), 2)
    txt = concepts[t2i] @ rng.standard_normal((12, 20)) + 0.1 * rng.standard_normal((120, 20))
    txt = txt.astype(np.float32)
    heads, losses = train_heads(img, txt, t2i, embed_dim=16, epochs=40, batch_size=30)
    assert losses[-1] < losses[0] * 0.5
    trained = evaluate_heads(heads, img, txt, t2i)
    random = evaluate_heads(LitHeads(16, 20, 16), img, txt, t2i)
    assert trained["text_to_image_R@1"] > random["text_to_image_R@1"] + 0.3


def test_lukemelas_mapping() -> None:
    target = {
        "a.weight": torch.zeros(2, 3),
        "bn.num_batches_tracked": torch.tensor(0),
        "bn.weight": torch.zeros(3),
    }
    source = {
        "x.w": torch.ones(2, 3),
        "x.bn.num_batches_tracked": torch.tensor(5),
        "x.bn.w": torch.ones(3),
    }
    out = map_lukemelas_state_dict(source, target)
    assert list(out) == ["a.weight", "bn.weight"] and out["a.weight"].sum() == 6
    with pytest.raises(ValueError, match="2 tensors but the timm model expects 1"):
        map_lukemelas_state_dict(source, {"a.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="shape mismatch"):
        map_lukemelas_state_dict(source, {"a.weight": torch.zeros(3, 3), "b": torch.zeros(3)})


def test_real_towers(shared_data: Path) -> None:
    try:
        from vistrieve.encoders.lit import (
            effnet_weights_path,
            load_effnet_lite0,
            load_minilm,
            minilm_dir,
        )

        effnet_weights_path()
        minilm_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from vistrieve.encoders.lit import effnet_preprocess
    from vistrieve.utils.images import load_image

    tower = load_effnet_lite0()
    pre = effnet_preprocess()
    files = sorted((shared_data / "flickr8k-1k" / "images").glob("*.jpg"))[:2]
    with torch.inference_mode():
        feats = tower(torch.stack([pre(load_image(f)) for f in files]))
    assert feats.shape == (2, 1280) and not torch.allclose(feats[0], feats[1])
    text = load_minilm()
    with torch.inference_mode():
        e = torch.nn.functional.normalize(
            text(
                [
                    "a dog runs on the grass",
                    "a puppy running in a field",
                    "a plate of pasta with tomato sauce",
                ]
            ),
            dim=-1,
        )
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
