"""The shapes world's Q-Former reranker: trained on negatives mined by shapes-clip, with
mined candidates that the caption also describes counted as positives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vistrieve.rerankers.qformer import CONFIG_FILE, WEIGHTS_FILE, clip_patch_tokens, embedded_files
from vistrieve.training.qformer import train_qformer_reranker
from vistrieve.utils.io import atomic_write, atomic_write_json, read_json


def install_embedded_qformer(directory: str | os.PathLike[str]) -> Path:
    """Copy a trained shapes Q-Former into the package (float16 weights + JSON sidecar).

    Returns the installed weights file.
    """
    from safetensors.torch import load_file, save_file

    root = Path(directory)
    weights, config = embedded_files()
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in load_file(str(root / WEIGHTS_FILE)).items()
    }
    atomic_write(weights, lambda p: save_file(tensors, str(p)))
    meta = read_json(root / CONFIG_FILE)
    record = root / "train_record.json"
    if record.is_file():
        meta["training"] = {k: v for k, v in read_json(record).items() if k != "losses"}
    atomic_write_json(config, meta)
    return weights


def train_shapes_qformer(
    out: str | os.PathLike[str] = "runs/qformer",
    *,
    steps: int = 1000,
    n_train: int = 4000,
    seed: int = 0,
    k_mine: int = 16,
    n_hard: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    dense_residual: bool = True,
    progress: bool = True,
    layers: int = 2,
    n_val: int = 500,
    captioning_steps: int = 0,
    captioning_weight: float = 0.0,
) -> dict[str, Any]:
    """Train the Q-Former reranker on the shapes world with negatives mined by shapes-clip.

    Mined candidates that the caption also describes (see
    :func:`~vistrieve.data.shapes.caption_signature`) count as positives, not negatives.
    A captioning model's ``lm_weight`` is chosen on the val split. The shipped model:
    ``vistrieve train qformer --out runs/qformer-itg --captioning-steps 3000
    --steps 5000 --captioning-weight 1.0``.
    """
    from vistrieve.data.shapes import Scene, ShapesWorld, caption_signature
    from vistrieve.encoders import create_encoder

    world = ShapesWorld(seed=seed, n_train=n_train, n_val=n_val)
    corpus = world.corpus("train")
    # Only a captioning model has an lm_weight to choose on the val split.
    val = world.corpus("val") if captioning_steps > 0 or captioning_weight > 0 else None
    encoder = create_encoder("shapes-clip", progress=False)
    corpora = [corpus] if val is None else [corpus, val]
    scenes = {i: Scene.from_dict(it.metadata["scene"]) for c in corpora for i, it in c.items()}

    def positives_of(caption: str, owner: str, mined: list[str]) -> set[str]:
        sig = caption_signature(scenes[owner], caption)
        return {i for i in mined if caption_signature(scenes[i], caption) == sig}

    command = (
        f"vistrieve train qformer --out {out} --steps {steps} --seed {seed} "
        f"--lr {lr} --batch-size {batch_size} --n-train {n_train} --n-val {n_val} "
        f"--layers {layers} "
        f"--captioning-steps {captioning_steps} --captioning-weight {captioning_weight}"
        + ("" if dense_residual else " --no-dense-residual")
    )
    return train_qformer_reranker(
        encoder,
        corpus,
        clip_patch_tokens(encoder),
        encoder.tokenizer,  # type: ignore[attr-defined]
        out,
        steps=steps,
        k_mine=k_mine,
        n_hard=n_hard,
        batch_size=batch_size,
        lr=lr,
        dense_residual=dense_residual,
        positives_of=positives_of,
        seed=seed,
        progress=progress,
        command=command,
        layers=layers,
        captioning_steps=captioning_steps,
        captioning_weight=captioning_weight,
        val_corpus=val,
    )
