"""The embedded default model: a tiny open_clip ViT trained on the shapes world.

Its weights ship inside the package as safetensors (a few MB), so the demo and the examples
run with no network. The text tower's token embedding has 49,408 rows of which the shapes
vocabulary uses well under a hundred; the file stores only the rows that training touched
(``token_ids`` + ``token_rows``) and rows for every other token load as zeros. Everything is
stored in float16 and loaded as float32. The recipe that produced the file is
``vistrieve train shapes-clip`` (see :mod:`vistrieve.training.clip`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vistrieve.utils.io import atomic_write, atomic_write_json, read_json

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SHAPES_CLIP = "shapes-clip"
_TOKEN_KEY = "token_embedding.weight"


def save_compact_clip(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    used_token_ids: list[int],
    meta: dict[str, Any] | None = None,
) -> None:
    """Save an open_clip model with a compacted token embedding, in float16 safetensors.

    Args:
        model: The open_clip model.
        path: Destination ``.safetensors`` file; a ``.json`` sidecar with ``arch`` and
            ``meta`` is written beside it.
        arch: open_clip architecture name to rebuild the model with.
        used_token_ids: Token ids whose embedding rows are kept.
        meta: Extra JSON-serialisable information (recipe, metrics).
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if _TOKEN_KEY not in state:
        raise ValueError(f"model has no {_TOKEN_KEY}; not an open_clip CLIP text tower")
    ids = torch.tensor(sorted(set(used_token_ids)), dtype=torch.int64)
    rows = state.pop(_TOKEN_KEY)[ids]
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    tensors["vistrieve.token_ids"] = ids
    tensors["vistrieve.token_rows"] = rows.to(torch.float16)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    dest = Path(path)
    atomic_write(dest, lambda p: save_file(tensors, str(p)))
    sidecar = {"arch": arch, **(meta or {})}
    atomic_write_json(dest.with_suffix(".json"), sidecar)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    # open_clip warns that it initialised the model randomly; the weights load right after.
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def load_compact_clip(
    path: str | os.PathLike[str],
) -> tuple[torch.nn.Module, Any, Any, dict[str, Any]]:
    """Load a model saved by :func:`save_compact_clip`.

    Returns:
        ``(model, preprocess, tokenizer, sidecar)`` with the model in eval mode, float32.

    Raises:
        FileNotFoundError: the weights or their JSON sidecar are missing.
        ValueError: the file is truncated or does not match its architecture.
    """
    import open_clip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vistrieve.encoders.open_clip import register_open_clip_presets

    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"embedded weights not found: {src}")
    sidecar = read_json(src.with_suffix(".json"))
    register_open_clip_presets()
    try:
        tensors = load_file(str(src))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {src}: truncated or corrupt ({exc})") from exc
    with _no_random_init_warning():
        model, _, preprocess = open_clip.create_model_and_transforms(
            sidecar["arch"], pretrained=None
        )
    ids = tensors.pop("vistrieve.token_ids")
    rows = tensors.pop("vistrieve.token_rows")
    full = torch.zeros_like(model.state_dict()[_TOKEN_KEY])
    full[ids] = rows.to(full.dtype)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    state[_TOKEN_KEY] = full
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{src} does not match architecture {sidecar['arch']!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    tokenizer = open_clip.get_tokenizer(sidecar["arch"])
    return model, preprocess, tokenizer, sidecar


def load_shapes_clip(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
    """The embedded shapes-world CLIP as an :class:`~vistrieve.encoders.open_clip.OpenClipEncoder`.

    Args:
        path: Weights file (default: the copy shipped in the package).
        **kwargs: Encoder options (device, batch_size, num_workers, progress).

    Example:
        >>> enc = load_shapes_clip()
        >>> enc.encode_text(["a red circle"]).shape
        (1, 128)
    """
    from vistrieve.encoders.open_clip import OpenClipEncoder

    src = Path(path) if path is not None else WEIGHTS_DIR / f"{SHAPES_CLIP}.safetensors"
    model, preprocess, tokenizer, sidecar = load_compact_clip(src)
    logger.debug("loaded %s (%s)", src, sidecar.get("arch"))
    return OpenClipEncoder(model, preprocess, tokenizer, name=SHAPES_CLIP, **kwargs)
