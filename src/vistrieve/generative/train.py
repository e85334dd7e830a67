"""Training the GRACE model: "memorise" (image -> identifier) and "retrieve" (query ->
identifier) examples, with checkpoints and resume."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistrieve.generative.identifiers import Identifiers
from vistrieve.generative.model import GraceModel
from vistrieve.utils.io import atomic_write, atomic_write_json, read_json

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
STATE = "train_state.json"


@dataclass(frozen=True)
class GraceTrainConfig:
    """Settings of :func:`train_grace`.

    Args:
        memorise_steps: Steps on image -> identifier examples only.
        retrieve_steps: Steps on query -> identifier examples, each batch mixing in a
            ``memorise_mix`` share of memorise examples so that the image -> id map is kept.
        batch_size: Examples per step.
        lr: AdamW learning rate (linear warm-up over 5% of the steps, then cosine decay).
        weight_decay: AdamW weight decay.
        memorise_mix: Share of memorise examples in retrieve-stage batches.
        checkpoint_every: Steps between checkpoints (0: only at the end).
        seed: Sampling seed.
    """

    memorise_steps: int = 500
    retrieve_steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    memorise_mix: float = 0.25
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.memorise_steps < 0 or self.retrieve_steps < 0:
            raise ValueError("step counts must be non-negative")
        if self.memorise_steps + self.retrieve_steps == 0:
            raise ValueError("nothing to train: memorise_steps + retrieve_steps is 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not 0.0 <= self.memorise_mix <= 1.0:
            raise ValueError(f"memorise_mix must be in [0, 1], got {self.memorise_mix}")

    @property
    def total_steps(self) -> int:
        return self.memorise_steps + self.retrieve_steps


def _schedule(step: int, total: int) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, progress))))


def train_grace(
    model: GraceModel,
    identifiers: Identifiers,
    image_features: Mapping[str, np.ndarray],
    queries: Sequence[tuple[str, str]],
    config: GraceTrainConfig | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    trainable: Sequence[torch.nn.Parameter] | None = None,
) -> dict[str, Any]:
    """Train ``model`` to generate ``identifiers``.

    Args:
        model: The GRACE model (its tokenizer must already spell every identifier; call
            :meth:`GraceModel.add_identifier_tokens` first for the atomic scheme).
        identifiers: Item id -> identifier.
        image_features: Item id -> image feature vector, for every identified item
            (memorise examples).
        queries: ``(query text, item id)`` pairs: pseudo-queries of the corpus images
            (retrieve examples). May be empty when ``retrieve_steps`` is 0.
        config: Training settings.
        out: Directory for checkpoints (model + optimiser + step, written atomically every
            ``checkpoint_every`` steps) and ``train_state.json``.
        resume: Continue from the checkpoint in ``out``.
        progress: Show a progress bar.
        trainable: Parameters to optimise (default: every parameter that requires grad,
            which with a peft LoRA model is the adapters and the projection head).

    Returns:
        A record: losses per stage, seconds, steps, trainable parameters.
    """
    from tqdm.auto import tqdm

    cfg = config or GraceTrainConfig()
    items = list(identifiers.by_item)
    missing = [i for i in items if i not in image_features]
    if missing and cfg.memorise_steps + (cfg.retrieve_steps if cfg.memorise_mix else 0):
        raise ValueError(
            f"{len(missing)} identified items have no image features (e.g. {missing[0]!r})"
        )
    unknown = [i for _, i in queries if i not in identifiers]
    if unknown:
        raise ValueError(f"queries name items without identifiers, e.g. {unknown[0]!r}")
    if cfg.retrieve_steps and not queries:
        raise ValueError("retrieve_steps > 0 but no (query, item) pairs were given")
    targets = model.identifier_tokens(identifiers)
    feats = torch.from_numpy(np.stack([np.asarray(image_features[i], np.float32) for i in items]))
    params = [p for p in (trainable or model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, cfg.total_steps))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start = 0
    losses: dict[str, list[float]] = {"memorise": [], "retrieve": []}
    out_dir = Path(out) if out is not None else None
    if resume:
        if out_dir is None or not (out_dir / CHECKPOINT).is_file():
            raise FileNotFoundError(f"no checkpoint to resume from in {out_dir}")
        state = read_json(out_dir / STATE)
        if state.get("config") != asdict(cfg) or state.get("scheme") != identifiers.scheme:
            raise ValueError(
                f"the checkpoint in {out_dir} was written with other settings "
                f"({state.get('scheme')}, {state.get('config')}); resume with the same ones"
            )
        ckpt = torch.load(out_dir / CHECKPOINT, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start, losses = int(ckpt["step"]), state["losses"]
        rng = np.random.default_rng([cfg.seed, start])
        logger.info("resumed GRACE training at step %d", start)

    def save(step: int) -> None:
        if out_dir is None:
            return
        ckpt = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
        }
        atomic_write(out_dir / CHECKPOINT, lambda p: torch.save(ckpt, p))
        atomic_write_json(
            out_dir / STATE,
            {"config": asdict(cfg), "scheme": identifiers.scheme, "step": step, "losses": losses},
        )

    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(start, cfg.total_steps), desc="train grace", disable=not progress)
    for step in bar:
        stage = "memorise" if step < cfg.memorise_steps else "retrieve"
        n_mem = (
            cfg.batch_size if stage == "memorise" else int(round(cfg.batch_size * cfg.memorise_mix))
        )
        n_q = cfg.batch_size - n_mem
        loss = torch.zeros((), device=model.device)
        parts = 0
        if n_mem:
            rows = rng.integers(len(items), size=n_mem)
            emb, mask = model.image_source(feats[rows])
            loss = loss + model.loss(emb, mask, [targets[items[r]] for r in rows])
            parts += 1
        if n_q:
            rows = rng.integers(len(queries), size=n_q)
            emb, mask = model.text_source([queries[r][0] for r in rows])
            loss = loss + model.loss(emb, mask, [targets[queries[r][1]] for r in rows])
            parts += 1
        loss = loss / parts
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses[stage].append(float(loss.item()))
        bar.set_postfix(stage=stage, loss=f"{np.mean(losses[stage][-20:]):.3f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save(step + 1)
    model.eval()
    save(cfg.total_steps)
    return {
        "steps": cfg.total_steps,
        "resumed_from": start,
        "seconds": time.perf_counter() - t0,
        "trainable_parameters": sum(p.numel() for p in params),
        "losses": losses,
    }
