"""Adapters for any torch model: LoRA (peft) wrapping, saving and loading, and applying the
output of a fine-tuning run (an adapter or full weights) for inference.

This is core code: every stage's loader (encoders, hash models, rerankers, LLMs, GRACE)
applies ``vistrieve finetune`` outputs through :func:`load_finetuned`, while the training
loop itself lives in :mod:`vistrieve.training`.

``apply_lora(model)`` wraps ``model`` with peft LoRA adapters on the layers that matter for
its family (open_clip residual blocks: the attention output and MLP projections; T5:
``q``/``v``; GPT-2: ``c_attn``; Llama-style LMs such as SmolLM2: the attention
projections; the vistrieve Q-Former: attention outputs and MLP layers). Target modules that
match nothing, and a rank larger than a targeted layer, are errors that name what exists.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

FINETUNE_META = "vistrieve_finetune.json"
"""The file naming the stage, base model and settings of a fine-tuning output."""

FAMILY_TARGETS: dict[str, list[str]] = {
    # The attention module itself: nn.MultiheadAttention reads out_proj.weight directly, so
    # an adapter on out_proj alone would be skipped in the forward pass until merged.
    "open_clip": ["attn", "c_fc", "c_proj"],
    "t5": ["q", "v"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qformer": ["q_proj", "k_proj", "v_proj", "out_proj", "mlp.0", "mlp.2"],
    "bert": ["query", "value"],
}
"""Default LoRA target modules (module-name suffixes) per model family."""


def model_family(model: nn.Module) -> str | None:
    """The family of ``model`` for :data:`FAMILY_TARGETS`, or None when unknown."""
    names = {type(m).__name__ for m in model.modules()}
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "") or "")
    if "ResidualAttentionBlock" in names:
        return "open_clip"
    if model_type in ("t5", "mt5") or "T5Block" in names:
        return "t5"
    if model_type == "gpt2" or "GPT2Block" in names:
        return "gpt2"
    if model_type in ("llama", "mistral", "qwen2") or "LlamaDecoderLayer" in names:
        return "llama"
    if "QFormerCrossEncoder" in names:
        return "qformer"
    if model_type in ("bert", "roberta") or "BertLayer" in names:
        return "bert"
    return None


def _is_target(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.MultiheadAttention)) or (
        type(module).__name__ == "Conv1D"
    )


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer LoRA can adapt (linear, GPT-2 Conv1D, multi-head attention) by full name.

    The output projection inside a ``nn.MultiheadAttention`` is left out: the attention
    module reads its weight directly, so it is adapted through the attention module.
    """
    mha = {name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return {
        name: m
        for name, m in model.named_modules()
        if name and _is_target(m) and name.rpartition(".")[0] not in mha
    }


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_targets(model: nn.Module, target_modules: Sequence[str], r: int) -> list[str]:
    """Full names of the linear layers that ``target_modules`` select.

    Raises:
        ValueError: a target matches no adaptable layer (the message lists the layer-name
            suffixes there are), or ``r`` exceeds the smaller dimension of a selected layer.
    """
    if r < 1:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    layers = linear_layers(model)
    chosen: list[str] = []
    for target in target_modules:
        hits = [n for n in layers if _matches(n, target)]
        if not hits:
            suffixes = sorted({re.sub(r"^.*?\.(?=[^.]+(\.\d+)?$)", "", n) for n in layers})
            raise ValueError(
                f"target module {target!r} matches no adaptable layer of "
                f"{type(model).__name__}; its linear and attention layers end in {suffixes[:40]}"
            )
        chosen.extend(hits)
    for name in chosen:
        layer = layers[name]
        weight = layer.in_proj_weight if isinstance(layer, nn.MultiheadAttention) else None
        weight = getattr(layer, "weight", None) if weight is None else weight
        if weight is not None and r > min(weight.shape):
            raise ValueError(
                f"LoRA rank {r} exceeds layer {name!r} of shape {tuple(weight.shape)}; use "
                f"r <= {min(weight.shape)}"
            )
    return chosen


def apply_lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    task_type: str | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> Any:
    """``model`` wrapped with peft LoRA adapters; only the adapters are trainable.

    Args:
        model: Any torch module (transformers models, open_clip CLIP, the Q-Former).
        r, alpha, dropout: LoRA rank, scaling and dropout.
        target_modules: Module-name suffixes; default :data:`FAMILY_TARGETS` of the model's
            family (an unknown family needs explicit targets).
        task_type: peft task type for transformers LMs (``"CAUSAL_LM"``, ``"SEQ_2_SEQ_LM"``).
        modules_to_save: Sub-modules (name suffixes) trained fully beside the adapters and
            saved with them (projection heads, new embeddings).
    """
    from peft import LoraConfig, get_peft_model

    if target_modules is None:
        family = model_family(model)
        if family is None:
            raise ValueError(
                f"no default LoRA targets for {type(model).__name__}; pass target_modules "
                f"(its linear layers: {sorted(linear_layers(model))[:20]})"
            )
        target_modules = FAMILY_TARGETS[family]
    chosen = check_targets(model, target_modules, r)
    # Full names leave no ambiguity (the Q-Former's "mlp.0" also ends other paths).
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=chosen,
        task_type=task_type,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    return get_peft_model(model, cfg)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def save_adapter(model: Any, directory: str | os.PathLike[str]) -> Path:
    """Save a peft model's adapter in peft's own format (``adapter_config.json`` +
    ``adapter_model.safetensors``), written to a temporary directory and swapped in."""
    from vistrieve.utils.io import atomic_directory

    if not hasattr(model, "peft_config"):
        raise ValueError("the model carries no peft adapter; call apply_lora first")
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
    return Path(directory)


def load_adapter(base: nn.Module, directory: str | os.PathLike[str], *, merge: bool = False) -> Any:
    """``base`` with the adapter saved in ``directory``; ``merge=True`` folds the adapter
    into the base weights and returns the plain model (for inference)."""
    from peft import PeftModel

    if not (Path(directory) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no adapter_config.json (not a peft adapter)")
    model = PeftModel.from_pretrained(base, str(directory))
    return model.merge_and_unload() if merge else model


def tied_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose tensor shares storage with an earlier key (tied embeddings)."""
    seen: set[int] = set()
    tied = set()
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            tied.add(k)
        seen.add(ptr)
    return tied


def untie_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy safetensors can save: tensors sharing storage (tied embeddings) are cloned."""
    tied = tied_keys(state)
    return {k: v.clone() if k in tied else v for k, v in state.items()}


def read_finetune_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``vistrieve_finetune.json`` of a fine-tuned directory (stage, base, config)."""
    path = Path(directory) / FINETUNE_META
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a vistrieve fine-tuning output (no {FINETUNE_META}); give "
            "OUT/adapter or OUT/model of a `vistrieve finetune` run"
        )
    return dict(json.loads(path.read_text()))


def adapter_digest(directory: str | os.PathLike[str]) -> str:
    """A short digest of a fine-tuning output's weights, for names that must change when the
    adapter does (index manifests, LLM replay caches)."""
    import hashlib

    root = Path(directory)
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (root / name).is_file():
            return hashlib.sha256((root / name).read_bytes()).hexdigest()[:10]
    raise FileNotFoundError(f"{directory} holds no adapter_model.safetensors or model.safetensors")


def load_finetuned(
    base: nn.Module, directory: str | os.PathLike[str], *, stage: str | None = None
) -> nn.Module:
    """``base`` with the fine-tuning in ``directory`` applied, ready for inference: a peft
    adapter is merged into the weights; full fine-tuned weights replace the base's.

    Raises:
        FileNotFoundError: ``directory`` holds no fine-tuning output.
        ValueError: the output belongs to another stage than ``stage``.
    """
    meta = read_finetune_meta(directory)
    if stage is not None and meta.get("stage") != stage:
        raise ValueError(
            f"{directory} holds a fine-tuned {meta.get('stage')!r} stage, not {stage!r}"
        )
    d = Path(directory)
    if (d / "adapter_config.json").is_file():
        return load_adapter(base, d, merge=True).eval()
    from safetensors.torch import load_file

    state = load_file(str(d / "model.safetensors"))
    missing, unexpected = base.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m not in tied_keys(base.state_dict())]:
        raise ValueError(
            f"weights in {d} do not fit the base model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return base.eval()
