"""Hash heads, the VTFN fusion module and the CMSEH model, all over precomputed features.

CMSEH (cross-modal semantic embedding hashing) maps the features of any encoder (CLIP image
and text embeddings, or hand-made features such as the SIFT / LDA vectors of the Wikipedia
benchmark) to short binary codes, one head per modality:

* :class:`LinearHashHead`: linear (optionally a one-hidden-layer MLP) followed by ``tanh``;
  the relaxed code is the ``tanh`` output, the binary code its sign (DCMH, DSPH, UCMFH).
* :class:`SelectHashHead`: the DCHMT "select" layer (Tu et al., ACM MM 2022,
  kalenforn/DCHMT): ``2 * bits`` logits viewed as ``(bits, 2)``, a softmax over each pair,
  relaxed code ``p0 - p1``. DCHMT's own code maps the arg-max *second* entry to +1; the sign
  convention only flips every bit and does not change Hamming distances.
* :class:`VTFN`: the visual-textual fusion network, a small transformer (2 layers by
  default) over one image token and one text token ahead of the heads, as UCMFH fuses CLIP
  features with a 2-layer transformer encoder (XinyuXia97/UCMFH ``FuseTransEncoder``).

Single-modality inference. A query, and every database entry, has one modality: an image
is hashed from its image features alone and a caption from its text alone. VTFN therefore
runs at inference on a *one-token* sequence (the modality's own token; a single token
attends only to itself). Training mixes both sequence lengths by *modality dropout*: each
row of a batch is, with probability ``modality_dropout``, encoded one modality at a time
(two one-token sequences), otherwise as a paired two-token sequence in which the image and
text tokens attend to each other. The losses compare every image output with every text
output of the batch, so the fused (paired) outputs and the single-modality outputs are
pulled into one space, and single-token sequences are in distribution at inference. UCMFH,
in contrast, feeds the image *and* the text of every query through the fusion encoder at
test time; that needs both modalities for every query and is not done here.

Binary codes are ``+1`` where the relaxed code is ``> 0`` and ``-1`` elsewhere, everywhere
in vistrieve (heads, indexes, metrics), so packed bits are ``relaxed > 0``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.utils.io import (
    FORMAT_VERSION,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)

logger = logging.getLogger(__name__)

STANDARD_BITS: tuple[int, ...] = (16, 32, 64, 128)
"""The code lengths reported in the hashing literature (any positive multiple of 8 works)."""

HeadKind = Literal["linear", "select"]
MODEL_FILE = "hash_model.json"
WEIGHTS_FILE = "hash_model.safetensors"
_STD_EPS = 1e-6


def check_bits(bits: int) -> int:
    """Validate a code length: a positive multiple of 8.

    FAISS binary indexes store whole bytes, so a code of ``bits`` bits is ``bits // 8``
    ``uint8`` values.

    Raises:
        ValueError: ``bits`` is not a positive multiple of 8.

    Example:
        >>> check_bits(64)
        64
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if bits % 8:
        raise ValueError(
            f"bits must be divisible by 8 (binary codes are stored as whole bytes), got "
            f"{bits}; use one of {STANDARD_BITS}"
        )
    return int(bits)


def binarize(relaxed: torch.Tensor) -> torch.Tensor:
    """Binary codes from relaxed codes: ``+1`` where ``relaxed > 0``, else ``-1`` (same dtype)."""
    one = torch.ones((), dtype=relaxed.dtype, device=relaxed.device)
    return torch.where(relaxed > 0, one, -one)


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack codes ``(n, bits)`` (sign, 0/1 or relaxed; bit = value > 0) to ``uint8 (n, bits/8)``.

    The layout is ``np.packbits(..., axis=1)`` (most significant bit first), which FAISS
    ``IndexBinary*`` and :func:`vistrieve.evals.metrics.hamming_distance` read.
    """
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be 2-D (n, bits), got shape {arr.shape}")
    check_bits(arr.shape[1])
    return np.packbits(arr > 0, axis=1)


def _check_features(x: torch.Tensor, dim: int, what: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(
            f"{what} features must have shape (n, {dim}), got {tuple(x.shape)}; were they "
            "made by another encoder than the one the hash model was trained on?"
        )


# ------------------------------------------------------------------------------ heads
class HashHead(nn.Module):
    """Base of the hash heads: maps features ``(n, in_dim)`` to relaxed codes ``(n, bits)``.

    Relaxed codes lie in ``[-1, 1]``; :meth:`codes` binarises them with :func:`binarize`.
    """

    def __init__(self, in_dim: int, bits: int) -> None:
        super().__init__()
        if isinstance(in_dim, bool) or not isinstance(in_dim, int) or in_dim <= 0:
            raise ValueError(f"in_dim must be a positive int, got {in_dim!r}")
        self.in_dim = in_dim
        self.bits = check_bits(bits)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes ``(n, bits)`` in {-1, +1}, float, for features ``(n, in_dim)``."""
        return binarize(self(x))


