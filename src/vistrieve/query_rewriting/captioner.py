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


RETRIEVAL_BANK_TEXT = "bank_text.npy"
RETRIEVAL_BANK_IMAGE = "bank_image.npy"
RETRIEVAL_BANK_CAPTIONS = "bank_captions.json"


class RetrievalCaptioner:
    """Retrieval-augmented captions: the human caption of a bank that best fits the image.

    Nothing is generated, so every caption is fluent; what a caption can say is bounded by
    the bank (the Flickr8k training captions describe people, dogs and outdoor scenes well,
    kitchens poorly). For each image the ``k`` bank captions with the highest *fit* are
    candidates, where fit is the image-to-caption similarity of ``encoder`` plus
    ``visual_weight`` times the similarity of the image to the caption's own bank image
    (visual neighbours, when the bank holds image embeddings). Candidates are then reranked
    by fit plus ``consensus`` times their mean text similarity to the other candidates:
    the caption most neighbours agree with wins (the consensus reranking of nearest-neighbour
    captioning, Devlin et al. 2015), which removes the odd caption that matches one detail.

    With a bridge encoder (``bridge-lite1``) the image side is the EfficientNet classifier's
    ImageNet classes mapped into MiniLM's text space, so the candidates are the bank captions
    closest to the image's top classes.

    Args:
        encoder: An image-text encoder (``encode_image``, ``encode_text``).
        captions: The bank's captions.
        text_embeddings: ``encoder.encode_text(captions)`` (N, d), L2-normalised.
        image_embeddings: Optional embeddings of the bank's images (M, d).
        image_of: For each caption, the row of its image in ``image_embeddings``.
        k: Candidates per image.
        consensus: Weight of the agreement among candidates.
        visual_weight: Weight of the image-to-bank-image similarity.
        name: Name recorded in caches and reports.
        batch_size: Images encoded per call.

    Raises:
        ValueError: an empty bank, embeddings that do not match the captions, or ``k < 1``.
    """

    def __init__(
        self,
        encoder: Any,
        captions: Sequence[str],
        text_embeddings: np.ndarray,
        *,
        image_embeddings: np.ndarray | None = None,
        image_of: Sequence[int] | None = None,
        k: int = 40,
        consensus: float = 4.0,
        visual_weight: float = 4.0,
        name: str = "retrieval-captioner",
        batch_size: int = 64,
    ) -> None:
        self.captions = [str(c) for c in captions]
        if not self.captions:
            raise ValueError("the caption bank is empty; build it from a corpus with captions")
        text = np.asarray(text_embeddings, dtype=np.float32)
        if text.ndim != 2 or len(text) != len(self.captions):
            raise ValueError(
                f"text_embeddings has shape {text.shape}; expected ({len(self.captions)}, d), "
                "one row per bank caption"
            )
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.text = _unit_rows(text)
        self.image: np.ndarray | None = None
        self.image_of: np.ndarray | None = None
        if image_embeddings is not None:
            image = np.asarray(image_embeddings, dtype=np.float32)
            rows = np.asarray(image_of if image_of is not None else [], dtype=np.int64)
            if len(rows) != len(self.captions):
                raise ValueError(
                    "image_of must give, for each of the "
                    f"{len(self.captions)} bank captions, the row of its image; got {len(rows)}"
                )
            if image.ndim != 2 or image.shape[1] != text.shape[1]:
                raise ValueError(
                    f"image_embeddings has shape {image.shape}; expected (M, {text.shape[1]})"
                )
            if len(rows) and (rows.min() < 0 or rows.max() >= len(image)):
                raise ValueError(f"image_of points outside the {len(image)} bank images")
            self.image, self.image_of = _unit_rows(image), rows
        self.encoder = encoder
        self.k = int(k)
        self.consensus = float(consensus)
        self.visual_weight = float(visual_weight)
        self.name = name
        self.batch_size = batch_size

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        encoder: Any,
        corpus: Any,
        *,
        visual: bool = True,
        progress: bool = True,
        **kw: Any,
    ) -> RetrievalCaptioner:
        """A bank from a :class:`~vistrieve.types.Corpus` (every item's captions; with
        ``visual``, its images' embeddings too).

        Raises:
            ValueError: the corpus holds no captions.
        """
        captions: list[str] = []
        image_of: list[int] = []
        images: list[Any] = []
        for item in corpus.values():
            if not item.captions:
                continue
            if visual:
                if item.image is None:
                    raise ValueError(
                        f"item {item.id!r} has captions but no image; build with visual=False "
                        "for a text-only bank"
                    )
                images.append(item.image)
            for cap in item.captions:
                captions.append(cap)
                image_of.append(len(images) - 1)
        if not captions:
            raise ValueError(
                "the corpus has no captions to bank; a retrieval captioner needs a captioned "
                "corpus such as the Flickr8k training split"
            )
        text = _encode_chunks(encoder.encode_text, captions, 512, "bank captions", progress)
        image = None
        if visual:
            image = _encode_chunks(
                lambda xs: encoder.encode_image([load_image(x) for x in xs]),
                images, 64, "bank images", progress,
            )  # fmt: skip
        return cls(
            encoder,
            captions,
            text,
            image_embeddings=image,
            image_of=image_of if visual else None,
            **kw,
        )

    # ------------------------------------------------------------------ captioning
    def _fit(self, feats: np.ndarray) -> np.ndarray:
        fit = feats @ self.text.T
        if self.image is not None and self.image_of is not None and self.visual_weight:
            fit += self.visual_weight * (feats @ self.image.T)[:, self.image_of]
        return fit

    def describe_features(
        self, features: np.ndarray, n: int = 5, *, exclude: Sequence[int] | None = None
    ) -> list[list[str]]:
        """The ``n`` best bank captions (best first) for each image feature row.

        Args:
            features: Image embeddings (B, d) of the bank's encoder.
            n: Captions per image.
            exclude: Per row, a bank image whose captions may not be used (leave-one-out
                evaluation on the bank's own images); needs a bank built with images.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        feats = _unit_rows(np.atleast_2d(np.asarray(features, dtype=np.float32)))
        if feats.shape[1] != self.text.shape[1]:
            raise ValueError(
                f"image features have {feats.shape[1]} dimensions; the bank has "
                f"{self.text.shape[1]}: caption with the encoder the bank was built with"
            )
        k = min(self.k, len(self.captions))
        fit = self._fit(feats)
        if exclude is not None:
            if self.image_of is None:
                raise ValueError("exclude needs a bank built with images (visual=True)")
            if len(exclude) != len(fit):
                raise ValueError(f"exclude has {len(exclude)} rows for {len(fit)} images")
            for row, img in zip(fit, exclude, strict=True):
                row[self.image_of == img] = -np.inf
            k = min(k, int(np.isfinite(fit).sum(axis=1).min()))
            if k < 1:
                raise ValueError("no bank caption is left once the excluded images are removed")
        cand = np.argpartition(-fit, k - 1, axis=1)[:, :k]
        out: list[list[str]] = []
        for row, idx in zip(fit, cand, strict=True):
            score = row[idx].astype(np.float64)
            if self.consensus and k > 1:
                t = self.text[idx]
                sims = t @ t.T
                agree = (sims.sum(axis=1) - np.diag(sims)) / (k - 1)
                score = score + self.consensus * agree
            order = idx[np.argsort(-score, kind="stable")]
            seen: set[str] = set()
            best: list[str] = []
            for i in order:
                text = " ".join(self.captions[i].split())
                if text.lower() not in seen:
                    seen.add(text.lower())
                    best.append(text)
                if len(best) == n:
                    break
            out.append(best)
        return out

    def describe(self, images: Sequence[Any], n: int = 5) -> list[list[str]]:
        """The ``n`` best bank captions for each image (evidence for the dialog agent)."""
        out: list[list[str]] = []
        for s in range(0, len(images), self.batch_size):
            batch = [load_image(im) for im in images[s : s + self.batch_size]]
            out.extend(self.describe_features(np.asarray(self.encoder.encode_image(batch)), n))
        return out

    def caption_features(self, features: np.ndarray) -> list[str]:
        """One caption per image feature row."""
        return [best[0] for best in self.describe_features(features, n=1)]

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image."""
        return [best[0] for best in self.describe(images, n=1)]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the bank and ``captioner.json`` (kind, settings, the encoder's spec), swapping
        the directory in atomically."""
        from vistrieve.encoders import encoder_spec
        from vistrieve.utils.io import (
            FORMAT_VERSION,
            atomic_directory,
            atomic_save_npy,
            atomic_write_json,
        )

        with atomic_directory(directory, marker=CAPTIONER_FILE) as tmp:
            atomic_save_npy(tmp / RETRIEVAL_BANK_TEXT, self.text)
            if self.image is not None:
                atomic_save_npy(tmp / RETRIEVAL_BANK_IMAGE, self.image)
            atomic_write_json(
                tmp / RETRIEVAL_BANK_CAPTIONS,
                {
                    "captions": self.captions,
                    "image_of": None if self.image_of is None else self.image_of.tolist(),
                },
            )
            atomic_write_json(
                tmp / CAPTIONER_FILE,
                {
                    "format_version": FORMAT_VERSION,
                    "kind": "retrieval",
                    "name": self.name,
                    "encoder": encoder_spec(self.encoder),
                    "k": self.k,
                    "consensus": self.consensus,
                    "visual_weight": self.visual_weight,
                },
            )

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], encoder: Any = None, **kw: Any
    ) -> RetrievalCaptioner:
        """A captioner written by :meth:`save`; the encoder is rebuilt from its recorded spec
        unless given (it must be the one the bank was embedded with).

        Raises:
            FileNotFoundError: ``directory`` holds no retrieval captioner.
            ValueError: a corrupt bank.
        """
        from vistrieve.utils.io import load_npy, read_json, recover_directory

        root = Path(directory)
        recover_directory(root)
        meta_file = root / CAPTIONER_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{root} holds no retrieval captioner ({CAPTIONER_FILE}); build one with "
                "`vistrieve train photo-captioner`"
            )
        meta = read_json(meta_file)
        if meta.get("kind") != "retrieval":
            raise ValueError(f"{root} holds a {meta.get('kind')!r} captioner, not a retrieval one")
        bank = read_json(root / RETRIEVAL_BANK_CAPTIONS)
        image_file = root / RETRIEVAL_BANK_IMAGE
        if encoder is None:
            from vistrieve.encoders import create_encoder

            encoder = create_encoder(meta["encoder"], progress=False)
        for key in ("k", "consensus", "visual_weight", "name"):
            if key in meta:
                kw.setdefault(key, meta[key])
        return cls(
            encoder,
            bank["captions"],
            load_npy(root / RETRIEVAL_BANK_TEXT),
            image_embeddings=load_npy(image_file) if image_file.is_file() else None,
            image_of=bank.get("image_of"),
            **kw,
        )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _encode_chunks(
    encode: Any, items: Sequence[Any], chunk: int, what: str, progress: bool
) -> np.ndarray:
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(items), desc=f"embed {what}", disable=not progress) as bar:
        for s in range(0, len(items), chunk):
            parts.append(np.asarray(encode(list(items[s : s + chunk])), dtype=np.float32))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)
