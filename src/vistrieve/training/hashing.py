"""Training and evaluation of CMSEH hash models on precomputed features (``vistrieve train hash``).

The trainer runs AdamW with linear warm-up and cosine decay over row-aligned (image, text)
feature pairs, with a progress bar, atomic checkpoints (``last.pt``, written through
:func:`vistrieve.utils.io.atomic_write_bytes` and read back with ``weights_only=True``) and
resume from the last checkpoint, as :mod:`vistrieve.training.clip` does for CLIP.

Evaluation follows the cross-modal hashing protocol (DCMH, DCHMT): binary codes of the
queries ranked against the database by Hamming distance, relevance = sharing a label,
mAP@ALL and mAP@K in both directions (image -> text, text -> image), with
:func:`vistrieve.evals.metrics.mean_average_precision`; ties are broken by database index.
For paired data without labels (Flickr30k embeddings) it reports R@K in both directions
with :func:`vistrieve.evals.metrics.image_text_retrieval_metrics` on the ±1 codes, whose
inner product is ``bits - 2 * hamming`` (Hamming ranking, ties counted pessimistically).

Two feature sources are built in: the Wikipedia benchmark (``wikiData.mat``) and a folder
of paired embeddings split in two halves (the Flickr30k CLIP ViT-L/14 embeddings); the
shapes-world source is a recipe (:mod:`vistrieve.recipes.shapes.hashing`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vistrieve.data.tasks import HashingDataset, PairedEmbeddings
from vistrieve.utils.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    # torch and the model are imported where they are used, so that building the
    # command-line options does not import torch.
    import torch

    from vistrieve.hashing.heads import CMSEH, CMSEHConfig
    from vistrieve.hashing.losses import CMSEHLoss

logger = logging.getLogger(__name__)

TOP_KS: tuple[int | None, ...] = (None, 50)
"""mAP cut-offs reported by default: mAP@ALL (None) and mAP@50."""


# ------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class HashTrainConfig:
    """Optimisation settings of :func:`train_cmseh` (JSON-round-trippable)."""

    epochs: int = field(default=50, metadata={"help": "passes over the training pairs"})
    batch_size: int = field(default=256, metadata={"help": "pairs per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    checkpoint_every: int = field(
        default=5, metadata={"help": "epochs between checkpoints (the last epoch always saves)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of shuffling and modality dropout"})

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (contrastive pairs), got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be > 0, got {self.checkpoint_every}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HashTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HashTrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def _as_tensor(x: np.ndarray, name: str) -> torch.Tensor:
    import torch

    arr = np.asarray(x)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a 2-D numeric array, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


# ------------------------------------------------------------------------------ training
def build_cmseh(config: CMSEHConfig, *, seed: int = 0) -> CMSEH:
    """A freshly initialised model; the initialisation depends only on ``seed``."""
    import torch

    from vistrieve.hashing.heads import CMSEH

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CMSEH(config)


def train_cmseh(
    model: CMSEH,
    loss_fn: CMSEHLoss,
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray | None = None,
    config: HashTrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    evaluate: Callable[[CMSEH], dict[str, float]] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` (and the loss's proxies) on row-aligned feature pairs.

    Args:
        model: The hash model; call :meth:`CMSEH.fit_input_stats` first to standardise.
        loss_fn: The objective.
        image: Image features ``(n, image_dim)``.
        text: Text features ``(n, text_dim)``; row ``i`` describes image row ``i``.
        labels: Multi-hot ``(n, n_classes)`` or class ids ``(n,)``; required by a
            supervised semantic loss.
        config: Optimisation settings.
        checkpoint_dir: Where ``last.pt`` and ``history.json`` go every
            ``checkpoint_every`` epochs and after the last; a checkpoint there written with
            the same settings is resumed from.
        evaluate: Called with the model after every epoch; its metrics join the history.
        progress: Show a progress bar.

    Returns:
        One record per epoch: ``epoch``, ``loss`` (the total) and every loss term, and
        ``seconds``.

    Raises:
        ValueError: mismatched row counts, missing labels for a supervised loss, or a
            checkpoint written with other settings.
    """
    import torch
    from tqdm.auto import tqdm

    cfg = config or HashTrainConfig()
    x_img, x_txt = _as_tensor(image, "image"), _as_tensor(text, "text")
    n = x_img.shape[0]
    if x_txt.shape[0] != n:
        raise ValueError(f"got {n} image rows but {x_txt.shape[0]} text rows; pairs must align")
    if n < 2:
        raise ValueError(f"need at least 2 training pairs, got {n}")
    y: torch.Tensor | None = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape[0] != n or lab.ndim not in (1, 2):
            raise ValueError(f"labels must have {n} rows (multi-hot or class ids), got {lab.shape}")
        y = torch.from_numpy(np.ascontiguousarray(lab)).long()
    elif loss_fn.config.supervised and model.config.hashing:
        raise ValueError(
            f"semantic loss {loss_fn.config.semantic!r} needs labels; pass labels or use "
            "HashLossConfig(semantic='none') for unsupervised training"
        )
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs + (1 if n % bs >= 2 else 0)
    total = steps_per_epoch * cfg.epochs
    params = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, total))
    gen = torch.Generator().manual_seed(cfg.seed)
    configs = {
        "model": model.config.to_dict(),
        "loss": loss_fn.config.to_dict(),
        "train": cfg.to_dict(),
        "rows": n,
    }
    history: list[dict[str, float]] = []
    start_epoch = 0
    rng_state: torch.Tensor | None = None
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("configs") != configs:
            raise ValueError(
                f"checkpoint {ckpt} was written with other settings {state.get('configs')}; "
                "use a fresh checkpoint directory or the same settings"
            )
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        rng_state = state["rng"]
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        logger.info("resumed from %s at epoch %d", ckpt, start_epoch)

    with torch.random.fork_rng(devices=[]):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        else:
            torch.manual_seed(cfg.seed)
        bar = tqdm(
            total=total,
            initial=start_epoch * steps_per_epoch,
            desc=f"train {model.name}",
            disable=not progress,
            unit="step",
        )
        model.train()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                order = torch.randperm(n, generator=gen)
                sums: dict[str, float] = {}
                for s in range(steps_per_epoch):
                    idx = order[s * bs : (s + 1) * bs]
                    out = model(x_img[idx], x_txt[idx], generator=gen)
                    terms = loss_fn(out, y[idx] if y is not None else None)
                    opt.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(terms['total'].detach()):.4f}")
                record: dict[str, float] = {"epoch": float(epoch + 1)}
                record.update({k: v / steps_per_epoch for k, v in sums.items()})
                record["loss"] = record.pop("total")
                record["seconds"] = time.perf_counter() - t0
                if evaluate is not None:
                    model.eval()
                    record.update(evaluate(model))
                    model.train()
                history.append(record)
                logger.debug("epoch %d: %s", epoch + 1, record)
                due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
                if ckpt is not None and due:
                    buf = io.BytesIO()
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "loss": loss_fn.state_dict(),
                            "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(),
                            "generator": gen.get_state(),
                            "rng": torch.get_rng_state(),
                            "epoch": epoch + 1,
                            "history": history,
                            "configs": configs,
                        },
                        buf,
                    )
                    atomic_write_bytes(ckpt, buf.getvalue())
                    atomic_write_json(ckpt.with_name("history.json"), history)
        finally:
            bar.close()
    model.eval()
    return history


