"""Training the Q-Former reranker: hard negatives mined by a first stage, a listwise ITM
loss over them, BLIP-2's captioning loss, and the choice of the caption-likelihood weight.

For each caption, the top-ranked images of the dual encoder that are not a correct match
are scored together with the positive under a listwise softmax loss; patch tokens of the
frozen image tower are computed once and cached. Two-phase training runs the captioning
loss alone first, then listwise ITM with the captioning loss kept at a weight.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistrieve.encoders import encoder_spec
from vistrieve.rerankers.qformer import (
    QFormerConfig,
    QFormerCrossEncoder,
    QFormerReranker,
    TextVocabulary,
    clip_pair_similarity,
)
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.types import Hit, Item, Query
from vistrieve.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def sample_listwise(
    rng: np.random.Generator,
    positives: Sequence[set[int]],
    negatives: Sequence[Sequence[int]],
    n_images: int,
    batch_size: int,
    n_neg: int,
    n_hard: int,
) -> tuple[np.ndarray, torch.Tensor]:
    """A listwise batch: ``batch_size`` caption rows and, for each, its positive image row
    first, then ``n_hard`` mined negatives and random non-positive images up to ``n_neg``.

    Returns:
        ``(caption rows (B,), image rows (B, 1 + n_neg))``.
    """
    rows = rng.choice(len(positives), size=min(batch_size, len(positives)), replace=False)
    img_idx = []
    for r in rows:
        pos = sorted(positives[r])
        negs = [n for n in negatives[r] if n not in positives[r]][:n_hard]
        while len(negs) < n_neg:
            cand = int(rng.integers(n_images))
            if cand not in positives[r]:
                negs.append(cand)
        img_idx.append([pos[int(rng.integers(len(pos)))], *negs])
    return rows, torch.tensor(img_idx)


def listwise_loss(
    model: nn.Module,
    image_tokens: torch.Tensor,
    text_ids: torch.Tensor,
    rows: np.ndarray,
    idx: torch.Tensor,
    dense: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Cross-entropy of the positive (column 0 of ``idx``) among each caption's list."""
    b, width = idx.shape
    trows = torch.from_numpy(np.asarray(rows)).repeat_interleave(width)
    cos = None
    if dense is not None:
        cos = (dense[0][trows] * dense[1][idx.flatten()]).sum(-1)
    score = model.matching_logit if isinstance(model, QFormerCrossEncoder) else model
    logits = score(image_tokens[idx.flatten()], text_ids[trows], cos).view(b, width)
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=logits.device))


def captioning_loss(
    model: QFormerCrossEncoder,
    image_tokens: torch.Tensor,
    text_ids: torch.Tensor,
    caption_rows: np.ndarray,
    image_rows: np.ndarray,
) -> torch.Tensor:
    """BLIP-2's image-grounded text generation loss: the mean negative log-likelihood per
    token of each caption given its image (rows of ``text_ids`` and ``image_tokens``)."""
    ids = text_ids[torch.from_numpy(np.asarray(caption_rows))]
    logp = model.text_logprob(image_tokens[torch.from_numpy(np.asarray(image_rows))], ids)
    return -logp.sum() / (ids[:, 1:] != 0).sum().clamp(min=1)


