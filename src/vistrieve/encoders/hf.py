"""transformers backend: CLIP, SigLIP and other dual encoders with ``get_*_features``.

Works with any transformers model exposing ``get_text_features`` and ``get_image_features``
(``CLIPModel``, ``SiglipModel``, ``Siglip2Model`` ...). The encoder is built from ready
objects; :meth:`HFClipEncoder.from_pretrained` loads a hub name or a local directory. SigLIP
was trained with texts padded to the maximum length, so that is the default for SigLIP
models (as its model card prescribes).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vistrieve.encoders.base import TorchEncoder


def _features(out: Any) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output holds the projected
    # embedding; older versions return the tensor itself.
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected feature output {type(out).__name__}")


class HFClipEncoder(TorchEncoder):
    """Encoder around a transformers dual-encoder model.

    Args:
        model: A model with ``get_text_features`` and ``get_image_features``.
        tokenizer: Its tokenizer (callable returning ``input_ids``/``attention_mask``).
        image_processor: Its image processor (PIL image -> ``pixel_values``).
        name: Identifier written into index manifests.
        padding: Text padding strategy (``"max_length"`` for SigLIP, ``True`` otherwise).
        max_length: Maximum text length in tokens (default: the model's position limit).
        device, batch_size, num_workers, progress: As for every torch encoder.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        *,
        name: str,
        padding: bool | str | None = None,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            device=device, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
        self.padding = (
            padding
            if padding is not None
            else ("max_length" if model_type.startswith("siglip") else True)
        )
        text_cfg = getattr(getattr(model, "config", None), "text_config", None)
        self.max_length = max_length or int(getattr(text_cfg, "max_position_embeddings", 77))
        self.preprocess = self._preprocess
        with torch.inference_mode():
            self.dim = int(self._text_features(["a"]).shape[-1])

    def _preprocess(self, image: Any) -> torch.Tensor:
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return pixels[0]

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> HFClipEncoder:
        """Load a transformers dual encoder from a hub name or a local directory.

        Raises:
            FileNotFoundError: a local-looking path that does not exist.
        """
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        path = os.fspath(name_or_path)
        if (path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]) and (
            not os.path.exists(os.path.expanduser(path))
        ):
            raise FileNotFoundError(f"model directory not found: {path}")
        model = AutoModel.from_pretrained(path, torch_dtype=torch_dtype)
        for attr in ("get_text_features", "get_image_features"):
            if not hasattr(model, attr):
                raise ValueError(
                    f"{path} loads as {type(model).__name__}, which has no {attr}; "
                    "use a CLIP/SigLIP-style dual encoder"
                )
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
        return cls(model, tokenizer, image_processor, name=f"hf:{path}", device=device, **kwargs)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return _features(self.model.get_image_features(pixel_values=pixels.to(dtype)))  # type: ignore[operator]

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        kwargs = {"input_ids": enc["input_ids"].to(self.device)}
        if "attention_mask" in enc and self.padding != "max_length":
            kwargs["attention_mask"] = enc["attention_mask"].to(self.device)
        return _features(self.model.get_text_features(**kwargs))  # type: ignore[operator]
