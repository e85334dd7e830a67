"""The shapes world's captioner: a small T5 decoding captions from shapes-clip image
features (``vistrieve train captioner``), and the copy that ships in the package."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from vistrieve.generative.model import GraceModel
from vistrieve.query_rewriting.captioner import PrefixCaptioner
from vistrieve.training.captioner import train_captioner

EMBEDDED_CAPTIONER = "shapes-captioner"


def _embedded_dir() -> Path:
    from vistrieve.encoders.embedded import WEIGHTS_DIR

    return WEIGHTS_DIR / EMBEDDED_CAPTIONER


def install_embedded_captioner(directory: str | os.PathLike[str]) -> Path:
    """Copy a trained shapes captioner (``train_shapes_captioner`` output) into the package,
    with the language model's weights in float16; returns the installed directory."""
    from vistrieve.utils.io import atomic_directory

    captioner = PrefixCaptioner.load(directory)
    record = Path(directory) / "train_record.json"
    dest = _embedded_dir()
    with atomic_directory(dest) as tmp:
        captioner.model.half()
        captioner.name = "shapes-captioner (embedded)"
        captioner.save(tmp / "model")
        if record.is_file():
            (tmp / "train_record.json").write_bytes(record.read_bytes())
    # atomic_directory swapped tmp in as dest; the model lives one level down.
    return dest


def load_shapes_captioner(encoder: Any = None, **kw: Any) -> PrefixCaptioner:
    """The shapes-world captioner that ships in the package (with the image encoder its
    directory records, shapes-clip, unless ``encoder`` is given)."""
    root = _embedded_dir() / "model"
    if not (root / "grace_config.json").is_file():
        raise FileNotFoundError(
            f"no embedded captioner at {root}; train one with `vistrieve train captioner` and "
            "install it with --install"
        )
    return PrefixCaptioner.load(root, encoder, **kw)


def train_shapes_captioner(
    out: str | os.PathLike[str] = "runs/shapes-captioner",
    *,
    steps: int = 1500,
    n_train: int = 4000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a :class:`PrefixCaptioner` on the shapes world's training split (shapes-clip
    image features, a small T5) and save it; returns a record with the validation
    exact-match rate (share of generated captions that equal one of the references)."""
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.generative.model import word_tokenizer
    from vistrieve.recipes.shapes.grace import tiny_t5
    from vistrieve.utils.io import atomic_write_json

    t0 = time.perf_counter()
    world = ShapesWorld(seed=seed, n_train=n_train)
    train, val = world.corpus("train"), world.corpus("val")
    encoder = create_encoder("shapes-clip", progress=False)
    words = sorted({w.strip(",:") for it in train.values() for c in it.captions for w in c.split()})
    tok = word_tokenizer(words)
    model = GraceModel(tiny_t5(len(tok), seed=seed), tok, image_dim=encoder.dim)
    feats = np.asarray(encoder.encode_image([it.image for it in train.values()]))
    losses = train_captioner(
        model, feats, [it.captions for it in train.values()], steps=steps, seed=seed,
        progress=progress,
    )  # fmt: skip
    captioner = PrefixCaptioner(model, encoder, name=f"shapes-captioner:{Path(out).name}")
    vitems = list(val.values())[:200]
    caps = captioner.caption([it.image for it in vitems])
    exact = float(np.mean([c in it.captions for c, it in zip(caps, vitems, strict=True)]))
    captioner.save(out)
    record = {
        "steps": steps,
        "train_images": len(train),
        "seconds": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-50:])),
        "val_exact_match": exact,
        "val_examples": [
            {"caption": c, "references": list(it.captions)}
            for c, it in zip(caps[:5], vitems[:5], strict=True)
        ],
    }
    atomic_write_json(Path(out) / "train_record.json", record)
    return record