def _trunk(in_dim: int, out_dim: int, hidden: int | None, dropout: float) -> nn.Module:
    out = nn.Linear(in_dim if hidden is None else hidden, out_dim)
    # A zero output bias puts every bit's threshold at the (centred) input mean, so an
    # untrained head already splits zero-mean features into balanced bits.
    nn.init.zeros_(out.bias)
    if hidden is None:
        return out
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), out)


class LinearHashHead(HashHead):
    """Linear (or MLP) + ``tanh`` hash head; the binary code is the sign of the output.

    Args:
        in_dim: Feature dimension.
        bits: Code length (a multiple of 8).
        hidden: Width of one hidden ReLU layer; ``None`` for a single linear layer.
        dropout: Dropout after the hidden layer.

    Example:
        >>> head = LinearHashHead(32, 16)
        >>> head(torch.randn(4, 32)).shape
        torch.Size([4, 16])
    """

    def __init__(
        self, in_dim: int, bits: int, *, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__(in_dim, bits)
        self.net = _trunk(in_dim, self.bits, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Relaxed codes ``tanh(W x + b)``: (n, bits) in (-1, 1)."""
        _check_features(x, self.in_dim, "input")
        return torch.tanh(self.net(x))


class SelectHashHead(HashHead):
    """DCHMT select layer: each bit is a 2-way softmax; relaxed code ``p0 - p1``.

    Args:
        in_dim: Feature dimension.
        bits: Code length (a multiple of 8).
        hidden: Width of one hidden ReLU layer (DCHMT uses 128); ``None`` for linear logits.
        dropout: Dropout after the hidden layer.

    Example:
        >>> head = SelectHashHead(32, 16)
        >>> head.probabilities(torch.randn(4, 32)).shape
        torch.Size([4, 16, 2])
    """

    def __init__(
        self, in_dim: int, bits: int, *, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__(in_dim, bits)
        self.net = _trunk(in_dim, 2 * self.bits, hidden, dropout)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Per-bit probabilities ``(n, bits, 2)`` (each pair sums to 1)."""
        _check_features(x, self.in_dim, "input")
        logits = self.net(x).view(x.shape[0], self.bits, 2)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Relaxed codes ``p0 - p1``: (n, bits) in [-1, 1]."""
        p = self.probabilities(x)
        return p[..., 0] - p[..., 1]


def make_head(
    kind: HeadKind, in_dim: int, bits: int, *, hidden: int | None = None, dropout: float = 0.0
) -> HashHead:
    """Build a hash head by name (``"linear"`` or ``"select"``)."""
    if kind == "linear":
        return LinearHashHead(in_dim, bits, hidden=hidden, dropout=dropout)
    if kind == "select":
        return SelectHashHead(in_dim, bits, hidden=hidden, dropout=dropout)
    raise ValueError(f"head must be 'linear' or 'select', got {kind!r}")


# ------------------------------------------------------------------------------- VTFN
class VTFN(nn.Module):
    """Visual-textual fusion network: a small transformer over image and text tokens.

    Each modality's features are projected to ``d_model`` (linear + LayerNorm) and given a
    learned modality embedding. Paired inputs form a two-token sequence (image, text) in
    which each token attends to the other; a single modality forms a one-token sequence.
    Rows never interact: the sequence axis holds the modalities, the batch axis the items.

    Args:
        image_dim: Image feature dimension.
        text_dim: Text feature dimension.
        d_model: Token width.
        layers: Transformer encoder layers (UCMFH uses 2).
        heads: Attention heads (must divide ``d_model``).
        dropout: Dropout inside the transformer.

    Example:
        >>> vtfn = VTFN(8, 6, d_model=16, heads=2)
        >>> img, txt = vtfn(torch.randn(3, 8), torch.randn(3, 6))
        >>> img.shape, txt.shape
        (torch.Size([3, 16]), torch.Size([3, 16]))
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        *,
        d_model: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.image_dim, self.text_dim, self.d_model = image_dim, text_dim, d_model
        self.image_in = nn.Sequential(nn.Linear(image_dim, d_model), nn.LayerNorm(d_model))
        self.text_in = nn.Sequential(nn.Linear(text_dim, d_model), nn.LayerNorm(d_model))
        self.modality = nn.Parameter(torch.randn(2, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=2 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def _token(self, x: torch.Tensor, which: int) -> torch.Tensor:
        proj = self.image_in if which == 0 else self.text_in
        return proj(x) + self.modality[which]

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Fused tokens: both inputs given -> paired two-token sequences, one -> one token.

        Args:
            image: Image features ``(n, image_dim)`` or None.
            text: Text features ``(n, text_dim)`` or None; with ``image``, row ``i`` of both
                is one pair.

        Returns:
            ``(image_out, text_out)``, each ``(n, d_model)`` or None when its input is None.
        """
        if image is None and text is None:
            raise ValueError("VTFN needs image features, text features or both")
        if image is not None and text is not None:
            if image.shape[0] != text.shape[0]:
                raise ValueError(
                    f"paired inputs need as many image rows ({image.shape[0]}) as text rows "
                    f"({text.shape[0]})"
                )
            seq = torch.stack([self._token(image, 0), self._token(text, 1)], dim=1)
            out = self.norm(self.encoder(seq))
            return out[:, 0], out[:, 1]
        if image is not None:
            return self.norm(self.encoder(self._token(image, 0)[:, None]))[:, 0], None
        assert text is not None
        return None, self.norm(self.encoder(self._token(text, 1)[:, None]))[:, 0]

    def forward_mixed(
        self, image: torch.Tensor, text: torch.Tensor, unimodal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality dropout: rows where ``unimodal`` is True are encoded one modality at a time.

        Args:
            image: Image features ``(n, image_dim)``.
            text: Text features ``(n, text_dim)``, row-aligned pairs.
            unimodal: Bool ``(n,)``; True rows get two one-token passes, the others one
                paired two-token pass.

        Returns:
            ``(image_out, text_out)``, each ``(n, d_model)``, in the input row order.
        """
        img_out = image.new_empty((image.shape[0], self.d_model))
        txt_out = image.new_empty((image.shape[0], self.d_model))
        uni = unimodal.nonzero().flatten()
        pair = (~unimodal).nonzero().flatten()
        if pair.numel():
            pi, pt = self(image[pair], text[pair])
            assert pi is not None and pt is not None
            img_out = img_out.index_put((pair,), pi)
            txt_out = txt_out.index_put((pair,), pt)
        if uni.numel():
            ui, _ = self(image[uni], None)
            _, ut = self(None, text[uni])
            assert ui is not None and ut is not None
            img_out = img_out.index_put((uni,), ui)
            txt_out = txt_out.index_put((uni,), ut)
        return img_out, txt_out


# ------------------------------------------------------------------------------ CMSEH
@dataclass(frozen=True)
class CMSEHConfig:
    """Architecture of a :class:`CMSEH` model (JSON-round-trippable).

    The four CMSEH ablation settings are: (a) coordinated embedding only:
    ``fusion=True, hashing=False``; (b) hashing without fusion: ``fusion=False``;
    (c) fusion without the semantic loss: ``fusion=True`` with a loss whose ``semantic`` is
    ``"none"``; (d) the full model: ``fusion=True`` with a semantic loss.
    """

    image_dim: int = field(metadata={"help": "dimension of the image features"})
    text_dim: int = field(metadata={"help": "dimension of the text features"})
    bits: int = field(default=64, metadata={"help": "code length, a multiple of 8"})
    head: HeadKind = field(
        default="linear", metadata={"help": "'linear' (tanh) or 'select' (DCHMT softmax pairs)"}
    )
    head_hidden: int | None = field(
        default=None, metadata={"help": "hidden width of an MLP head; None = linear head"}
    )
    fusion: bool = field(default=True, metadata={"help": "use the VTFN ahead of the heads"})
    hashing: bool = field(
        default=True, metadata={"help": "hash heads on; False = float coordinated embedding"}
    )
    shared_head: bool = field(
        default=False,
        metadata={"help": "one head for both modalities (needs equal head input dims)"},
    )
    d_model: int = field(default=128, metadata={"help": "VTFN token width / embedding dim"})
    fusion_layers: int = field(default=2, metadata={"help": "VTFN transformer layers"})
    fusion_heads: int = field(default=4, metadata={"help": "VTFN attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in VTFN and MLP heads"})
    modality_dropout: float = field(
        default=0.5,
        metadata={"help": "share of training rows encoded one modality at a time (VTFN)"},
    )
    standardize: bool = field(
        default=True,
        metadata={"help": "standardise features with training mean/std before the model"},
    )

    def __post_init__(self) -> None:
        for name in ("image_dim", "text_dim", "d_model", "fusion_layers", "fusion_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_bits(self.bits)
        if self.head not in ("linear", "select"):
            raise ValueError(f"head must be 'linear' or 'select', got {self.head!r}")
        if self.head_hidden is not None and self.head_hidden <= 0:
            raise ValueError(f"head_hidden must be positive or None, got {self.head_hidden}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {self.modality_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.fusion_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by fusion_heads ({self.fusion_heads})"
            )
        if self.shared_head and not self.fusion and self.image_dim != self.text_dim:
            raise ValueError(
                f"shared_head needs equal head input dims, got image {self.image_dim} and "
                f"text {self.text_dim} without fusion; set fusion=True or shared_head=False"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CMSEHConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CMSEHConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class HashOutput:
    """One training forward pass: embeddings ``(n, embed_dim)`` and relaxed codes ``(n, bits)``.

    ``image_relaxed`` / ``text_relaxed`` are None for a model without hash heads; ``*_probs``
    hold the select head's per-bit probabilities ``(n, bits, 2)`` (None for a linear head).
    ``learned_embedding`` is False when the embeddings are the (standardised) input features
    themselves (no VTFN, no projection), which a loss cannot train.
    """

    image_embedding: torch.Tensor
    text_embedding: torch.Tensor
    image_relaxed: torch.Tensor | None = None
    text_relaxed: torch.Tensor | None = None
    image_probs: torch.Tensor | None = None
    text_probs: torch.Tensor | None = None
    learned_embedding: bool = True


class CMSEH(nn.Module):
    """Cross-modal semantic embedding hashing over precomputed image and text features.

    ``features -> standardise -> [VTFN] -> embedding -> hash head -> relaxed code -> sign``.
    Without VTFN the heads read the standardised features directly (the embedding is then
    the features themselves, or a linear projection when ``hashing=False``).

    Args:
        config: The architecture.

    Example:
        >>> model = CMSEH(CMSEHConfig(image_dim=32, text_dim=32, bits=16, d_model=32))
        >>> model.image_codes(np.random.default_rng(0).standard_normal((5, 32))).shape
        (5, 16)
    """

    image_mean: torch.Tensor
    image_std: torch.Tensor
    text_mean: torch.Tensor
    text_std: torch.Tensor

    def __init__(self, config: CMSEHConfig) -> None:
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = {}
        c = config
        self.register_buffer("image_mean", torch.zeros(c.image_dim))
        self.register_buffer("image_std", torch.ones(c.image_dim))
        self.register_buffer("text_mean", torch.zeros(c.text_dim))
        self.register_buffer("text_std", torch.ones(c.text_dim))
        self.fusion: VTFN | None = None
        self.projections: nn.ModuleDict | None = None
        if c.fusion:
            self.fusion = VTFN(
                c.image_dim,
                c.text_dim,
                d_model=c.d_model,
                layers=c.fusion_layers,
                heads=c.fusion_heads,
                dropout=c.dropout,
            )
            image_out, text_out = c.d_model, c.d_model
        elif not c.hashing:
            self.projections = nn.ModuleDict(
                {
                    "image": nn.Linear(c.image_dim, c.d_model),
                    "text": nn.Linear(c.text_dim, c.d_model),
                }
            )
            image_out, text_out = c.d_model, c.d_model
        else:
            image_out, text_out = c.image_dim, c.text_dim
        self.embed_dims = (image_out, text_out)
        self.heads: nn.ModuleDict | None = None
        if c.hashing:
            kw: dict[str, Any] = {"hidden": c.head_hidden, "dropout": c.dropout}
            heads = {"image": make_head(c.head, image_out, c.bits, **kw)}
            if not c.shared_head:
                heads["text"] = make_head(c.head, text_out, c.bits, **kw)
            self.heads = nn.ModuleDict(heads)

    # -- properties ------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Code length (0 for a float-only model)."""
        return self.config.bits if self.config.hashing else 0

    @property
    def name(self) -> str:
        """Short description recorded in index manifests: ``cmseh-<head>-<bits>``."""
        c = self.config
        if not c.hashing:
            return f"cmseh-embedding-{c.d_model}"
        return f"cmseh-{c.head}{'-vtfn' if c.fusion else ''}-{c.bits}"

    def head(self, modality: Literal["image", "text"]) -> HashHead:
        """The hash head of a modality (the same module for both with ``shared_head``)."""
        if self.heads is None:
            raise ValueError("this model has no hash heads (hashing=False): use embeddings")
        key = "image" if self.config.shared_head else modality
        h = self.heads[key]
        assert isinstance(h, HashHead)
        return h

    # -- input statistics --------------------------------------------------------------------
    def fit_input_stats(self, image: np.ndarray, text: np.ndarray) -> None:
        """Set the per-dimension mean/std used to standardise each modality's features.

        Standardising centres the features, so an untrained head already splits them into
        balanced bits; the statistics are saved with the model.

        Args:
            image: Training image features ``(n, image_dim)``.
            text: Training text features ``(n, text_dim)``.
        """
        for name, x, dim in (
            ("image", image, self.config.image_dim),
            ("text", text, self.config.text_dim),
        ):
            t = torch.as_tensor(np.asarray(x, dtype=np.float32))
            _check_features(t, dim, name)
            if t.shape[0] < 2:
                raise ValueError(f"need at least 2 {name} rows to estimate statistics")
            mean, std = t.mean(0), t.std(0)
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std.clamp_min(_STD_EPS))

    def _prep(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        dim = self.config.image_dim if modality == "image" else self.config.text_dim
        _check_features(x, dim, modality)
        if not torch.isfinite(x).all():
            raise ValueError(f"{modality} features contain NaN or infinite values")
        if not self.config.standardize:
            return x
        mean = self.image_mean if modality == "image" else self.text_mean
        std = self.image_std if modality == "image" else self.text_std
        return (x - mean) / std

    # -- torch API ---------------------------------------------------------------------------
    def embed(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Single-modality embeddings (the inference path): each input encoded on its own.

        Returns:
            ``(image_embedding, text_embedding)``; None where the input is None.
        """
        img = self._prep(image, "image") if image is not None else None
        txt = self._prep(text, "text") if text is not None else None
        if self.fusion is not None:
            ie = self.fusion(img, None)[0] if img is not None else None
            te = self.fusion(None, txt)[1] if txt is not None else None
            return ie, te
        if self.projections is not None:
            ie = self.projections["image"](img) if img is not None else None
            te = self.projections["text"](txt) if txt is not None else None
            return ie, te
        return img, txt

    def relaxed(self, modality: Literal["image", "text"], x: torch.Tensor) -> torch.Tensor:
        """Relaxed codes ``(n, bits)`` of one modality's features ``(n, dim)``."""
        emb = self.embed(x, None)[0] if modality == "image" else self.embed(None, x)[1]
        assert emb is not None
        return self.head(modality)(emb)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> HashOutput:
        """Training pass over row-aligned pairs, with modality dropout in training mode.

        Args:
            image: Image features ``(n, image_dim)``.
            text: Text features ``(n, text_dim)``; row ``i`` pairs with image row ``i``.
            generator: Random source of the modality-dropout draw.

        Returns:
            Embeddings, relaxed codes and (select head) probabilities of both modalities.
        """
        if image.shape[0] != text.shape[0]:
            raise ValueError(
                f"got {image.shape[0]} image rows but {text.shape[0]} text rows; training "
                "pairs must be row-aligned"
            )
        img = self._prep(image, "image")
        txt = self._prep(text, "text")
        ie: torch.Tensor
        te: torch.Tensor
        if self.fusion is not None:
            p = self.config.modality_dropout if self.training else 1.0
            unimodal = torch.rand(img.shape[0], generator=generator) < p
            ie, te = self.fusion.forward_mixed(img, txt, unimodal.to(img.device))
        elif self.projections is not None:
            ie, te = self.projections["image"](img), self.projections["text"](txt)
        else:
            ie, te = img, txt
        out = HashOutput(
            ie, te, learned_embedding=self.fusion is not None or self.projections is not None
        )
        if self.heads is not None:
            hi, ht = self.head("image"), self.head("text")
            out.image_relaxed, out.text_relaxed = hi(ie), ht(te)
            if isinstance(hi, SelectHashHead) and isinstance(ht, SelectHashHead):
                out.image_probs, out.text_probs = hi.probabilities(ie), ht.probabilities(te)
        return out

    # -- numpy API ---------------------------------------------------------------------------
    def _run(
        self, x: np.ndarray, modality: Literal["image", "text"], what: str, batch_size: int
    ) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise ValueError(
                f"{modality} features must be a 2-D numeric array (n, dim), got {arr.dtype} "
                f"{arr.shape}"
            )
        was_training = self.training
        self.eval()
        rows: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for s in range(0, arr.shape[0], batch_size):
                    t = torch.from_numpy(np.ascontiguousarray(arr[s : s + batch_size], np.float32))
                    if what == "embedding":
                        pair = self.embed(t, None) if modality == "image" else self.embed(None, t)
                        emb = pair[0] if modality == "image" else pair[1]
                        assert emb is not None
                        rows.append(F.normalize(emb, dim=-1).numpy())
                    else:
                        r = self.relaxed(modality, t)
                        rows.append((binarize(r) if what == "codes" else r).numpy())
        finally:
            self.train(was_training)
        width = self.bits
        if what == "embedding":
            width = self.embed_dims[0 if modality == "image" else 1]
        if not rows:
            return np.empty((0, width), dtype=np.int8 if what == "codes" else np.float32)
        out = np.concatenate(rows)
        return out.astype(np.int8) if what == "codes" else out.astype(np.float32)

    def image_codes(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Binary codes of image features: int8 ``(n, bits)`` in {-1, +1} (eval mode)."""
        return self._run(features, "image", "codes", batch_size)

    def text_codes(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Binary codes of text features: int8 ``(n, bits)`` in {-1, +1} (eval mode)."""
        return self._run(features, "text", "codes", batch_size)

    def image_relaxed(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Relaxed (pre-sign) codes of image features: float32 ``(n, bits)``."""
        return self._run(features, "image", "relaxed", batch_size)

    def text_relaxed(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Relaxed (pre-sign) codes of text features: float32 ``(n, bits)``."""
        return self._run(features, "text", "relaxed", batch_size)

    def image_embeddings(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """L2-normalised float embeddings of image features: float32 ``(n, embed_dim)``."""
        return self._run(features, "image", "embedding", batch_size)

    def text_embeddings(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """L2-normalised float embeddings of text features: float32 ``(n, embed_dim)``."""
        return self._run(features, "text", "embedding", batch_size)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, meta: dict[str, Any] | None = None) -> None:
        """Save config and weights (safetensors, no pickle) into the directory ``path``.

        Args:
            path: Target directory, replaced atomically.
            meta: Extra JSON-ready information (training recipe, metrics) stored alongside.
        """
        from safetensors.torch import save as st_save

        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_directory(path) as tmp:
            atomic_write_bytes(tmp / WEIGHTS_FILE, st_save(state))
            atomic_write_json(
                tmp / MODEL_FILE,
                {
                    "format_version": FORMAT_VERSION,
                    "kind": "cmseh",
                    "config": self.config.to_dict(),
                    "meta": meta or {},
                },
            )
        logger.info("saved %s to %s", self.name, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, adapter: str | os.PathLike[str] | None = None
    ) -> CMSEH:
        """Load a model saved by :meth:`save` (in eval mode); ``adapter``: the output of
        ``vistrieve finetune hash``, applied on load.

        Raises:
            FileNotFoundError: ``path`` holds no saved hash model.
            ValueError: another format version or weights that do not fit the config.
        """
        from safetensors.torch import load as st_load

        root = Path(path)
        if not (root / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"{root} is not a saved hash model (no {MODEL_FILE}); save one with model.save()"
            )
        info = read_json(root / MODEL_FILE)
        if info.get("format_version") != FORMAT_VERSION or info.get("kind") != "cmseh":
            raise ValueError(
                f"{root}/{MODEL_FILE} is not a format-{FORMAT_VERSION} CMSEH model "
                f"(format {info.get('format_version')!r}, kind {info.get('kind')!r})"
            )
        model = cls(CMSEHConfig.from_dict(info["config"]))
        weights = root / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"missing weights file {weights}")
        try:
            state = st_load(weights.read_bytes())
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"cannot read {weights}: it is truncated or corrupt ({exc})") from exc
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not fit the saved config: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}"
            )
        model.meta = dict(info.get("meta", {}))
        if adapter is not None:
            from vistrieve.adapters import load_finetuned

            model = load_finetuned(model, adapter, stage="hash")  # type: ignore[assignment]
            model.meta["adapter"] = str(adapter)
        model.eval()
        return model


__all__ = [
    "CMSEH",
    "STANDARD_BITS",
    "VTFN",
    "CMSEHConfig",
    "HashHead",
    "HashOutput",
    "LinearHashHead",
    "SelectHashHead",
    "binarize",
    "check_bits",
    "make_head",
    "pack_codes",
]
