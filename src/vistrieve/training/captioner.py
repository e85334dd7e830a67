"""Captioners: training a :class:`~vistrieve.query_rewriting.captioner.PrefixCaptioner`'s
language model to caption image-encoder features (teacher forcing, one sampled reference per
image), and building and tuning a real-photo
:class:`~vistrieve.query_rewriting.captioner.RetrievalCaptioner` from a caption bank."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def tune_retrieval_captioner(
    captioner: Any,
    features: np.ndarray,
    references: Sequence[Sequence[str]],
    *,
    ks: Sequence[int] = (20, 40, 80),
    consensus: Sequence[float] = (1.0, 4.0, 8.0),
    visual_weights: Sequence[float] = (1.0, 4.0, 8.0),
    metric: str = "CIDEr",
) -> dict[str, Any]:
    """Choose ``k``, ``consensus`` and ``visual_weight`` of a
    :class:`~vistrieve.query_rewriting.captioner.RetrievalCaptioner` on its own bank images,
    leave-one-out: image ``i`` is captioned from a bank without its captions and scored
    against them. The best setting is left on ``captioner``.

    Args:
        captioner: A captioner whose bank holds the images of ``features`` (row ``i`` of
            ``features`` is bank image ``i``).
        features: The bank images' embeddings.
        references: The bank images' captions, per image.
        ks, consensus, visual_weights: The grid.
        metric: The key of :func:`~vistrieve.evals.captions.caption_metrics` maximised.

    Returns:
        The chosen setting, its scores, and every setting's score under ``grid``.
    """
    from vistrieve.evals.captions import caption_metrics

    if captioner.image_of is None:
        raise ValueError("leave-one-out tuning needs a bank built with images (visual=True)")
    if len(features) != len(references):
        raise ValueError(f"{len(features)} feature rows but {len(references)} reference lists")
    rows = list(range(len(features)))
    grid: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for k in ks:
        for c in consensus:
            for v in visual_weights:
                captioner.k, captioner.consensus, captioner.visual_weight = (
                    int(k),
                    float(c),
                    float(v),
                )
                preds = [b[0] for b in captioner.describe_features(features, n=1, exclude=rows)]
                scores = caption_metrics(preds, references)
                entry = {"k": int(k), "consensus": float(c), "visual_weight": float(v), **scores}
                grid.append(entry)
                if best is None or scores[metric] > best[metric]:
                    best = entry
    assert best is not None  # the grid is not empty
    captioner.k, captioner.consensus = best["k"], best["consensus"]
    captioner.visual_weight = best["visual_weight"]
    return {"chosen": best, "grid": grid}


def build_photo_captioner(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    encoder: Any = "bridge-lite1",
    n_train: int = 800,
    seed: int = 0,
    tune: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a real-photo :class:`~vistrieve.query_rewriting.captioner.RetrievalCaptioner`
    from a Flickr8k-format folder (``captions.txt`` + ``images/``) and save it.

    The bank is the training split (:func:`~vistrieve.evals.datasets.split_by_image` with
    ``n_train`` and ``seed``, the split the bridge heads train on); with ``tune``, the
    captioner's settings are chosen leave-one-out on those training images
    (:func:`tune_retrieval_captioner`) and the held-out images are captioned and scored once.

    Returns:
        A record: bank size, chosen settings and their training score, held-out scores,
        seconds.
    """
    from vistrieve.encoders import create_encoder
    from vistrieve.evals.captions import caption_metrics
    from vistrieve.evals.datasets import load_flickr8k, split_by_image
    from vistrieve.query_rewriting.captioner import RetrievalCaptioner
    from vistrieve.utils.images import load_image

    t0 = time.perf_counter()
    enc = create_encoder(encoder, progress=progress)  # an encoder passes through
    train, test = split_by_image(load_flickr8k(data_dir), n_train=n_train, seed=seed)
    captioner = RetrievalCaptioner.build(enc, train, progress=progress, name="photo-captioner")
    record: dict[str, Any] = {
        "data": str(Path(data_dir).resolve()),
        "bank_images": len(train),
        "bank_captions": len(captioner.captions),
        "encoder": getattr(enc, "name", str(encoder)),
    }
    if tune:
        assert captioner.image is not None  # built with visual=True
        refs = [list(train[i].captions) for i in train.ids]
        tuned = tune_retrieval_captioner(captioner, captioner.image, refs)
        record["chosen"] = tuned["chosen"]
        if len(test):
            ids = test.ids
            feats = np.asarray(enc.encode_image([load_image(test[i].image) for i in ids]))
            preds = captioner.caption_features(feats)
            record["heldout"] = {
                "images": len(ids),
                **caption_metrics(preds, [list(test[i].captions) for i in ids]),
            }
    captioner.save(out_dir)
    record["out"] = str(Path(out_dir).resolve())
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record