def fit_cmseh(
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    model: dict[str, Any] | None = None,
    loss: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[CMSEH, list[dict[str, float]]]:
    """Build, standardise and train a CMSEH model in one call.

    Args:
        image: Training image features ``(n, image_dim)``.
        text: Training text features ``(n, text_dim)``.
        labels: Training labels (needed by a supervised semantic loss).
        model: :class:`CMSEHConfig` fields (``image_dim``/``text_dim`` are inferred).
        loss: :class:`HashLossConfig` fields (``n_classes`` is inferred from multi-hot
            labels for the proxy loss).
        train: :class:`HashTrainConfig` fields.
        checkpoint_dir: Resumable checkpoints.
        progress: Show a progress bar.

    Returns:
        The trained model (eval mode) and the per-epoch history.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((64, 8)).astype(np.float32)
        >>> m, hist = fit_cmseh(x, x, model={"bits": 16, "d_model": 16, "fusion_heads": 2},
        ...                     loss={"semantic": "none"}, train={"epochs": 1}, progress=False)
        >>> m.image_codes(x[:2]).shape
        (2, 16)
    """
    from vistrieve.hashing.heads import CMSEHConfig
    from vistrieve.hashing.losses import CMSEHLoss, HashLossConfig

    tcfg = HashTrainConfig.from_dict(train or {})
    mcfg = CMSEHConfig.from_dict(
        {"image_dim": int(np.shape(image)[1]), "text_dim": int(np.shape(text)[1]), **(model or {})}
    )
    lkw = dict(loss or {})
    if lkw.get("semantic") == "proxy" and "n_classes" not in lkw and labels is not None:
        lab = np.asarray(labels)
        lkw["n_classes"] = int(lab.shape[1]) if lab.ndim == 2 else int(lab.max()) + 1
    lcfg = HashLossConfig.from_dict(lkw)
    m = build_cmseh(mcfg, seed=tcfg.seed)
    m.fit_input_stats(image, text)
    loss_fn = CMSEHLoss(lcfg, m.bits, seed=tcfg.seed)
    history = train_cmseh(
        m, loss_fn, image, text, labels, tcfg, checkpoint_dir=checkpoint_dir, progress=progress
    )
    return m, history


# ------------------------------------------------------------------------------ evaluation
def _relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    return (ql.astype(np.float32) @ dl.astype(np.float32).T) > 0


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def _k_name(k: int | None) -> str:
    return "ALL" if k is None else str(k)


def map_metrics_from_scores(
    i2t: np.ndarray,
    t2i: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    top_ks: Sequence[int | None] = TOP_KS,
    prefix: str = "",
) -> dict[str, float]:
    """mAP@K of float score matrices in both directions (ties by database index).

    Args:
        i2t: Image-query vs text-database scores ``(n_query, n_db)``, higher is better.
        t2i: Text-query vs image-database scores ``(n_query, n_db)``.
        query_labels: Query labels (multi-hot or class ids).
        db_labels: Database labels.
        top_ks: Cut-offs (None = mAP@ALL).
        prefix: Prepended to each key.

    Returns:
        ``{prefix}image_to_text_mAP@{K}`` and ``{prefix}text_to_image_mAP@{K}``.
    """
    from vistrieve.evals.metrics import map_from_scores

    rel = _relevance(query_labels, db_labels)
    out: dict[str, float] = {}
    for direction, scores in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in top_ks:
            out[f"{prefix}{direction}_mAP@{_k_name(k)}"] = map_from_scores(scores, rel, top_k=k)
    return out


def evaluate_map(
    model: CMSEH, data: HashingDataset, top_ks: Sequence[int | None] = TOP_KS
) -> dict[str, float]:
    """Hashing mAP of ``model`` on a query/database benchmark, both directions.

    Keys: ``hash_{direction}_mAP@{K}`` (binary codes, Hamming ranking),
    ``relaxed_{direction}_mAP@{K}`` (cosine of the pre-sign codes) and, for models that
    learn an embedding, ``embedding_{direction}_mAP@{K}`` (cosine of the embeddings);
    directions ``image_to_text`` (image queries, text database) and ``text_to_image``.
    """
    from vistrieve.evals.metrics import mean_average_precision

    out: dict[str, float] = {}
    if model.config.hashing:
        qi, qt = model.image_codes(data.query_image), model.text_codes(data.query_text)
        di, dt = model.image_codes(data.db_image), model.text_codes(data.db_text)
        for direction, q, d in (("image_to_text", qi, dt), ("text_to_image", qt, di)):
            for k in top_ks:
                out[f"hash_{direction}_mAP@{_k_name(k)}"] = mean_average_precision(
                    q, d, data.query_labels, data.db_labels, top_k=k, code_format="sign"
                )
        ri, rt = model.image_relaxed(data.query_image), model.text_relaxed(data.query_text)
        rdi, rdt = model.image_relaxed(data.db_image), model.text_relaxed(data.db_text)
        out.update(
            map_metrics_from_scores(
                _cosine(ri, rdt),
                _cosine(rt, rdi),
                data.query_labels,
                data.db_labels,
                top_ks,
                "relaxed_",
            )
        )
    if model.config.fusion or not model.config.hashing:
        ei, et = model.image_embeddings(data.query_image), model.text_embeddings(data.query_text)
        edi, edt = model.image_embeddings(data.db_image), model.text_embeddings(data.db_text)
        out.update(
            map_metrics_from_scores(
                ei @ edt.T, et @ edi.T, data.query_labels, data.db_labels, top_ks, "embedding_"
            )
        )
    return out


def evaluate_pairs(
    model: CMSEH, pairs: PairedEmbeddings, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image-text R@K and MRR of ``model`` on paired features (every text's image a positive).

    Keys: ``hash_*`` (±1 codes: Hamming ranking, ties pessimistic), ``relaxed_*`` and,
    for models that learn an embedding, ``embedding_*``, each followed by the keys of
    :func:`~vistrieve.evals.metrics.image_text_retrieval_metrics`.
    """
    from vistrieve.evals.metrics import image_text_retrieval_metrics

    out: dict[str, float] = {}
    t2i = pairs.text_to_image
    views: list[tuple[str, np.ndarray, np.ndarray]] = []
    if model.config.hashing:
        views.append(
            (
                "hash",
                model.image_codes(pairs.image).astype(np.float32),
                model.text_codes(pairs.text).astype(np.float32),
            )
        )
        views.append(("relaxed", model.image_relaxed(pairs.image), model.text_relaxed(pairs.text)))
    if model.config.fusion or not model.config.hashing:
        views.append(
            ("embedding", model.image_embeddings(pairs.image), model.text_embeddings(pairs.text))
        )
    for name, img, txt in views:
        if name == "relaxed":
            img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
            txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
        m = image_text_retrieval_metrics(img, txt, t2i, ks=ks)
        out.update({f"{name}_{k}": v for k, v in m.items()})
    return out


# ------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class HashData:
    """Training pairs plus either a labelled benchmark (mAP) or held-out pairs (R@K)."""

    name: str
    train_image: np.ndarray
    train_text: np.ndarray
    train_labels: np.ndarray | None
    benchmark: HashingDataset | None = None
    pairs: PairedEmbeddings | None = None
    protocol: str = ""


def wiki_data(mat_path: str | os.PathLike[str]) -> HashData:
    """The Wikipedia benchmark: train on the 2173 training pairs, which are also the database."""
    from vistrieve.evals.datasets import load_wiki_xmodal

    ds = load_wiki_xmodal(mat_path)
    return HashData(
        "wiki", ds.train_image, ds.train_text, ds.train_labels, benchmark=ds, protocol=ds.protocol
    )


def paired_data(
    directory: str | os.PathLike[str], *, n_train: int = 500, seed: int = 0
) -> HashData:
    """Paired embeddings split by image: ``n_train`` images train, the rest evaluate.

    The split is a seeded permutation of the images; each text follows its image.
    """
    from vistrieve.evals.datasets import load_paired_embeddings

    emb = load_paired_embeddings(directory)
    n_img = emb.image.shape[0]
    if not 2 <= n_train < n_img:
        raise ValueError(f"n_train must be in [2, {n_img - 1}] for {n_img} images, got {n_train}")
    perm = np.random.default_rng(seed).permutation(n_img)
    train_img, test_img = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    is_train = np.zeros(n_img, dtype=bool)
    is_train[train_img] = True
    tr_txt = np.flatnonzero(is_train[emb.text_to_image])
    te_txt = np.flatnonzero(~is_train[emb.text_to_image])
    remap = np.full(n_img, -1, dtype=np.int64)
    remap[test_img] = np.arange(len(test_img))
    pairs = PairedEmbeddings(
        image=emb.image[test_img],
        text=emb.text[te_txt],
        text_to_image=remap[emb.text_to_image[te_txt]],
        name=f"{emb.name}-test",
    )
    protocol = (
        f"{emb.name}: {n_img} images, {emb.text.shape[0]} texts, {emb.image.shape[1]}-d; "
        f"seed-{seed} split by image: {n_train} images ({len(tr_txt)} texts) train, "
        f"{len(test_img)} images ({len(te_txt)} texts) are queries and gallery; every text's "
        "image is its positive"
    )
    return HashData(
        emb.name,
        emb.image[emb.text_to_image[tr_txt]],
        emb.text[tr_txt],
        None,
        pairs=pairs,
        protocol=protocol,
    )


def train_hash_model(
    data: HashData,
    out: str | os.PathLike[str],
    *,
    model: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Train a CMSEH model on ``data``, evaluate it and save it in ``OUT/model``.

    Args:
        data: Training features and the benchmark (or pairs) to evaluate on.
        out: Output directory (``model/`` and ``result.json``).
        model: :class:`~vistrieve.hashing.heads.CMSEHConfig` fields (``bits``, ``head`` ...).
        loss: :class:`~vistrieve.hashing.losses.HashLossConfig` fields; ``semantic``
            defaults to ``"dcmh"`` with labels and ``"none"`` without.
        train: :class:`HashTrainConfig` fields (``epochs``, ``batch_size``, ``lr`` ...).
        checkpoint_dir: Resumable checkpoints (default ``OUT/checkpoints``).
        progress: Show progress bars.
        command: The command line recorded in the result.

    Returns:
        The result record (also written to ``OUT/result.json``): protocol, settings,
        metrics, history and wall times.
    """
    import torch

    t1 = time.perf_counter()
    loss_kw = dict(loss or {})
    if loss_kw.get("semantic") is None:
        loss_kw["semantic"] = "dcmh" if data.train_labels is not None else "none"
    semantic = loss_kw["semantic"]
    train_kw = dict(train or {})
    out_dir = Path(out)
    hash_model, history = fit_cmseh(
        data.train_image,
        data.train_text,
        data.train_labels if semantic != "none" else None,
        model=dict(model or {}),
        loss=loss_kw,
        train=train_kw,
        checkpoint_dir=checkpoint_dir or out_dir / "checkpoints",
        progress=progress,
    )
    t2 = time.perf_counter()
    if data.benchmark is not None:
        metrics = evaluate_map(hash_model, data.benchmark)
    else:
        assert data.pairs is not None
        metrics = evaluate_pairs(hash_model, data.pairs)
    t3 = time.perf_counter()
    result: dict[str, Any] = {
        "command": command,
        "data": data.name,
        "protocol": data.protocol,
        "model": hash_model.config.to_dict(),
        "loss": loss_kw,
        "train": train_kw,
        "metrics": metrics,
        "seconds": {"train": t2 - t1, "evaluate": t3 - t2},
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }
    hash_model.save(
        out_dir / "model", meta={k: result[k] for k in ("command", "protocol", "metrics")}
    )
    atomic_write_json(out_dir / "result.json", result)
    return result


__all__ = [
    "TOP_KS",
    "HashData",
    "HashTrainConfig",
    "build_cmseh",
    "evaluate_map",
    "evaluate_pairs",
    "fit_cmseh",
    "map_metrics_from_scores",
    "paired_data",
    "train_cmseh",
    "train_hash_model",
    "wiki_data",
]
