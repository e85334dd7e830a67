"""Train the LiT baseline's projection heads on Flickr8k (or any captioned corpus).

The frozen towers' features of every image and caption are computed once and cached as
``.npy`` files keyed by a hash of the towers and the file list, so training the heads takes
seconds and re-runs skip the encoding. The split is by image: sorted ids, a seeded shuffle,
the first ``n_train`` for training and the rest for testing
(:func:`vistrieve.evals.datasets.split_by_image`).

Usage::

    vistrieve train lit --data ../shared/data/flickr8k-1k --out runs/lit
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vistrieve.encoders.lit import LitEncoder, LitHeads
from vistrieve.evals.metrics import image_text_retrieval_metrics
from vistrieve.types import Corpus
from vistrieve.utils.io import atomic_save_npy, load_npy

logger = logging.getLogger(__name__)


def cached_features(
    encoder: LitEncoder, corpus: Corpus, cache_dir: str | Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frozen features of a corpus, computed once and cached.

    Returns:
        ``(image_features (n_items, image_dim), text_features (n_captions, text_dim),
        text_to_image (n_captions,))`` in corpus order.
    """
    from tqdm.auto import tqdm

    from vistrieve.encoders.base import iter_image_batches, raise_on_failures

    texts, owners = corpus.caption_pairs()
    key = hashlib.sha256(
        json.dumps([encoder.name, [(it.id, it.uri) for it in corpus.values()], texts]).encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir)
    img_f, txt_f = cache / f"{key}-image.npy", cache / f"{key}-text.npy"
    pos = {item_id: i for i, item_id in enumerate(corpus.ids)}
    t2i = np.array([pos[o] for o in owners], dtype=np.int64)
    if img_f.is_file() and txt_f.is_file():
        logger.info("using cached features %s", key)
        return load_npy(img_f), load_npy(txt_f), t2i
    images = [it.image for it in corpus.values()]
    chunks = []
    batches = iter_image_batches(
        images, encoder.preprocess, batch_size=encoder.batch_size, num_workers=encoder.num_workers
    )
    for _, pixels, failures in tqdm(
        batches, total=-(-len(images) // encoder.batch_size), desc="image features"
    ):
        raise_on_failures(failures)
        assert pixels is not None
        chunks.append(encoder.image_features(pixels).numpy())
    img = np.concatenate(chunks).astype(np.float32)
    txt = np.concatenate(
        [
            encoder.text_features(texts[s : s + 256]).numpy()
            for s in tqdm(range(0, len(texts), 256), desc="text features")
        ]
    ).astype(np.float32)
    atomic_save_npy(img_f, img)
    atomic_save_npy(txt_f, txt)
    return img, txt, t2i


def train_heads(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_to_image: np.ndarray,
    *,
    embed_dim: int = 256,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[LitHeads, list[float]]:
    """Train projection heads with symmetric InfoNCE on (caption, its image) pairs.

    Each step draws a batch of distinct images and one caption of each, so a batch never
    holds two positives of one image.

    Returns:
        The heads and the mean loss of every epoch.
    """
    from vistrieve.training.clip import clip_loss

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    img = torch.from_numpy(image_features)
    txt = torch.from_numpy(text_features)
    t2i = torch.from_numpy(text_to_image)
    by_image = [torch.nonzero(t2i == i).flatten() for i in range(len(img))]
    heads = LitHeads(img.shape[1], txt.shape[1], embed_dim)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    bs = min(batch_size, len(img))
    for _ in range(epochs):
        order = torch.randperm(len(img), generator=gen)
        epoch_loss = []
        for s in range(0, len(order) - bs + 1, bs):
            ids = order[s : s + bs]
            caps = torch.stack(
                [
                    by_image[i][torch.randint(len(by_image[i]), (1,), generator=gen)][0]
                    for i in ids.tolist()
                ]
            )
            ie = F.normalize(heads.image(img[ids]), dim=-1)
            te = F.normalize(heads.text(txt[caps]), dim=-1)
            loss = clip_loss(ie, te, heads.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss.append(loss.item())
        losses.append(float(np.mean(epoch_loss)))
    return heads.eval(), losses


def evaluate_heads(
    heads: LitHeads,
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_to_image: np.ndarray,
) -> dict[str, float]:
    """R@1/5/10 both directions (5-caption protocol) of projected features."""
    with torch.inference_mode():
        ie = F.normalize(heads.image(torch.from_numpy(image_features)), dim=-1).numpy()
        te = F.normalize(heads.text(torch.from_numpy(text_features)), dim=-1).numpy()
    return image_text_retrieval_metrics(ie, te, text_to_image)


def train_lit_baseline(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    n_train: int = 800,
    epochs: int = 10,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Cache features, train the heads on ``n_train`` images, evaluate on the rest, save.

    Returns:
        Test metrics, the random-projection baseline's metrics, sizes and timings.
    """
    from vistrieve.encoders.lit import effnet_preprocess, load_effnet_lite0, load_minilm
    from vistrieve.evals.datasets import load_flickr8k, split_by_image

    t0 = time.perf_counter()
    corpus = load_flickr8k(data_dir)
    train, test = split_by_image(corpus, n_train, seed=seed)
    placeholder = LitHeads(1280, 384)
    enc = LitEncoder(load_effnet_lite0(), load_minilm(), placeholder, effnet_preprocess())
    cache = Path(cache_dir) if cache_dir is not None else Path(out_dir) / "features"
    t1 = time.perf_counter()
    tr = cached_features(enc, train, cache)
    te = cached_features(enc, test, cache)
    t2 = time.perf_counter()
    heads, losses = train_heads(*tr, epochs=epochs, seed=seed)
    t3 = time.perf_counter()
    metrics = evaluate_heads(heads, *te)
    torch.manual_seed(seed)
    random_heads = LitHeads(1280, 384)
    baseline = evaluate_heads(random_heads, *te)
    result = {
        "command": f"vistrieve train lit --data {data_dir} --out {out_dir} "
        f"--n-train {n_train} --epochs {epochs} --seed {seed}",
        "split": {
            "train_images": len(train),
            "test_images": len(test),
            "test_captions": int(len(te[2])),
        },
        "test_metrics": metrics,
        "random_projection_metrics": baseline,
        "final_loss": losses[-1],
        "seconds": {"load_towers": t1 - t0, "features": t2 - t1, "train": t3 - t2},
        "trainable_parameters": sum(p.numel() for p in heads.parameters()),
    }
    heads.save(out_dir, meta={"recipe": result["command"], "test_metrics": metrics})
    return result
