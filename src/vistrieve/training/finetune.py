"""Fine-tune any stage with LoRA (peft) or fully, through accelerate.

One loop serves every stage. A :class:`FinetuneTask` says what the stage's model is, how to
draw a training batch, how to compute the loss and how to evaluate; :func:`finetune` wraps
the model with LoRA adapters (or unfreezes it), hands it to ``accelerate`` (device
placement, mixed precision, gradient accumulation, multi-GPU / multi-node data parallel
under ``accelerate launch``), evaluates before training (the frozen model) and every
``eval_every`` steps, keeps the best result, stops early after ``patience`` evaluations
without improvement, and writes a resumable checkpoint at every evaluation.

Output directory::

    OUT/adapter/            best adapter, peft's own format + vistrieve_finetune.json
                            (OUT/model/ with model.safetensors for full fine-tuning)
    OUT/checkpoint/state.pt trainable weights, optimiser, scheduler, step, history
    OUT/metrics.jsonl       one line per evaluation (also logged)
    OUT/result.json         frozen vs best metrics, parameter counts, wall time

Under data parallelism every process draws its own random batches (each batch is drawn from
a stream seeded with the seed, the process index and the step), so ``batch_size`` is per
process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vistrieve.adapters import FINETUNE_META, untie_state
from vistrieve.utils.io import atomic_directory, atomic_write, atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("clip", "hash", "reranker", "rewriter", "grace")
"""Stages :func:`finetune` adapts (``vistrieve finetune STAGE``)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (the same for every stage)."""

    method: str = field(default="lora", metadata={"help": "lora (peft adapters) or full"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata={"help": "module-name suffixes (default: the model family's)"}
    )
    steps: int = field(default=200, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per micro-batch"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})
    eval_every: int = field(default=50, metadata={"help": "evaluate every N steps (0: end)"})
    patience: int = field(
        default=0, metadata={"help": "stop after N evaluations without improvement (0: off)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of sampling and initialisation"})

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        for name in ("r", "steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "patience", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown FinetuneConfig keys: {sorted(unknown)}")
        return cls(**data)


class FinetuneTask(ABC):
    """What :func:`finetune` needs to know about one stage.

    Attributes:
        stage: One of :data:`STAGES`; recorded with checkpoints and adapters.
        metric: Key of :meth:`evaluate`'s result that selects the best step (higher is
            better).
        model: The module that is adapted (LoRA wraps it; full fine-tuning unfreezes it).
        lora_task_type: peft task type for transformers LMs (``"CAUSAL_LM"``).
        modules_to_save: Sub-modules trained fully beside the adapters (peft
            ``modules_to_save``), e.g. projection heads.
        default_targets: LoRA targets when the config names none (None: the model
            family's defaults, :data:`~vistrieve.adapters.FAMILY_TARGETS`).
        keep_last: Keep the last evaluated step instead of the best one (for data with no
            validation split independent of the base model's training).
    """

    stage: ClassVar[str]
    metric: str
    model: nn.Module
    lora_task_type: str | None = None
    modules_to_save: list[str] | None = None
    default_targets: list[str] | None = None
    keep_last: bool = False

    @abstractmethod
    def batch(self, rng: np.random.Generator, batch_size: int) -> Any:
        """One random training micro-batch."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The scalar training loss of ``batch`` under ``model`` (the wrapped model)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics of ``model`` (must contain :attr:`metric`)."""

    def trainable(self, name: str) -> bool:
        """Whether full fine-tuning trains parameter ``name`` (default: every one)."""
        return True

    def base_spec(self) -> dict[str, Any]:
        """How to rebuild the base model; saved beside the adapter."""
        return {}

    def info(self) -> dict[str, Any]:
        """Facts about the data for the run's record (sizes, sources)."""
        return {}


class _LossModule(nn.Module):
    """Routes the loss through ``forward`` so that a DDP wrapper synchronises gradients."""

    def __init__(self, task: FinetuneTask, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_task", task)  # not a sub-module

    def forward(self, batch: Any) -> torch.Tensor:
        task: FinetuneTask = self.__dict__["_task"]
        return task.loss(self.model, batch)


def _lr_lambda(warmup: int, total: int) -> Any:
    from vistrieve.training.clip import _lr_lambda as cosine

    return cosine(max(warmup, 1), total)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def prepare_model(task: FinetuneTask, config: FinetuneConfig) -> nn.Module:
    """``task.model`` with LoRA adapters (only they and ``modules_to_save`` train) or, for
    ``method="full"``, with every parameter trainable that ``task.trainable`` allows."""
    if config.method == "full":
        for name, p in task.model.named_parameters():
            p.requires_grad_(task.trainable(name))
        return task.model
    from vistrieve.adapters import apply_lora

    targets = config.target_modules or task.default_targets
    return apply_lora(
        task.model,
        r=config.r,
        alpha=config.alpha,
        dropout=config.dropout,
        target_modules=targets,
        task_type=task.lora_task_type,
        modules_to_save=task.modules_to_save,
    )


def save_finetuned(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    stage: str,
    config: FinetuneConfig,
    base: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write an adapter (peft format) or, for a plain model, its weights as
    ``model.safetensors``, with ``vistrieve_finetune.json`` naming the stage and base."""
    from safetensors.torch import save_file

    meta = {"stage": stage, "config": config.to_dict(), "base": base, "metrics": metrics or {}}
    with atomic_directory(directory) as tmp:
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)  # type: ignore[operator]
        else:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(untie_state(state), str(tmp / "model.safetensors"))
        (tmp / FINETUNE_META).write_text(json.dumps(meta, indent=2))
    return Path(directory)


def _accelerator(config: FinetuneConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    # accelerate keeps one process-wide state; in a single process (no launcher) a second
    # run with other precision or accumulation settings would be refused, so start afresh.
    # Under `accelerate launch` the state belongs to the launcher and is left alone.
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(
        gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision
    )


def finetune(
    task: FinetuneTask,
    config: FinetuneConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = True,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Fine-tune ``task``'s model and keep the best adapter in ``OUT/adapter``.

    Args:
        task: The stage to adapt.
        config: Method, LoRA settings, optimisation, evaluation and early stopping.
        out: Output directory (see the module docstring).
        resume: Continue from ``OUT/checkpoint/state.pt`` when it exists.
        progress: Show a progress bar.
        command: The command line, recorded in ``result.json``.

    Returns:
        The record written to ``OUT/result.json``: ``frozen`` (step-0 metrics), ``best``,
        ``best_step``, ``history``, trainable and total parameters, ``seconds``.

    Raises:
        ValueError: the checkpoint belongs to another stage or another configuration, or
            the LoRA targets / rank do not fit the model.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out_dir = Path(out)
    ckpt = out_dir / "checkpoint" / "state.pt"
    state: dict[str, Any] | None = None
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("stage") != task.stage:
            raise ValueError(
                f"checkpoint {ckpt} is of stage {state.get('stage')!r}, not {task.stage!r}; "
                "use another output directory"
            )
        if state.get("config") != config.to_dict():
            raise ValueError(
                f"checkpoint {ckpt} was written with another configuration "
                f"{state.get('config')}; use the same settings or another output directory"
            )
    acc = _accelerator(config)
    torch.manual_seed(config.seed)
    model = prepare_model(task, config)
    from vistrieve.adapters import trainable_parameters

    trainable, total = trainable_parameters(model)
    if trainable == 0:
        raise ValueError("nothing to train: the model has no trainable parameters")
    wrapper = _LossModule(task, model)
    decay = [p for p in wrapper.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in wrapper.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps, config.steps))
    # The scheduler stays outside accelerate: its wrapper would step it once per process,
    # and a step here is one optimiser step whatever the number of processes.
    wrapper, opt = acc.prepare(wrapper, opt)
    history: list[dict[str, Any]] = []
    start = 0
    best: dict[str, Any] = {"value": -float("inf"), "step": -1, "metrics": {}}
    stale = 0
    if state is not None:
        missing = acc.unwrap_model(wrapper).model.load_state_dict(state["trainable"], strict=False)
        if missing.unexpected_keys:
            raise ValueError(
                f"checkpoint {ckpt} has weights this model lacks: {missing.unexpected_keys[:5]}"
            )
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history, stale = int(state["step"]), list(state["history"]), int(state["stale"])
        best = json.loads(state["best"])
        logger.info("resumed %s fine-tuning from %s at step %d", task.stage, ckpt, start)

    inner = acc.unwrap_model(wrapper).model

    def evaluate(step: int, loss: float | None) -> dict[str, Any]:
        inner.eval()
        with torch.no_grad():
            metrics = task.evaluate(inner)
        inner.train()
        if task.metric not in metrics:
            raise KeyError(f"{type(task).__name__}.evaluate returned no {task.metric!r}")
        return {"step": step, "loss": loss, "seconds": time.perf_counter() - t0, **metrics}

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        logger.info("%s step %d: %s", task.stage, record["step"], record)
        if acc.is_main_process:
            lines = "".join(json.dumps(r) + "\n" for r in history)
            atomic_write(out_dir / "metrics.jsonl", lambda p: p.write_text(lines))

    def checkpoint(step: int) -> None:
        if not acc.is_main_process:
            return
        buf = io.BytesIO()
        torch.save(
            {
                "stage": task.stage,
                "config": config.to_dict(),
                "trainable": _trainable_state(inner),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "history": history,
                "stale": stale,
                "best": json.dumps(best),
            },
            buf,
        )
        atomic_write_bytes(ckpt, buf.getvalue())

    artefact = out_dir / ("adapter" if config.method == "lora" else "model")

    def consider(record: dict[str, Any]) -> None:
        nonlocal stale
        value = float(record[task.metric])
        if value > best["value"] or task.keep_last:
            best.update(
                value=value,
                step=record["step"],
                metrics={k: v for k, v in record.items() if k not in ("seconds",)},
            )
            stale = 0
            if acc.is_main_process:
                save_finetuned(
                    inner,
                    artefact,
                    stage=task.stage,
                    config=config,
                    base=task.base_spec(),
                    metrics=best["metrics"],
                )
        else:
            stale += 1

    if start == 0:
        frozen = evaluate(0, None)
        log(frozen)
        consider(frozen)
    wrapper.train()
    bar = tqdm(
        range(start, config.steps),
        desc=f"finetune {task.stage}",
        initial=start,
        total=config.steps,
        disable=not progress,
    )
    losses: list[float] = []
    stopped_early = False
    for step in bar:
        for micro in range(config.grad_accum):
            # Batches depend only on (seed, process, step, micro-batch): a resumed run draws
            # what an uninterrupted one would, and every process draws its own.
            rng = np.random.default_rng([config.seed, acc.process_index, step, micro])
            with acc.accumulate(wrapper):
                with acc.autocast():
                    loss = wrapper(task.batch(rng, config.batch_size))
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{task.stage} loss is {float(loss)} at step {step + 1}; lower the "
                        "learning rate or turn mixed precision off"
                    )
                acc.backward(loss)
                if acc.sync_gradients and config.grad_clip > 0:
                    acc.clip_grad_norm_(wrapper.parameters(), config.grad_clip)
                opt.step()  # accelerate skips it until the last micro-batch
                if acc.sync_gradients:
                    sched.step()
                opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        done = step + 1
        if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
            window = losses[-config.eval_every * config.grad_accum :] if losses else [0.0]
            record = evaluate(done, float(np.mean(window)))
            log(record)
            consider(record)
            checkpoint(done)
            if config.patience and stale >= config.patience:
                logger.info("early stop at step %d: no gain in %d evaluations", done, stale)
                stopped_early = True
                break
    bar.close()
    frozen_metrics = {k: v for k, v in history[0].items() if k not in ("step", "loss", "seconds")}
    result = {
        "stage": task.stage,
        "command": command,
        "method": config.method,
        "config": config.to_dict(),
        "base": task.base_spec(),
        "data": task.info(),
        "metric": task.metric,
        "frozen": frozen_metrics,
        "best": {k: v for k, v in best["metrics"].items() if k not in ("step", "loss")},
        "best_step": best["step"],
        "trainable_parameters": trainable,
        "total_parameters": total,
        "stopped_early": stopped_early,
        "seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
        "processes": acc.num_processes,
        "artefact": str(artefact),
        "history": history,
    }
    if acc.is_main_process:
        atomic_write_json(out_dir / "result.json", result)
    return result


def parse_targets(text: str | None) -> tuple[str, ...] | None:
    """``"q_proj,v_proj"`` -> ``("q_proj", "v_proj")``; empty -> None (family defaults)."""
    if not text:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip()) or None


def config_from_args(args: Any, **defaults: Any) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from parsed command-line options (None keeps a default)."""
    values = dict(defaults)
    for f in fields(FinetuneConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if isinstance(values.get("target_modules"), str):
        values["target_modules"] = parse_targets(values["target_modules"])
    return FinetuneConfig(**values)
