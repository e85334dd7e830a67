"""Training a :class:`~vistrieve.query_rewriting.captioner.PrefixCaptioner`'s language model
to caption image-encoder features (teacher forcing, one sampled reference per image)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vistrieve.generative.model import GraceModel


def train_captioner(
    model: GraceModel,
    features: np.ndarray,
    captions: Sequence[Sequence[str]],
    *,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` to caption image features: each step samples images and one of their
    captions. Returns the loss of every step."""
    from tqdm.auto import tqdm

    if len(features) != len(captions):
        raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
    if any(not c for c in captions):
        raise ValueError("every image needs at least one caption")
    tok = model.tokenizer
    encoded = [
        [[*tok(c, add_special_tokens=False)["input_ids"], model.eos] for c in caps]
        for caps in captions
    ]
    feats = torch.as_tensor(np.asarray(features, np.float32))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="train captioner", disable=not progress)
    for _ in bar:
        rows = rng.integers(len(feats), size=batch_size)
        targets = [encoded[r][int(rng.integers(len(encoded[r])))] for r in rows]
        emb, mask = model.image_source(feats[rows])
        loss = model.loss(emb, mask, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses
