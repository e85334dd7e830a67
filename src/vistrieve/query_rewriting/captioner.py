"""Captioners: transformers image-to-text models, and a small one trained on the shapes world.

* :class:`HFCaptioner` runs BLIP, BLIP-2, GIT or any transformers image-to-text model by hub
  name or local path.
* :class:`PrefixCaptioner` decodes a caption from an image encoder's feature vector with a
  small language model (the image enters as prefix embeddings, as in
  :class:`~vistrieve.generative.model.GraceModel`);
  :func:`vistrieve.training.captioner.train_captioner` trains one (the shapes world's takes
  a few CPU minutes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistrieve.generative.model import GraceModel
from vistrieve.utils.images import load_image

CAPTIONER_FILE = "captioner.json"


class HFCaptioner:
    """A transformers image-to-text model (BLIP, BLIP-2, GIT, ...).

    Args:
        model: A model with ``generate(pixel_values=...)``.
        processor: Its processor (image preprocessing + tokenizer).
        name: Name recorded in caches and reports.
        prompt: Optional text prefix (BLIP's conditional captioning: "a picture of").
        max_new_tokens: Longest caption.
        batch_size: Images per ``generate`` call.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "hf-captioner",
        prompt: str | None = None,
        max_new_tokens: int = 30,
        batch_size: int = 16,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **kw: Any) -> HFCaptioner:
        """Load a captioning model and its processor by hub name or local path."""
        import transformers

        processor = transformers.AutoProcessor.from_pretrained(name_or_path)
        model = None
        errors = []
        for auto in (
            "AutoModelForImageTextToText",
            "AutoModelForVision2Seq",
            "AutoModelForCausalLM",
        ):
            cls_ = getattr(transformers, auto, None)
            if cls_ is None:
                continue
            try:
                model = cls_.from_pretrained(name_or_path)
                break
            except (ValueError, KeyError) as exc:
                errors.append(f"{auto}: {exc}")
        if model is None:
            raise ValueError(f"{name_or_path} is not an image-to-text model: {'; '.join(errors)}")
        kw.setdefault("name", str(name_or_path))
        return cls(model, processor, **kw)

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image."""
        out: list[str] = []
        for s in range(0, len(images), self.batch_size):
            ims = [load_image(im).convert("RGB") for im in images[s : s + self.batch_size]]
            kw: dict[str, Any] = {"images": ims, "return_tensors": "pt"}
            if self.prompt:
                kw["text"] = [self.prompt] * len(ims)
            inputs = self.processor(**kw)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            if (
                self.prompt
                and "input_ids" in inputs
                and not getattr(self.model.config, "is_encoder_decoder", False)
            ):
                ids = ids[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out.extend(" ".join(t.split()) for t in texts)
        return out


class PrefixCaptioner:
    """Captions from image-encoder features through a small LM (greedy decoding).

    Args:
        model: A :class:`GraceModel` trained with caption targets (see
            :func:`train_captioner`).
        encoder: The image encoder whose features the model was trained on.
        name: Name recorded in caches and reports.
        max_new_tokens: Longest caption.
    """

    def __init__(
        self, model: GraceModel, encoder: Any, *, name: str = "prefix-captioner",
        max_new_tokens: int = 32, batch_size: int = 64,
    ) -> None:  # fmt: skip
        self.model = model.eval()
        self.encoder = encoder
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def caption_features(self, features: np.ndarray) -> list[str]:
        """Captions of feature vectors (N, image_dim)."""
        out: list[str] = []
        for s in range(0, len(features), self.batch_size):
            emb, mask = self.model.image_source(features[s : s + self.batch_size])
            out.extend(self.model.generate_text(emb, mask, max_new_tokens=self.max_new_tokens))
        return out

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image."""
        feats = np.asarray(self.encoder.encode_image([load_image(im) for im in images]))
        return self.caption_features(feats)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """The underlying model (see :meth:`GraceModel.save`) and ``captioner.json`` (kind,
        name and the image encoder's spec, so that :meth:`load` needs no encoder)."""
        from vistrieve.encoders import encoder_spec
        from vistrieve.utils.io import FORMAT_VERSION, atomic_write_json

        self.model.save(directory)
        atomic_write_json(
            Path(directory) / CAPTIONER_FILE,
            {
                "format_version": FORMAT_VERSION,
                "kind": "prefix",
                "name": self.name,
                "encoder": encoder_spec(self.encoder),
            },
        )

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], encoder: Any = None, **kw: Any
    ) -> PrefixCaptioner:
        """A captioner written by :meth:`save`; the image encoder is rebuilt from the spec
        ``captioner.json`` records unless ``encoder`` is given.

        Raises:
            FileNotFoundError: ``directory`` holds no captioner model.
            ValueError: no encoder given and none recorded.
        """
        from vistrieve.utils.io import read_json

        root = Path(directory)
        if not (root / "grace_config.json").is_file():
            raise FileNotFoundError(f"{root} holds no captioner model (no grace_config.json)")
        meta_file = root / CAPTIONER_FILE
        meta = read_json(meta_file) if meta_file.is_file() else {}
        if encoder is None:
            if not meta.get("encoder"):
                raise ValueError(
                    f"{root} records no image encoder; pass encoder= (the encoder whose "
                    "features the captioner was trained on)"
                )
            from vistrieve.encoders import create_encoder

            encoder = create_encoder(meta["encoder"], progress=False)
        model, _ = GraceModel.load(root)
        if meta.get("name"):
            kw.setdefault("name", meta["name"])
        return cls(model.float(), encoder, **kw)
