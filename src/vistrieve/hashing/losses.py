"""Losses for cross-modal hashing: DCMH likelihood, DSPH proxies, UCMFH contrastive, and CMSEH.

* **DCMH** (Jiang & Li, CVPR 2017; jiangqy/DCMH-CVPR2017, WendellGul/DCMH): with relaxed
  codes ``U`` (image) and ``V`` (text) and label similarity ``S`` (1 when two items share a
  label), ``theta = 0.5 * U V^T`` and the negative log-likelihood
  ``sum(log(1 + exp(theta)) - S * theta)``, plus a quantization term ``||B - U||^2`` with
  ``B = sign(U + V)`` and a bit-balance term ``||U^T 1||^2``. Here each term is averaged
  over the batch instead of summed over the training set (DCMH keeps a buffer of every
  training code and divides the sum by ``batch * n_train``), so weights do not depend on
  the dataset size.
* **DSPH** (QinLab-WFU/DSPH ``HyP``): one learnable proxy per class; with cosine ``c``
  between a code and a proxy, positives pay ``1 - c``, negatives ``relu(c - threshold)``,
  each averaged over the positive / negative (item, class) pairs, for both modalities; for
  multi-label items, pairs sharing no label pay ``alpha * relu(c - threshold)`` within and
  across modalities. DSPH reads ``threshold`` from a table indexed by bits and classes;
  here it is a parameter.
* **UCMFH** (XinyuXia97/UCMFH ``ContrastiveLoss``): NT-Xent over the ``2n`` L2-normalised
  image and text outputs of a batch at temperature 0.5; each item's positive is its other
  modality, its negatives every other output of the batch (both modalities). No labels.

:class:`CMSEHLoss` combines them: a semantic loss (``"dcmh"``, ``"proxy"`` or ``"none"``)
on the relaxed codes, the contrastive loss on the relaxed codes and on the (fused)
embeddings, and quantization and bit-balance terms.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.hashing.heads import HashOutput, binarize, check_bits

SemanticLoss = Literal["dcmh", "proxy", "none"]


def label_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where two items share at least one label, else 0.

    Args:
        a: Multi-hot labels ``(n, n_classes)`` or class ids ``(n,)``.
        b: Same form, ``(m, n_classes)`` or ``(m,)``.

    Returns:
        float32 ``(n, m)`` in {0, 1}.
    """
    if a.ndim != b.ndim or a.ndim not in (1, 2):
        raise ValueError(
            f"labels must both be multi-hot (n, classes) or class ids (n,), got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if a.ndim == 1:
        return (a[:, None] == b[None, :]).float()
    return ((a.float() @ b.float().T) > 0).float()


def dcmh_nll(u: torch.Tensor, v: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """DCMH inter-modal negative log-likelihood, mean over the ``n x m`` pairs.

    Args:
        u: Relaxed codes ``(n, bits)`` of one modality.
        v: Relaxed codes ``(m, bits)`` of the other.
        similarity: ``(n, m)`` in {0, 1}.

    Returns:
        Scalar ``mean(softplus(theta) - S * theta)`` with ``theta = 0.5 * u v^T``
        (``softplus`` is the overflow-safe ``log(1 + exp)``).
    """
    theta = 0.5 * (u @ v.T)
    return (F.softplus(theta) - similarity * theta).mean()


def quantization_loss(*relaxed: torch.Tensor) -> torch.Tensor:
    """DCMH quantization ``||B - U||^2`` per element, with ``B = sign(sum of the inputs)``.

    Given the image and the text codes of the same pairs, ``B`` is the code the pair shares
    (DCMH's ``sign(F + G)``); given one tensor, ``B`` is its own sign.

    Returns:
        Scalar mean over inputs, rows and bits.
    """
    if not relaxed:
        raise ValueError("quantization_loss needs at least one tensor")
    target = binarize(torch.stack(relaxed).sum(0)).detach()
    return torch.stack([((target - u) ** 2).mean() for u in relaxed]).mean()


def bit_balance_loss(*relaxed: torch.Tensor) -> torch.Tensor:
    """DCMH bit balance ``||U^T 1||^2``, as the mean over bits of the squared batch mean.

    0 when every bit is +1 for half the rows; 1 when a bit is constant.
    """
    if not relaxed:
        raise ValueError("bit_balance_loss needs at least one tensor")
    return torch.stack([(u.mean(0) ** 2).mean() for u in relaxed]).mean()


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """UCMFH NT-Xent: row ``i`` of ``a`` and row ``i`` of ``b`` are positives.

    Both sets are L2-normalised and concatenated into ``2n`` outputs; each output's
    negatives are the other ``2n - 2`` outputs (both modalities).

    Args:
        a: ``(n, d)`` outputs of one modality.
        b: ``(n, d)`` outputs of the other, row-aligned.
        temperature: Softmax temperature (UCMFH: 0.5).

    Returns:
        Scalar mean over the ``2n`` outputs.
    """
    if a.shape != b.shape:
        raise ValueError(f"contrastive pairs need equal shapes, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n < 2:
        raise ValueError("the contrastive loss needs at least 2 pairs per batch")
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class ProxyLoss(nn.Module):
    """DSPH proxy loss: one learnable proxy per class in code space.

    Args:
        n_classes: Number of classes (label columns).
        bits: Code length.
        threshold: Cosine below which a code and a non-matching proxy (or two items sharing
            no label) pay nothing. Default ``min(0.5, sqrt(2 ln(n_classes) / bits))``, about
            the largest cosine between random codes.
        alpha: Weight of the multi-label regulariser (DSPH: 0.8).
        seed: Seed of the proxy initialisation (DSPH ``hypseed``).
    """

    def __init__(
        self,
        n_classes: int,
        bits: int,
        *,
        threshold: float | None = None,
        alpha: float = 0.8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"the proxy loss needs n_classes >= 2, got {n_classes!r}")
        check_bits(bits)
        gen = torch.Generator().manual_seed(seed)
        proxies = torch.randn(n_classes, bits, generator=gen)
        # kaiming_normal_(mode="fan_out") as in DSPH; only the directions matter (cosine).
        proxies *= math.sqrt(2.0 / n_classes)
        self.proxies = nn.Parameter(proxies)
        self.threshold = (
            float(threshold)
            if threshold is not None
            else min(0.5, math.sqrt(2.0 * math.log(n_classes) / bits))
        )
        self.alpha = float(alpha)

    def _proxy_terms(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=1) @ F.normalize(self.proxies, dim=1).T
        pos_mask = labels > 0
        n_pos = pos_mask.sum().clamp_min(1)
        n_neg = (~pos_mask).sum().clamp_min(1)
        pos = torch.where(pos_mask, 1 - cos, torch.zeros_like(cos)).sum() / n_pos
        neg = torch.where(~pos_mask, F.relu(cos - self.threshold), torch.zeros_like(cos)).sum()
        return pos + neg / n_neg

    def forward(self, u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of relaxed codes ``u``, ``v`` ``(n, bits)`` with multi-hot ``labels (n, C)``."""
        if labels.ndim != 2 or labels.shape[1] != self.proxies.shape[0]:
            raise ValueError(
                f"the proxy loss needs multi-hot labels (n, {self.proxies.shape[0]}), got "
                f"{tuple(labels.shape)}"
            )
        loss = self._proxy_terms(u, labels) + self._proxy_terms(v, labels)
        if self.alpha > 0:
            multi = labels.sum(1) > 1
            if int(multi.sum()) > 1:
                lab = labels[multi].float()
                unrelated = (lab @ lab.T) == 0
                n_unrelated = int(unrelated.sum())
                if n_unrelated:
                    xu, xv = F.normalize(u[multi], dim=1), F.normalize(v[multi], dim=1)
                    for sim in (xu @ xu.T, xv @ xv.T, xu @ xv.T):
                        pen = self.alpha * F.relu(sim - self.threshold)
                        loss = loss + torch.where(unrelated, pen, torch.zeros_like(pen)).sum() / (
                            n_unrelated
                        )
        return loss


@dataclass(frozen=True)
class HashLossConfig:
    """Weights and options of :class:`CMSEHLoss` (JSON-round-trippable)."""

    semantic: SemanticLoss = field(
        default="dcmh",
        metadata={"help": "label loss: 'dcmh' (NLL), 'proxy' (DSPH) or 'none' (unsupervised)"},
    )
    n_classes: int | None = field(default=None, metadata={"help": "label columns (proxy loss)"})
    semantic_weight: float = field(default=1.0, metadata={"help": "weight of the label loss"})
    contrastive_weight: float = field(
        default=1.0, metadata={"help": "UCMFH contrastive loss on the relaxed codes"}
    )
    embedding_weight: float = field(
        default=1.0, metadata={"help": "UCMFH contrastive loss on the (fused) embeddings"}
    )
    quantization_weight: float = field(default=0.1, metadata={"help": "||B - U||^2 weight"})
    balance_weight: float = field(default=0.1, metadata={"help": "bit-balance weight"})
    temperature: float = field(default=0.5, metadata={"help": "contrastive temperature"})
    proxy_threshold: float | None = field(
        default=None, metadata={"help": "DSPH cosine threshold (default from bits, classes)"}
    )
    proxy_alpha: float = field(default=0.8, metadata={"help": "DSPH multi-label weight"})

    def __post_init__(self) -> None:
        if self.semantic not in ("dcmh", "proxy", "none"):
            raise ValueError(f"semantic must be 'dcmh', 'proxy' or 'none', got {self.semantic!r}")
        for name in (
            "semantic_weight",
            "contrastive_weight",
            "embedding_weight",
            "quantization_weight",
            "balance_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.semantic == "proxy" and (self.n_classes is None or self.n_classes < 2):
            raise ValueError("semantic='proxy' needs n_classes (the number of label columns, >= 2)")

    @property
    def supervised(self) -> bool:
        """Whether the loss needs labels."""
        return self.semantic != "none" and self.semantic_weight > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HashLossConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HashLossConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


class CMSEHLoss(nn.Module):
    """The CMSEH training objective over one :class:`~vistrieve.hashing.heads.HashOutput`.

    ``total = semantic_weight * semantic(U, V, labels)
    + contrastive_weight * NT-Xent(U, V) + embedding_weight * NT-Xent(E_img, E_txt)
    + quantization_weight * ||B - U||^2 + balance_weight * balance``. The embedding term
    applies only where the model learns an embedding (VTFN, or the projection of a float-only
    model); a model without hash heads trains on the embedding term alone.

    Args:
        config: Weights and options.
        bits: Code length of the model (for the proxies).
        seed: Seed of the proxy initialisation.

    Example:
        >>> loss = CMSEHLoss(HashLossConfig(semantic="none"), bits=16)
        >>> out = HashOutput(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 16).tanh(),
        ...                  torch.randn(4, 16).tanh())
        >>> sorted(loss(out))
        ['balance', 'contrastive', 'embedding', 'quantization', 'total']
    """

    def __init__(self, config: HashLossConfig, bits: int, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.proxy: ProxyLoss | None = None
        if config.semantic == "proxy" and bits:
            assert config.n_classes is not None
            self.proxy = ProxyLoss(
                config.n_classes,
                bits,
                threshold=config.proxy_threshold,
                alpha=config.proxy_alpha,
                seed=seed,
            )

    def forward(
        self, out: HashOutput, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Every loss term and their weighted sum under ``"total"``.

        Raises:
            ValueError: a supervised semantic loss without labels, or labels whose row count
                does not match the batch.
        """
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        u, v = out.image_relaxed, out.text_relaxed
        hashing = u is not None and v is not None
        if c.supervised and hashing:
            if labels is None:
                raise ValueError(
                    f"semantic loss {c.semantic!r} needs labels; pass labels (multi-hot or "
                    "class ids) or use semantic='none' for unsupervised contrastive training"
                )
            if labels.shape[0] != out.image_embedding.shape[0]:
                raise ValueError(
                    f"got {labels.shape[0]} label rows for a batch of "
                    f"{out.image_embedding.shape[0]} pairs"
                )
            assert u is not None and v is not None
            if c.semantic == "dcmh":
                terms["semantic"] = dcmh_nll(u, v, label_similarity(labels, labels))
            else:
                assert self.proxy is not None
                if labels.ndim == 1:
                    labels = F.one_hot(labels.long(), self.proxy.proxies.shape[0])
                terms["semantic"] = self.proxy(u, v, labels)
            weights["semantic"] = c.semantic_weight
        if hashing:
            assert u is not None and v is not None
            terms["contrastive"] = contrastive_loss(u, v, c.temperature)
            weights["contrastive"] = c.contrastive_weight
            terms["quantization"] = quantization_loss(u, v)
            weights["quantization"] = c.quantization_weight
            terms["balance"] = bit_balance_loss(u, v)
            weights["balance"] = c.balance_weight
        if out.learned_embedding:
            terms["embedding"] = contrastive_loss(
                out.image_embedding, out.text_embedding, c.temperature
            )
            weights["embedding"] = c.embedding_weight
        if not terms:
            raise ValueError("nothing to train: the model has neither hash heads nor an embedding")
        total = torch.stack([weights[k] * t for k, t in terms.items()]).sum()
        terms["total"] = total
        return terms


__all__ = [
    "CMSEHLoss",
    "HashLossConfig",
    "ProxyLoss",
    "SemanticLoss",
    "bit_balance_loss",
    "contrastive_loss",
    "dcmh_nll",
    "label_similarity",
    "quantization_loss",
]
