"""The shapes world as a cross-modal hashing benchmark (multi-label: 48 colour-shape labels),
encoded with any vistrieve encoder (``vistrieve train hash --data shapes``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vistrieve.data.tasks import HashingDataset
from vistrieve.training.hashing import HashData
from vistrieve.utils.io import atomic_save_npy, load_npy

logger = logging.getLogger(__name__)


def _encode_unique(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    unique = sorted(set(texts))
    feats = encoder.encode_text(unique)
    row = {t: i for i, t in enumerate(unique)}
    return np.asarray(feats[[row[t] for t in texts]], dtype=np.float32)


def shapes_data(
    encoder: str = "shapes-clip",
    *,
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 1000,
    cache_dir: str | os.PathLike[str] | None = None,
) -> HashData:
    """The shapes world encoded with a vistrieve encoder (multi-label, 48 colour-shape labels).

    Training pairs are every (image, caption) of the train split (5 per image). Queries are
    the test-split items, the database the train-split items; an item's text is its first
    caption. Features are cached under ``cache_dir`` (``.npy``, no pickle).
    """
    from vistrieve.data.shapes import ShapesConfig, ShapesWorld, label_matrix
    from vistrieve.encoders import create_encoder

    key = f"shapes-{encoder.replace(':', '_').replace('/', '_')}-s{seed}-{n_train}-{n_test}"
    cache = Path(cache_dir) / key if cache_dir is not None else None
    names = ("train_image", "train_text", "train_labels", "test_image", "test_text", "test_labels")
    arrays: dict[str, np.ndarray] = {}
    n_caps = np.empty(0, dtype=np.int64)
    if cache is not None and all((cache / f"{n}.npy").is_file() for n in names):
        arrays = {n: load_npy(cache / f"{n}.npy") for n in names}
        n_caps = load_npy(cache / "train_captions.npy")
    else:
        world = ShapesWorld(
            ShapesConfig(
                seed=seed, n_train=n_train, n_val=0, n_test=n_test, n_composed=0, n_dialogs=0
            )
        )
        enc = create_encoder(encoder, progress=False)
        for split, prefix in (("train", "train"), ("test", "test")):
            corpus = world.corpus(split)
            items = list(corpus.values())
            logger.info("encoding %d %s images with %s", len(items), split, encoder)
            arrays[f"{prefix}_image"] = np.asarray(
                enc.encode_image([it.image for it in items]), dtype=np.float32
            )
            texts = [c for it in items for c in it.captions]
            arrays[f"{prefix}_text"] = _encode_unique(enc, texts)
            arrays[f"{prefix}_labels"] = label_matrix(corpus)
            if split == "train":
                n_caps = np.array([len(it.captions) for it in items], dtype=np.int64)
        if cache is not None:
            for n, arr in arrays.items():
                atomic_save_npy(cache / f"{n}.npy", arr)
            atomic_save_npy(cache / "train_captions.npy", n_caps)
    first = np.concatenate([[0], np.cumsum(n_caps)[:-1]]).astype(np.int64)
    test_caps = arrays["test_text"].shape[0] // arrays["test_image"].shape[0]
    owner = np.repeat(np.arange(len(n_caps)), n_caps)
    train_labels = arrays["train_labels"]
    ds = HashingDataset(
        name="shapes",
        train_image=arrays["train_image"][owner],
        train_text=arrays["train_text"],
        train_labels=train_labels[owner],
        query_image=arrays["test_image"],
        query_text=arrays["test_text"][::test_caps],
        query_labels=arrays["test_labels"],
        db_image=arrays["train_image"],
        db_text=arrays["train_text"][first],
        db_labels=train_labels,
        protocol=(
            f"shapes world (seed {seed}) encoded with {encoder}: queries = the "
            f"{arrays['test_image'].shape[0]} test-split items, database = the "
            f"{arrays['train_image'].shape[0]} train-split items (an item's text is its first "
            f"caption); training pairs = all {arrays['train_text'].shape[0]} train captions "
            f"with their images; {train_labels.shape[1]} colour-shape labels, relevant = "
            "shares at least one label"
        ),
    )
    return HashData(
        "shapes",
        ds.train_image,
        ds.train_text,
        ds.train_labels,
        benchmark=ds,
        protocol=ds.protocol,
    )
