"""Retrieval metrics in numpy: R@K, MRR, hashing mAP, composed-retrieval and dialog metrics.

Conventions (each one changes reported numbers, so each is stated):

* **Image-text R@K** follows CLIP_benchmark's 5-caption protocol: a text's positive is its
  image; an image's positives are all of its captions, and it counts as retrieved at K when
  *any* of them is in the top K. Values are fractions in [0, 1].
* **Ties** in float scores count against the query: the rank of the best positive is the
  number of negatives scoring *at least* as high. (Float ties are rare; this makes a
  constant scorer score 0 rather than 1.)
* **Hashing mAP** ranks the database by Hamming distance ascending, ties broken by database
  index (a stable sort), as the DCMH/DCHMT evaluation code does. Relevance is "shares at
  least one label". AP@K = (1 / R_K) * sum_{i<=K} P@i * rel_i with R_K the relevant items
  within the top K; a query with none there contributes 0. mAP@ALL is AP@K with K = the
  database size.
* **CIRCO mAP@K** uses AP@K = (1 / min(K, n_targets)) * sum_{i<=K} P@i * rel_i.
* **CIRR** rankings must not contain the reference image: drop it (``exclude_ids``) before
  computing R@K; R_subset@K ranks only the members of the query's subset (reference
  excluded).
* **ChatIR Hits@K** is cumulative: a dialog counts at round r once its target entered the
  top K at any round <= r.

Similarity matrices are processed in query chunks, so they never need to fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

ABSENT_RANK = np.iinfo(np.int64).max // 2
"""Rank given to a target missing from a ranked list (never counts as a hit)."""


# --------------------------------------------------------------------------- ranks
def first_positive_rank(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based rank of the best-scored positive of each query.

    Args:
        scores: float (n_queries, n_items), higher is better.
        positives: bool (n_queries, n_items), True where the item is relevant.

    Returns:
        int64 (n_queries,): the number of negatives scoring at least as high as the best
        positive (ties count against the query).

    Raises:
        ValueError: a query has no positive.
    """
    scores = np.asarray(scores)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must match (2-D)")
    has = positives.any(1)
    if not has.all():
        raise ValueError(f"query {int(np.argmin(has))} has no positive item")
    best = np.where(positives, scores, -np.inf).max(1, keepdims=True)
    return ((scores >= best) & ~positives).sum(1).astype(np.int64)


