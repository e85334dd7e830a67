"""open_clip backend: any open_clip architecture, pretrained tag, hub name or local checkpoint.

Architecture and weights are kept apart as in open_clip's ``factory.py`` and timm's
``pretrained=False``: ``OpenClipEncoder.from_pretrained("ViT-B-32")`` builds a randomly
initialised model; weights load only when asked for (``pretrained="laion2b_s34b_b79k"``, a
local checkpoint file, ``"hf-hub:org/repo"`` or ``"local-dir:/path"`` as the model name).
vistrieve's own architectures (``vistrieve-tiny-test``, ``vistrieve-shapes-vit``) ship as JSON
configs in ``vistrieve/presets/open_clip`` and are registered with open_clip on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from vistrieve.encoders.base import TorchEncoder

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "open_clip"
_registered = False


def register_open_clip_presets() -> None:
    """Make vistrieve's JSON architectures known to open_clip (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(PRESET_DIR)
    _registered = True


def list_open_clip_presets() -> list[str]:
    """Names of the open_clip architectures that ship with vistrieve."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


class OpenClipEncoder(TorchEncoder):
    """Encoder around a built open_clip model.

    Args:
        model: An open_clip ``CLIP``-like module with ``encode_image``/``encode_text``.
        preprocess: The image transform (PIL -> tensor) matching the model.
        tokenizer: open_clip tokenizer (list of str -> LongTensor).
        name: Identifier written into index manifests (e.g. ``"open_clip:ViT-B-32:openai"``).
        device: Torch device for the model.
        batch_size: Batch size for both modalities.
        num_workers: DataLoader workers decoding images (default: up to 4, 0 on one core).
        progress: Force progress bars on/off (default: on for multi-batch work).

    Example:
        >>> enc = OpenClipEncoder.from_pretrained("vistrieve-tiny-test")
        >>> enc.encode_text(["a red circle"]).shape
        (1, 32)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        *,
        name: str,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            device=device, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.dim = _embed_dim(self.model)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        pretrained: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> OpenClipEncoder:
        """Build an open_clip model and wrap it.

        Args:
            model: Architecture name (``"ViT-B-32"``), ``"hf-hub:org/repo"`` or
                ``"local-dir:/path"``.
            pretrained: A pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``), a path to a
                checkpoint file, or None for random initialisation.
            device: Torch device.
            precision: open_clip precision string (``"fp32"``, ``"bf16"``, ``"fp16"``).
            cache_dir: Where open_clip caches downloads.
            **kwargs: Passed to the encoder constructor (batch_size, num_workers, progress).

        Raises:
            FileNotFoundError: ``pretrained`` looks like a path but does not exist.
            ValueError: unknown architecture or pretrained tag (lists what is available).
        """
        import open_clip

        register_open_clip_presets()
        pretrained_arg: str | None = None
        if pretrained is not None:
            pretrained_arg = os.fspath(pretrained)
            looks_like_path = os.sep in pretrained_arg or pretrained_arg.endswith(
                (".pt", ".pth", ".bin", ".safetensors")
            )
            if looks_like_path and not os.path.isfile(pretrained_arg):
                raise FileNotFoundError(f"checkpoint file not found: {pretrained_arg}")
        schema_name = model.startswith(("hf-hub:", "local-dir:"))
        if not schema_name and model not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
            raise ValueError(
                f"unknown open_clip architecture {model!r}"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                + " (see open_clip.list_models())"
            )
        if (
            pretrained_arg
            and not schema_name
            and os.sep not in pretrained_arg
            and not os.path.isfile(pretrained_arg)
        ):
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained_arg not in tags:
                raise ValueError(
                    f"unknown pretrained tag {pretrained_arg!r} for {model!r}; "
                    f"available: {', '.join(tags) or 'none'} (or give a checkpoint path)"
                )
        net, _, preprocess = open_clip.create_model_and_transforms(
            model,
            pretrained=pretrained_arg,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
        )
        tokenizer = open_clip.get_tokenizer(model)
        tag = "random" if pretrained_arg is None else pretrained_arg
        if pretrained_arg is not None and os.path.isfile(pretrained_arg):
            tag = Path(pretrained_arg).name
        return cls(
            net, preprocess, tokenizer, name=f"open_clip:{model}:{tag}", device=device, **kwargs
        )

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(pixels.to(dtype))  # type: ignore[operator]

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)  # type: ignore[operator]


def _embed_dim(model: torch.nn.Module) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    visual = getattr(model, "visual", None)
    out = getattr(visual, "output_dim", None)
    if isinstance(out, int):
        return out
    raise ValueError(f"cannot infer the embedding dimension of {type(model).__name__}")
