"""Image-text encoders and the factory that builds them by name.

``create_encoder`` accepts a registered name with keyword overrides, a spec dict (as stored
in a retriever's ``retriever.json``), or a ready encoder (passed through):

>>> enc = create_encoder("clip-tiny-test")
>>> enc.spec["name"]
'clip-tiny-test'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vistrieve.encoders.base import TorchEncoder
from vistrieve.registry import Registry
from vistrieve.types import Encoder

ENCODERS: Registry[Encoder] = Registry("encoder")


@ENCODERS.register("open_clip")
def _open_clip(
    model: str = "ViT-B-32", pretrained: str | None = None, seed: int | None = None, **kw: Any
) -> Encoder:
    """Any open_clip architecture; weights from a tag, a file, ``hf-hub:`` or ``local-dir:``."""
    from vistrieve.encoders.open_clip import OpenClipEncoder

    if seed is not None:
        torch.manual_seed(seed)
    return OpenClipEncoder.from_pretrained(model, pretrained, **kw)


@ENCODERS.register("hf")
def _hf(name_or_path: str, **kw: Any) -> Encoder:
    """A transformers CLIP/SigLIP model from a hub name or a local directory."""
    from vistrieve.encoders.hf import HFClipEncoder

    return HFClipEncoder.from_pretrained(name_or_path, **kw)


@ENCODERS.register("clip-tiny-test")
def _tiny(seed: int = 0, **kw: Any) -> Encoder:
    """A tiny randomly initialised open_clip ViT (32-d, 32 px) for tests."""
    from vistrieve.encoders.open_clip import OpenClipEncoder

    torch.manual_seed(seed)
    enc = OpenClipEncoder.from_pretrained("vistrieve-tiny-test", None, **kw)
    enc.name = f"clip-tiny-test:seed{seed}"
    return enc


@ENCODERS.register("shapes-clip")
def _shapes(**kw: Any) -> Encoder:
    """The embedded default: a tiny open_clip ViT trained on the shapes world."""
    from vistrieve.encoders.embedded import load_shapes_clip

    return load_shapes_clip(**kw)


@ENCODERS.register("lit")
def _lit(heads: str, **kw: Any) -> Encoder:
    """LiT baseline: frozen EfficientNet-Lite0 + MiniLM towers with trained heads."""
    from vistrieve.encoders.lit import LitEncoder

    return LitEncoder.from_pretrained(heads, **kw)


def _bridge(variant: str, heads: str | None = None, **kw: Any) -> Encoder:
    from vistrieve.encoders.bridge import BridgeEncoder

    return BridgeEncoder.from_pretrained(variant, heads=heads, **kw)


@ENCODERS.register("bridge-lite0")
def _bridge_lite0(heads: str | None = None, **kw: Any) -> Encoder:
    """Real photos, no training: EfficientNet-Lite0 ImageNet classes bridged to MiniLM."""
    return _bridge("lite0", heads, **kw)


@ENCODERS.register("bridge-lite1")
def _bridge_lite1(heads: str | None = None, **kw: Any) -> Encoder:
    """Real photos, no training: EfficientNet-Lite1 ImageNet classes bridged to MiniLM
    (the default for real images); ``heads`` adds ``vistrieve train bridge`` heads."""
    return _bridge("lite1", heads, **kw)


@ENCODERS.register("bridge-lite2")
def _bridge_lite2(heads: str | None = None, **kw: Any) -> Encoder:
    """Real photos, no training: EfficientNet-Lite2 ImageNet classes bridged to MiniLM."""
    return _bridge("lite2", heads, **kw)


@ENCODERS.register("real-photo")
def _real_photo(heads: str | None = None, **kw: Any) -> Encoder:
    """Alias of ``bridge-lite1``, the default encoder for real photos."""
    return _bridge("lite1", heads, **kw)


DEFAULT_PHOTO_ENCODER = "bridge-lite1"
"""The encoder ``vistrieve index`` uses for real images unless told otherwise."""

_RUNTIME_KEYS = ("device", "batch_size", "num_workers", "progress")

POSITIONAL: dict[str, tuple[str, ...]] = {
    "open_clip": ("model", "pretrained"),
    "hf": ("name_or_path",),
    "lit": ("heads",),
    "bridge-lite0": ("heads",),
    "bridge-lite1": ("heads",),
    "bridge-lite2": ("heads",),
    "real-photo": ("heads",),
    "shapes-clip": ("path",),
}
"""The factory arguments that ``name:arg1:arg2`` spec strings fill in, per encoder."""

_PATH_KEYS = ("heads", "path", "adapter")
"""Arguments that are always local paths (made absolute when a spec is parsed)."""


def _absolute(value: str | os.PathLike[str]) -> str:
    # Specs are saved in index manifests: a path must not depend on the working directory.
    return str(Path(value).expanduser().resolve())


def parse_encoder_spec(text: str) -> dict[str, Any]:
    """The spec mapping of a command-line encoder string.

    Forms: a registered name (``"clip-tiny-test"``); ``name:arg[:arg]`` with the arguments
    of :data:`POSITIONAL` (``"open_clip:ViT-B-32:openai"``, ``"open_clip:hf-hub:org/repo"``,
    ``"hf:/models/clip"``, ``"lit:runs/lit"``, ``"bridge-lite1:runs/bridge"``,
    ``"shapes-clip:weights.safetensors"``); or a
    JSON object (``'{"name": "open_clip", "model": "ViT-B-32"}'``). Local paths become
    absolute, so a spec saved in a manifest means the same from any working directory.

    Raises:
        ValueError: malformed JSON, too many ``:`` arguments, or arguments for an encoder
            that takes none.
        KeyError: an unknown encoder name (close matches are suggested).

    Example:
        >>> parse_encoder_spec("open_clip:ViT-B-32:openai")
        {'name': 'open_clip', 'model': 'ViT-B-32', 'pretrained': 'openai'}
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"encoder spec {text!r} is not valid JSON: {exc}") from exc
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"encoder spec {text!r} must be a JSON object with a 'name'")
    else:
        name, _, rest = text.partition(":")
        ENCODERS.get(name)  # unknown names fail here, with suggestions
        spec = {"name": name}
        if rest:
            keys = POSITIONAL.get(name, ())
            if not keys:
                raise ValueError(f"encoder {name!r} takes no ':' arguments (got {text!r})")
            if name == "open_clip" and rest.startswith(("hf-hub:", "local-dir:")):
                args = [rest]
            else:
                args = rest.split(":", len(keys) - 1)
            spec.update({k: v for k, v in zip(keys, args, strict=False) if v})
    for key in _PATH_KEYS:
        if isinstance(spec.get(key), str):
            spec[key] = _absolute(spec[key])
    if spec.get("name") == "hf" and isinstance(spec.get("name_or_path"), str):
        if Path(spec["name_or_path"]).expanduser().exists():
            spec["name_or_path"] = _absolute(spec["name_or_path"])
    if spec.get("name") == "open_clip":
        for key in ("pretrained",):
            value = spec.get(key)
            if isinstance(value, str) and Path(value).expanduser().is_file():
                spec[key] = _absolute(value)
    return dict(spec)