def recall_at_k(ranks: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries whose (0-based) rank is below each K."""
    r = np.asarray(ranks)
    out = {}
    for k in ks:
        if k <= 0:
            raise ValueError(f"K must be positive, got {k}")
        out[int(k)] = float((r < k).mean()) if r.size else 0.0
    return out


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank of 0-based ranks (absent targets contribute 0)."""
    r = np.asarray(ranks, dtype=np.float64)
    if not r.size:
        return 0.0
    return float(np.where(r >= ABSENT_RANK, 0.0, 1.0 / (r + 1)).mean())


def image_text_retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R@K and MRR both directions under the 5-caption protocol.

    Args:
        image_emb: float (n_images, d), L2-normalised.
        text_emb: float (n_texts, d), L2-normalised.
        text_to_image: int (n_texts,): the image row each text describes.
        ks: Cut-offs.
        chunk_size: Queries scored at once.

    Returns:
        ``text_to_image_R@{k}``, ``image_to_text_R@{k}``, ``text_to_image_MRR``,
        ``image_to_text_MRR`` and ``mean_R`` (mean of all recalls); fractions in [0, 1].

    Raises:
        ValueError: shapes disagree, or an image has no caption.
    """
    img = np.asarray(image_emb, dtype=np.float32)
    txt = np.asarray(text_emb, dtype=np.float32)
    t2i = np.asarray(text_to_image, dtype=np.int64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be 2-D with one width: {img.shape} vs {txt.shape}")
    if t2i.shape != (txt.shape[0],) or (t2i.size and (t2i.min() < 0 or t2i.max() >= len(img))):
        raise ValueError("text_to_image must map each text to a valid image row")
    counts = np.bincount(t2i, minlength=len(img))
    if (counts == 0).any():
        raise ValueError(f"image {int(np.argmin(counts))} has no caption")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    t_ranks = np.empty(len(txt), dtype=np.int64)
    for s in range(0, len(txt), chunk_size):
        sim = txt[s : s + chunk_size] @ img.T
        pos = sim[np.arange(len(sim)), t2i[s : s + chunk_size]][:, None]
        above = (sim >= pos).sum(1) - 1  # minus the positive itself
        t_ranks[s : s + chunk_size] = above
    i_ranks = np.empty(len(img), dtype=np.int64)
    for s in range(0, len(img), chunk_size):
        sim = img[s : s + chunk_size] @ txt.T
        mask = t2i[None, :] == np.arange(s, s + len(sim))[:, None]
        i_ranks[s : s + chunk_size] = first_positive_rank(sim, mask)

    out: dict[str, float] = {}
    for name, ranks in (("text_to_image", t_ranks), ("image_to_text", i_ranks)):
        for k, v in recall_at_k(ranks, ks).items():
            out[f"{name}_R@{k}"] = v
        out[f"{name}_MRR"] = mrr(ranks)
    recalls = [v for key, v in out.items() if "_R@" in key]
    out["mean_R"] = float(np.mean(recalls))
    return out


# --------------------------------------------------------------------------- hashing
def _as_pm1(codes: np.ndarray, bits: int | None) -> np.ndarray:
    c = np.asarray(codes)
    if c.dtype == np.uint8:
        unpacked = np.unpackbits(c, axis=1)
        if bits is not None:
            unpacked = unpacked[:, :bits]
        return unpacked.astype(np.float32) * 2 - 1
    vals = np.unique(c)
    if not np.isin(vals, (-1, 1)).all():
        raise ValueError(
            "codes must be ±1 values or packed uint8 bits; got values "
            f"{vals[:5].tolist()} (apply sign() first)"
        )
    return c.astype(np.float32)


def hamming_distance(
    query_codes: np.ndarray, db_codes: np.ndarray, bits: int | None = None
) -> np.ndarray:
    """Pairwise Hamming distances: int32 (n_queries, n_db).

    Args:
        query_codes: ±1 codes (n, bits) or packed uint8 bits (n, bits / 8), ``np.packbits``
            order.
        db_codes: The same form as ``query_codes``.
        bits: With packed codes, the number of meaningful bits (default: all).
    """
    q = _as_pm1(query_codes, bits)
    d = _as_pm1(db_codes, bits)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query codes have {q.shape[1]} bits, database codes {d.shape[1]}")
    return np.rint(0.5 * (q.shape[1] - q @ d.T)).astype(np.int32)


def _average_precision(rel_sorted: np.ndarray) -> np.ndarray:
    # rel_sorted: bool (n_queries, K) relevance in ranked order.
    rel = rel_sorted.astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    return np.where(n_rel > 0, (precision * rel).sum(1) / np.maximum(n_rel, 1), 0.0)


def map_from_scores(
    scores: np.ndarray,
    relevance: np.ndarray,
    top_k: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """mAP@K (or mAP@ALL when ``top_k`` is None) of float scores, higher is better.

    Ties are broken by database index (stable sort), as for Hamming ranking.

    Args:
        scores: float (n_queries, n_db).
        relevance: bool (n_queries, n_db).
        top_k: Cut-off K.
        chunk_size: Queries processed at once.
    """
    s = np.asarray(scores)
    rel = np.asarray(relevance, dtype=bool)
    if s.shape != rel.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and relevance {rel.shape} must match (2-D)")
    k = s.shape[1] if top_k is None else min(int(top_k), s.shape[1])
    if k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    aps = []
    for i in range(0, len(s), chunk_size):
        order = np.argsort(-s[i : i + chunk_size], axis=1, kind="stable")[:, :k]
        aps.append(_average_precision(np.take_along_axis(rel[i : i + chunk_size], order, 1)))
    return float(np.concatenate(aps).mean()) if aps else 0.0


def mean_average_precision(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    top_k: int | None = None,
    chunk_size: int = 1024,
    bits: int | None = None,
) -> float:
    """Cross-modal hashing mAP with label-sharing relevance (see module conventions).

    Args:
        query_codes: ±1 (n_q, bits) or packed uint8 codes of the queries.
        db_codes: Database codes in the same form.
        query_labels: Multi-hot (n_q, n_classes).
        db_labels: Multi-hot (n_db, n_classes).
        top_k: K for mAP@K; None for mAP@ALL.
        chunk_size: Queries processed at once.
        bits: Meaningful bits of packed codes.

    Returns:
        mAP in [0, 1].
    """
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    if ql.shape[0] != np.asarray(query_codes).shape[0] or dl.shape[0] != np.asarray(db_codes).shape[0]:
        raise ValueError("each code row needs a label row")
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(f"query labels have {ql.shape[1]} classes, database {dl.shape[1]}")
    n_db = dl.shape[0]
    k = n_db if top_k is None else min(int(top_k), n_db)
    if k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    aps = []
    qf = ql.astype(np.float32)
    df = dl.astype(np.float32)
    for i in range(0, ql.shape[0], chunk_size):
        dist = hamming_distance(query_codes[i : i + chunk_size], db_codes, bits)
        rel = (qf[i : i + chunk_size] @ df.T) > 0
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        aps.append(_average_precision(np.take_along_axis(rel, order, 1)))
    return float(np.concatenate(aps).mean()) if aps else 0.0


# --------------------------------------------------------------------------- composed
def _drop(ranked: Sequence[str], exclude: Iterable[str]) -> list[str]:
    ex = set(exclude)
    return [r for r in ranked if r not in ex]


def cir_recall_at_k(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: Sequence[Sequence[str]],
    ks: Sequence[int] = (1, 5, 10, 50),
    exclude_ids: Sequence[Sequence[str]] | None = None,
) -> dict[int, float]:
    """Composed-retrieval R@K: a query is a hit at K when any target is in its top K.

    Args:
        ranked_ids: Ranked ids per query, best first.
        target_ids: Correct ids per query.
        ks: Cut-offs.
        exclude_ids: Ids to drop from each ranking first (the reference image in CIRR).
    """
    _check_lengths(ranked_ids, target_ids, exclude_ids)
    out = {}
    for k in ks:
        hits = []
        for i, (ranked, targets) in enumerate(zip(ranked_ids, target_ids, strict=True)):
            r = _drop(ranked, exclude_ids[i]) if exclude_ids is not None else list(ranked)
            hits.append(bool(set(r[:k]) & set(targets)))
        out[int(k)] = float(np.mean(hits)) if hits else 0.0
    return out


def cir_recall_subset_at_k(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: Sequence[Sequence[str]],
    subset_ids: Sequence[Sequence[str]],
    ks: Sequence[int] = (1, 2, 3),
    reference_ids: Sequence[str] | None = None,
) -> dict[int, float]:
    """CIRR R_subset@K: R@K after restricting each ranking to its subset members.

    Args:
        ranked_ids: Ranked ids per query (over the whole corpus).
        target_ids: Correct ids per query.
        subset_ids: The query's ``img_set`` members.
        ks: Cut-offs.
        reference_ids: Each query's reference image, removed from its subset.
    """
    _check_lengths(ranked_ids, target_ids, subset_ids)
    restricted = []
    for i, (ranked, subset) in enumerate(zip(ranked_ids, subset_ids, strict=True)):
        members = set(subset) - ({reference_ids[i]} if reference_ids is not None else set())
        restricted.append([r for r in ranked if r in members])
    return cir_recall_at_k(restricted, target_ids, ks)


def cir_map_at_k(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: Sequence[Sequence[str]],
    ks: Sequence[int] = (5, 10, 25, 50),
    exclude_ids: Sequence[Sequence[str]] | None = None,
) -> dict[int, float]:
    """CIRCO mAP@K with several targets per query (see module conventions)."""
    _check_lengths(ranked_ids, target_ids, exclude_ids)
    out = {}
    for k in ks:
        aps = []
        for i, (ranked, targets) in enumerate(zip(ranked_ids, target_ids, strict=True)):
            if not targets:
                raise ValueError(f"query {i} has no target")
            r = _drop(ranked, exclude_ids[i]) if exclude_ids is not None else list(ranked)
            t = set(targets)
            rel = np.array([x in t for x in r[:k]], dtype=np.float64)
            prec = np.cumsum(rel) / np.arange(1, len(rel) + 1) if len(rel) else rel
            aps.append(float((prec * rel).sum() / min(k, len(t))))
        out[int(k)] = float(np.mean(aps)) if aps else 0.0
    return out


def _check_lengths(*seqs: Sequence[object] | None) -> None:
    lens = {len(s) for s in seqs if s is not None}
    if len(lens) > 1:
        raise ValueError(f"per-query inputs have different lengths: {sorted(lens)}")


# --------------------------------------------------------------------------- dialog
def target_rank(ranked: Sequence[str], target: str) -> int:
    """0-based position of ``target`` in ``ranked``, or :data:`ABSENT_RANK`."""
    for i, r in enumerate(ranked):
        if r == target:
            return i
    return int(ABSENT_RANK)


def cumulative_hits_at_k(target_ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """ChatIR cumulative Hits@K per round.

    Args:
        target_ranks: int (n_dialogs, n_rounds): 0-based rank of the target at each round
            (:data:`ABSENT_RANK` when it was not retrieved).
        k: Cut-off.

    Returns:
        float (n_rounds,): fraction of dialogs whose target was in the top K at any round
        up to and including each round.
    """
    r = np.asarray(target_ranks)
    if r.ndim != 2:
        raise ValueError(f"target_ranks must be (n_dialogs, n_rounds), got {r.shape}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not r.size:
        return np.zeros(r.shape[1])
    return np.maximum.accumulate(r < k, axis=1).mean(0)


def prefix(metrics: Mapping[str, float], name: str) -> dict[str, float]:
    """Prefix metric keys with ``{name}_`` (sentence-transformers' prefix_name_to_metrics)."""
    return {f"{name}_{k}" if name else k: v for k, v in metrics.items()}


__all__ = [
    "ABSENT_RANK",
    "cir_map_at_k",
    "cir_recall_at_k",
    "cir_recall_subset_at_k",
    "cumulative_hits_at_k",
    "first_positive_rank",
    "hamming_distance",
    "image_text_retrieval_metrics",
    "map_from_scores",
    "mean_average_precision",
    "mrr",
    "prefix",
    "recall_at_k",
    "target_rank",
]
