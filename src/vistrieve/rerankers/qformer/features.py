"""What a Q-Former reads from its dual encoder: image patch tokens, text token ids, and the
dual encoder's pair cosine (the dense anchor of ``dense_residual`` models).

:func:`image_tower_functions` turns any supported encoder into those functions: an open_clip
ViT gives its patch tokens, a timm CNN tower (the LiT baseline's EfficientNet) its last
feature map; text is tokenised with the encoder's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vistrieve.types import Item


def clip_patch_tokens(encoder: Any) -> Callable[[list[Any]], torch.Tensor]:
    """Patch tokens (N, P, width) of an open_clip ViT encoder's frozen image tower."""
    from vistrieve.utils.images import load_image

    visual = encoder.model.visual

    def fn(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([encoder.preprocess(load_image(im)) for im in images])
        old = visual.output_tokens
        visual.output_tokens = True
        try:
            with torch.inference_mode():
                _, tokens = visual(pixels)
        finally:
            visual.output_tokens = old
        # A copy made outside inference mode: inference tensors cannot take part in training.
        return tokens.float().clone()

    return fn


class PairSimilarity:
    """``(texts, image ids) -> cosines`` of a dual encoder, caching both sides' embeddings.

    The dense anchor of a ``dense_residual`` Q-Former. Image embeddings are cached per id
    (:meth:`warm` encodes them ahead of queries), text embeddings per string (a query's text
    is encoded once for all its candidates).
    """

    def __init__(
        self, encoder: Any, corpus: Mapping[str, Item], *, max_cached_texts: int = 100_000
    ) -> None:
        self.encoder = encoder
        self.corpus = corpus
        self.max_cached_texts = max_cached_texts
        self.images: dict[str, np.ndarray] = {}
        self.texts: dict[str, np.ndarray] = {}

    def warm(self, ids: Sequence[str]) -> int:
        """Encode and cache the images of ``ids``; returns how many were new."""
        new_ids = [i for i in dict.fromkeys(ids) if i not in self.images]
        for i in new_ids:
            if i not in self.corpus:
                raise KeyError(f"candidate {i!r} is not in the reranker's corpus")
        if new_ids:
            # One call: the encoder batches and decodes in its own workers; a call per chunk
            # would start those workers again for every chunk (minutes at 100,000 images).
            emb = self.encoder.encode_image([self.corpus[i].image for i in new_ids])
            self.images.update(zip(new_ids, emb, strict=True))
        return len(new_ids)

    def __call__(self, batch_texts: Sequence[str], ids: Sequence[str]) -> torch.Tensor:
        self.warm(ids)
        new_texts = [t for t in dict.fromkeys(batch_texts) if t not in self.texts]
        if new_texts:
            if len(self.texts) + len(new_texts) > self.max_cached_texts:
                self.texts.clear()
            self.texts.update(zip(new_texts, self.encoder.encode_text(new_texts), strict=True))
        a = np.stack([self.texts[t] for t in batch_texts])
        b = np.stack([self.images[i] for i in ids])
        return torch.from_numpy((a * b).sum(1).astype(np.float32))


def clip_pair_similarity(
    encoder: Any, corpus: Mapping[str, Item], *, max_cached_texts: int = 100_000
) -> PairSimilarity:
    """The dual encoder's pair cosine with caches (see :class:`PairSimilarity`)."""
    return PairSimilarity(encoder, corpus, max_cached_texts=max_cached_texts)


def timm_patch_tokens(encoder: Any) -> Callable[[list[Any]], torch.Tensor]:
    """Patch tokens (N, H*W, C) of a frozen timm CNN image tower's last feature map.

    For encoders with an ``image_tower`` exposing timm's ``forward_features`` (the LiT
    baseline's EfficientNet-Lite0: 7 x 7 x 1280 at 224 px) and a ``preprocess`` transform.
    """
    from vistrieve.utils.images import load_image

    tower = encoder.image_tower

    def fn(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([encoder.preprocess(load_image(im)) for im in images])
        with torch.inference_mode():
            fmap = tower.forward_features(pixels.to(next(tower.parameters()).device))
        return fmap.flatten(2).transpose(1, 2).float().cpu().clone()

    return fn


def patch_tokens(encoder: Any) -> Callable[[list[Any]], torch.Tensor]:
    """Image patch tokens of ``encoder``'s frozen image tower (open_clip ViT or timm CNN).

    Raises:
        TypeError: the encoder has neither tower.
    """
    visual = getattr(getattr(encoder, "model", None), "visual", None)
    if visual is not None and hasattr(visual, "output_tokens"):
        return clip_patch_tokens(encoder)
    tower = getattr(encoder, "image_tower", None)
    if tower is not None and hasattr(tower, "forward_features"):
        return timm_patch_tokens(encoder)
    raise TypeError(
        f"encoder {getattr(encoder, 'name', type(encoder).__name__)!r} exposes no patch tokens "
        "(an open_clip ViT or a timm image tower is needed for a Q-Former)"
    )


def text_tokenizer(encoder: Any, max_length: int = 32) -> Callable[[list[str]], torch.Tensor]:
    """``texts -> token ids (n, L)`` (0 = padding) with ``encoder``'s own tokenizer: open_clip's
    BPE tokenizer, or a transformers tokenizer of the text tower (MiniLM for LiT).

    Raises:
        TypeError: the encoder has no tokenizer.
    """
    tok = getattr(encoder, "tokenizer", None)
    if callable(tok):
        return tok
    hf_tok = getattr(getattr(encoder, "text_tower", None), "tokenizer", None)
    if hf_tok is None:
        raise TypeError(
            f"encoder {getattr(encoder, 'name', type(encoder).__name__)!r} has no tokenizer"
        )

    def tokenize(texts: list[str]) -> torch.Tensor:
        enc = hf_tok(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return enc["input_ids"] * enc["attention_mask"]

    return tokenize