def train_qformer(
    model: QFormerCrossEncoder,
    vocabulary: TextVocabulary,
    image_tokens: torch.Tensor,
    texts: Sequence[str],
    positives: Sequence[set[int]],
    negatives: Sequence[Sequence[int]],
    *,
    steps: int = 1000,
    batch_size: int = 32,
    n_neg: int = 7,
    n_hard: int | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    dense: tuple[torch.Tensor, torch.Tensor] | None = None,
    captioning_steps: int = 0,
    captioning_weight: float = 1.0,
    captioning_batch_size: int = 64,
) -> list[float]:
    """Listwise ITM training: each caption's positive against ``n_neg`` mined hard
    negatives; for ``captioning`` models, BLIP-2's captioning loss as well.

    Args:
        model: The cross-encoder to train.
        vocabulary: Text vocabulary.
        image_tokens: Cached patch tokens of every training image (N, P, image_dim).
        texts: Training captions.
        positives: For each caption, the image rows that match it.
        negatives: For each caption, hard-negative image rows (best first).
        steps: Optimiser steps (including ``captioning_steps``).
        batch_size: Captions per step (listwise ITM).
        n_neg: Negatives per caption.
        n_hard: How many of them are mined hard negatives (default half); the rest are
            random images. All-hard batches leave a fresh model at the uniform-logit
            saddle (loss ln(n_neg + 1)); random ones teach plain matching first.
        lr: AdamW learning rate.
        seed: Sampling seed.
        progress: Show a progress bar.
        dense: ``(text_embeddings, image_embeddings)`` of the dual encoder (L2-normalised,
            rows aligned with ``texts`` and ``image_tokens``), for ``dense_residual`` models.
        captioning_steps: Steps of captioning loss alone before the ITM loss joins in. The
            per-token captioning signal teaches the queries to read the image (which
            object has which shape) far faster than one ITM bit per pair does.
        captioning_weight: Weight of the captioning loss (0: none) in the joint steps.
        captioning_batch_size: Captions (each with one of its positive images) per step.

    Returns:
        The loss of every step (ITM + weighted captioning; captioning alone at first).
    """
    from tqdm.auto import tqdm

    captioning = model.config.captioning and (captioning_weight > 0 or captioning_steps > 0)
    if captioning_steps and not model.config.captioning:
        raise ValueError("captioning_steps needs a model with QFormerConfig(captioning=True)")
    if not 0 <= captioning_steps <= steps:
        raise ValueError(f"captioning_steps must be in [0, steps={steps}], got {captioning_steps}")
    hard = n_neg // 2 if n_hard is None else min(n_hard, n_neg)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    text_ids = vocabulary.encode(list(texts), model.config.max_text_len)
    pos_lists = [sorted(p) for p in positives]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    losses = []
    n_img = image_tokens.shape[0]
    bar = tqdm(range(steps), desc="train qformer", disable=not progress)
    for step in bar:
        loss = torch.zeros(())
        if step >= captioning_steps:
            rows, idx = sample_listwise(rng, positives, negatives, n_img, batch_size, n_neg, hard)
            loss = listwise_loss(model, image_tokens, text_ids, rows, idx, dense)
        weight = 1.0 if step < captioning_steps else captioning_weight
        if captioning and weight:
            size = min(captioning_batch_size, len(texts))
            crow = rng.choice(len(texts), size=size, replace=False)
            irow = np.array([pos_lists[r][int(rng.integers(len(pos_lists[r])))] for r in crow])
            loss = loss + weight * captioning_loss(model, image_tokens, text_ids, crow, irow)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