def create_encoder(spec: str | Mapping[str, Any] | Encoder, **overrides: Any) -> Encoder:
    """Build an encoder from a registered name, a spec mapping, or pass one through.

    Args:
        spec: ``"open_clip"``, ``"hf"``, ``"clip-tiny-test"``, ``"shapes-clip"`` ...; or a
            mapping ``{"name": ..., **kwargs}``; or an object that already encodes.
        **overrides: Keyword arguments for the factory (``model``, ``pretrained``,
            ``device``, ``batch_size`` ...). ``adapter=PATH`` applies the output of a
            ``vistrieve finetune clip`` run (a LoRA adapter, merged, or full weights).

    Returns:
        The encoder, with ``spec`` set to what rebuilds it (runtime options excluded).
    """
    if not isinstance(spec, (str, Mapping)):
        return spec
    if isinstance(spec, str):
        name, kwargs = spec, dict(overrides)
    else:
        if "name" not in spec:
            raise ValueError(f"encoder spec {dict(spec)!r} has no 'name' key")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        kwargs.update(overrides)
        name = str(spec["name"])
    adapter = kwargs.pop("adapter", None)
    encoder = ENCODERS.create(name, **kwargs)
    if adapter is not None:
        apply_encoder_adapter(encoder, adapter)
        kwargs["adapter"] = str(adapter)
    saved = {
        k: _absolute(v) if k in _PATH_KEYS and isinstance(v, (str, os.PathLike)) else v
        for k, v in kwargs.items()
        if k not in _RUNTIME_KEYS
    }
    encoder.spec = {"name": name, **saved}  # type: ignore[attr-defined]
    return encoder


def apply_encoder_adapter(encoder: Encoder, adapter: str | os.PathLike[str]) -> Encoder:
    """Apply a ``vistrieve finetune clip`` output to ``encoder`` in place (open_clip: the
    whole model; LiT: text tower and heads) and mark its name with the adapter's digest,
    so an index built with the plain model is not silently reused.

    Raises:
        FileNotFoundError: ``adapter`` is not a fine-tuning output.
        ValueError: it belongs to another stage, or the encoder type cannot take it.
    """
    from vistrieve.adapters import adapter_digest, load_finetuned

    model: Any = getattr(encoder, "model", None)
    if hasattr(encoder, "text_tower") and hasattr(encoder, "heads"):
        from vistrieve.encoders.lit import LitTextSide

        lit: Any = encoder
        side: Any = load_finetuned(LitTextSide(lit.text_tower, lit.heads), adapter, stage="clip")
        lit.text_tower, lit.heads = side.tower.eval(), side.heads.eval()
    elif isinstance(model, torch.nn.Module):
        encoder.model = load_finetuned(model, adapter, stage="clip").eval()  # type: ignore[attr-defined]
    else:
        raise ValueError(f"cannot apply an adapter to {type(encoder).__name__}")
    digest = adapter_digest(adapter)
    encoder.name = f"{encoder.name}+finetuned:{digest}"
    return encoder


def encoder_spec(encoder: Encoder) -> dict[str, Any] | None:
    """The spec that rebuilds ``encoder``, or None when it was built by hand."""
    spec = getattr(encoder, "spec", None)
    return dict(spec) if isinstance(spec, Mapping) else None


__all__ = [
    "DEFAULT_PHOTO_ENCODER",
    "ENCODERS",
    "POSITIONAL",
    "TorchEncoder",
    "apply_encoder_adapter",
    "create_encoder",
    "encoder_spec",
    "parse_encoder_spec",
]
