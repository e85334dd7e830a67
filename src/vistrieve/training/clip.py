"""Contrastive (CLIP) training of an open_clip model on image-caption pairs.

The symmetric InfoNCE loss with a learnable temperature follows open_clip_train's
``ClipLoss``. Each epoch pairs every training image with one of its captions drawn at random,
so all captions are seen over several epochs. Images are preprocessed once up front (the
corpora this trainer targets fit in memory); checkpoints are written atomically at the end of
every epoch and a run resumes from the last one.

The embedded default model is produced by :func:`train_shapes_clip`
(``vistrieve train shapes-clip``).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vistrieve.types import Corpus
from vistrieve.utils.images import load_image
from vistrieve.utils.io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipTrainConfig:
    """Hyper-parameters of contrastive training."""

    epochs: int = field(default=30, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=256, metadata={"help": "pairs per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    seed: int = field(default=0, metadata={"help": "seed for init order, shuffling, captions"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 1:
            raise ValueError("epochs must be > 0 and batch_size > 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**data)


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of normalised pairs (row i of each is a positive pair)."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


def preprocess_corpus(corpus: Corpus, preprocess: Any) -> torch.Tensor:
    """Decode and preprocess every image of ``corpus`` into one (n, C, H, W) tensor."""
    return torch.stack([preprocess(load_image(it.image)) for it in corpus.values()])


def train_clip(
    model: torch.nn.Module,
    preprocess: Any,
    tokenizer: Any,
    corpus: Corpus,
    config: ClipTrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` contrastively on the images and captions of ``corpus``.

    Args:
        model: An open_clip model (``encode_image``, ``encode_text``, ``logit_scale``).
        preprocess: Image transform matching the model.
        tokenizer: Tokenizer matching the model.
        corpus: Items with an image and at least one caption each.
        config: Hyper-parameters.
        checkpoint_dir: Where ``last.pt`` and ``history.json`` go; an existing checkpoint
            there is resumed from.
        evaluate: Called with the model after every epoch; its metrics join the history.
        progress: Show a progress bar.

    Returns:
        One record per epoch: ``epoch``, ``loss``, ``seconds`` and the evaluation metrics.
    """
    from tqdm.auto import tqdm

    cfg = config or ClipTrainConfig()
    items = list(corpus.values())
    bad = [it.id for it in items if not it.captions or it.image is None]
    if bad:
        raise ValueError(f"{len(bad)} training items lack an image or captions (first: {bad[0]!r})")
    if len(items) < cfg.batch_size:
        raise ValueError(f"{len(items)} training items are fewer than batch_size {cfg.batch_size}")
    gen = torch.Generator().manual_seed(cfg.seed)
    pixels = preprocess_corpus(corpus, preprocess)
    tokens = [tokenizer(list(it.captions)) for it in items]
    steps_per_epoch = len(items) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, total_steps))
    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("config") != cfg.to_dict():
            raise ValueError(
                f"checkpoint {ckpt} was written with another config {state.get('config')}; "
                "use a fresh checkpoint_dir or the same config"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        logger.info("resumed from %s at epoch %d", ckpt, start_epoch)

    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(items), generator=gen)
        choice = torch.randint(0, 1 << 30, (len(items),), generator=gen)
        losses = []
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress
        )
        for s in bar:
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            text = torch.stack(
                [tokens[i][int(choice[i]) % tokens[i].shape[0]] for i in idx.tolist()]
            )
            img_emb = F.normalize(model.encode_image(pixels[idx]), dim=-1)  # type: ignore[operator]
            txt_emb = F.normalize(model.encode_text(text), dim=-1)  # type: ignore[operator]
            loss = clip_loss(img_emb, txt_emb, model.logit_scale)  # type: ignore[arg-type]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        record: dict[str, float] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - t0,
        }
        if evaluate is not None:
            model.eval()
            record.update(evaluate(model))
            model.train()
        history.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)
        if ckpt is not None:
            buf = io.BytesIO()
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": gen.get_state(),
                    "epoch": epoch + 1,
                    "history": history,
                    "config": cfg.to_dict(),
                },
                buf,
            )
            atomic_write_bytes(ckpt, buf.getvalue())
            atomic_write_json(ckpt.with_name("history.json"), history)
    model.eval()
    return history


def evaluate_encoder(encoder: Any, corpus: Any) -> dict[str, float]:
    """Text<->image R@1/5/10 and MRR of ``encoder`` on ``corpus`` (5-caption protocol)."""
    import numpy as np

    from vistrieve.evals.metrics import image_text_retrieval_metrics

    items = list(corpus.values())
    img = encoder.encode_image([it.image for it in items])
    texts, owners = corpus.caption_pairs()
    pos = {it.id: i for i, it in enumerate(items)}
    txt = encoder.encode_text(texts)
    return image_text_retrieval_metrics(img, txt, np.array([pos[o] for o in owners]))