def _logit_scale(encoder: Any) -> float:
    """The dual encoder's trained softmax scale (open_clip ``model``, LiT ``heads``), else 20."""
    for owner in (getattr(encoder, "model", None), getattr(encoder, "heads", None)):
        scale = getattr(owner, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            return float(scale.detach().exp())
    return 20.0


@dataclass
class MinedData:
    """Listwise training data mined by a first stage (see :func:`mine_training_data`)."""

    items: list[Item]
    image_tokens: torch.Tensor
    texts: list[str]
    positives: list[set[int]]
    negatives: list[list[int]]
    dense: tuple[torch.Tensor, torch.Tensor] | None
    extra_positives: int


def mine_training_data(
    encoder: Any,
    corpus: Mapping[str, Item],
    tokens_fn: Callable[[list[Any]], torch.Tensor],
    *,
    k_mine: int = 16,
    positives_of: Callable[[str, str, list[str]], set[str]] | None = None,
    dense_residual: bool = True,
) -> MinedData:
    """(caption, positive images, hard negatives) for every caption of ``corpus``: the
    first stage's top ``k_mine`` images minus the positives, plus the frozen image tower's
    patch tokens and, for ``dense_residual`` models, the dual encoder's embeddings."""
    items = [it for it in corpus.values() if it.image is not None and it.captions]
    if not items:
        raise ValueError("the training corpus has no items with both an image and captions")
    image_tokens = torch.cat(
        [tokens_fn([it.image for it in items[s : s + 256]]) for s in range(0, len(items), 256)]
    )
    row = {it.id: i for i, it in enumerate(items)}
    texts = [c for it in items for c in it.captions]
    owners = [it.id for it in items for _ in it.captions]
    dense = DenseRetriever.build(encoder, {it.id: it for it in items}, index_captions=False)
    hits: list[list[Hit]] = []
    for s in range(0, len(texts), 512):
        hits.extend(dense.retrieve([Query(text=t) for t in texts[s : s + 512]], k=k_mine))
    positives: list[set[int]] = []
    negatives: list[list[int]] = []
    n_extra = 0
    for t, o, hs in zip(texts, owners, hits, strict=True):
        mined = [h.id for h in hs]
        extra = positives_of(t, o, mined) if positives_of is not None else set()
        n_extra += len(extra - {o})
        pos = {row[o]} | {row[i] for i in extra}
        positives.append(pos)
        negatives.append([row[i] for i in mined if row[i] not in pos])
    dense_emb = None
    if dense_residual:
        text_emb = torch.from_numpy(np.ascontiguousarray(encoder.encode_text(texts)))
        image_emb = torch.from_numpy(
            np.ascontiguousarray(encoder.encode_image([it.image for it in items]))
        )
        dense_emb = (text_emb.float(), image_emb.float())
    return MinedData(items, image_tokens, texts, positives, negatives, dense_emb, n_extra)


def choose_lm_weight(
    model: QFormerCrossEncoder,
    vocabulary: TextVocabulary,
    data: MinedData,
    weights: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
    *,
    max_captions: int = 2000,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[float, float]:
    """Validation R@1 (%) among each caption's mined candidates for each ``lm_weight``
    (the weight of ``log p(text | image)`` in the reranking logit), on up to
    ``max_captions`` captions of ``data`` (mined on a validation corpus)."""
    if not model.config.captioning:
        raise ValueError("choose_lm_weight needs a model with a captioning head")
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(data.texts))[:max_captions]
    text_ids = vocabulary.encode(list(data.texts), model.config.max_text_len)
    pairs = [(r, c) for r in rows for c in sorted(data.positives[r]) + list(data.negatives[r])]
    base_parts, lm_parts = [], []
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            tr = torch.tensor([r for r, _ in pairs[s : s + batch_size]])
            ir = torch.tensor([c for _, c in pairs[s : s + batch_size]])
            cos = None
            if data.dense is not None and model.config.dense_residual:
                cos = (data.dense[0][tr] * data.dense[1][ir]).sum(-1)
            matching, lm = model.score_terms(data.image_tokens[ir], text_ids[tr], cos)
            assert lm is not None  # a captioning model, checked above
            base_parts.append(matching)
            lm_parts.append(lm)
    base, lm = torch.cat(base_parts), torch.cat(lm_parts)
    out: dict[float, float] = {}
    for w in weights:
        score, pos, hits = base + w * lm, 0, 0
        for r in rows:
            n_pos, n_neg = len(data.positives[r]), len(data.negatives[r])
            own = score[pos : pos + n_pos + n_neg]
            # A tie with a negative counts as a miss: no credit for candidate order.
            hits += n_neg == 0 or bool(own[:n_pos].max() > own[n_pos:].max())
            pos += n_pos + n_neg
        out[float(w)] = 100.0 * hits / max(len(rows), 1)
    return out


def train_qformer_reranker(
    encoder: Any,
    corpus: Mapping[str, Item],
    tokens_fn: Callable[[list[Any]], torch.Tensor],
    tokenize: Callable[[list[str]], torch.Tensor],
    out: str | os.PathLike[str],
    *,
    steps: int = 1000,
    k_mine: int = 16,
    n_hard: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    dense_residual: bool = True,
    positives_of: Callable[[str, str, list[str]], set[str]] | None = None,
    seed: int = 0,
    progress: bool = True,
    command: str = "",
    layers: int = 2,
    captioning_steps: int = 0,
    captioning_weight: float = 0.0,
    val_corpus: Mapping[str, Item] | None = None,
    lm_weights: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
) -> dict[str, Any]:
    """Mine hard negatives with ``encoder`` over ``corpus`` and train a Q-Former on them.

    Args:
        encoder: The first-stage dual encoder (mines negatives; its cosine is the dense
            anchor of a ``dense_residual`` model).
        corpus: Training items with images and captions.
        tokens_fn: Images -> patch tokens of the frozen image tower.
        tokenize: Texts -> base-tokenizer ids (0 = padding); a compact vocabulary is built.
        out: Output directory (weights, config, vocabulary, ``train_record.json``).
        steps, k_mine, n_hard, batch_size, lr, seed, progress: Training settings.
        dense_residual: Add the dual encoder's scaled cosine to the logit.
        positives_of: ``(caption, owner id, mined ids) -> extra positive ids`` among the
            mined candidates (true matches that are not the caption's own image); by default
            only the owner is a positive.
        command: Recorded in ``train_record.json``.
        layers: Q-Former layers.
        captioning_steps: Steps of BLIP-2's captioning loss alone before listwise ITM
            training (see :func:`train_qformer`); with ``captioning_weight``, any value
            above 0 gives the model a captioning head.
        captioning_weight: Weight of the captioning loss during the ITM steps.
        val_corpus: Validation items (mined the same way) on which the weight of
            ``log p(text | image)`` in the reranking logit is chosen among ``lm_weights``
            by R@1 over the mined candidates; without it a captioning model ranks by ITM
            (and the dense residual) alone.
        lm_weights: Candidate weights for that choice.

    Returns:
        The training record (timings, first and final loss, parameter count, and the
        validation R@1 of each ``lm_weight`` when chosen).
    """
    t0 = time.perf_counter()
    mined = mine_training_data(
        encoder,
        corpus,
        tokens_fn,
        k_mine=k_mine,
        positives_of=positives_of,
        dense_residual=dense_residual,
    )
    image_tokens, texts, positives, negatives = (
        mined.image_tokens,
        mined.texts,
        mined.positives,
        mined.negatives,
    )
    dense_emb, n_extra, items = mined.dense, mined.extra_positives, mined.items
    t1 = time.perf_counter()
    vocab = TextVocabulary.build(tokenize, texts)
    captioning = captioning_steps > 0 or captioning_weight > 0
    model = QFormerCrossEncoder(
        QFormerConfig(
            image_dim=image_tokens.shape[-1],
            vocab_size=len(vocab),
            layers=layers,
            dense_residual=dense_residual,
            dense_scale_init=_logit_scale(encoder),
            captioning=captioning,
            image_tokens=image_tokens.shape[1],
        )
    )
    losses = train_qformer(
        model,
        vocab,
        image_tokens,
        texts,
        positives,
        negatives,
        steps=steps,
        seed=seed,
        n_hard=(7 if dense_residual else None) if n_hard is None else n_hard,
        batch_size=batch_size,
        lr=lr,
        dense=dense_emb,
        progress=progress,
        captioning_steps=captioning_steps,
        captioning_weight=captioning_weight,
    )
    t2 = time.perf_counter()
    calibration: dict[float, float] = {}
    if captioning and val_corpus is not None:
        val = mine_training_data(
            encoder,
            val_corpus,
            tokens_fn,
            k_mine=k_mine,
            positives_of=positives_of,
            dense_residual=dense_residual,
        )
        calibration = choose_lm_weight(model, vocab, val, lm_weights, seed=seed)
        # The best weight; ties go to the smaller one (less reliance on the captioner).
        best = max(calibration, key=lambda w: (calibration[w], -w))
        model.config = replace(model.config, lm_weight=best)
        logger.info("lm_weight %s (validation R@1 per weight: %s)", best, calibration)
    reranker = QFormerReranker(
        model,
        vocab,
        tokens_fn,
        corpus,
        dense=clip_pair_similarity(encoder, corpus) if dense_residual else None,
        image_tower=encoder_spec(encoder),
    )
    reranker.save(out)
    record = {
        "command": command,
        "train_images": len(items),
        "train_captions": len(texts),
        "mined_true_matches_moved_to_positives": n_extra,
        "mine_seconds": t1 - t0,
        "train_seconds": t2 - t1,
        "first_loss": float(np.mean(losses[:20])),
        "final_loss": float(np.mean(losses[-50:])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "config": asdict(model.config),
        "validation_r1_by_lm_weight": {str(k): v for k, v in calibration.items()},
        "calibration_seconds": time.perf_counter() - t2,
    }
    atomic_write_json(Path(out) / "train_record.json", {**record, "losses": losses})
    return record
