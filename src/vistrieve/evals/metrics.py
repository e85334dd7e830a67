"""Retrieval metrics in pure numpy: R@K, MRR, hashing mAP, CIR R@K / R_subset@K / mAP@K, Hits@K.

Every metric is a fraction in ``[0, 1]`` (papers usually print it times 100).

* Image-text retrieval follows CLIP_benchmark's ``zeroshot_retrieval`` 5-caption protocol:
  every caption of an image is a positive; text -> image is a hit at ``k`` when the text's
  image is among the top ``k`` images, image -> text when *any* of the image's captions is
  among the top ``k`` texts. Instead of sorting, the rank of a query's best positive is the
  number of negatives scoring at least as high as that positive (one blocked matrix product
  and a comparison per block), so similarity matrices are never held whole.
* Hashing mAP follows the DCMH / DCHMT evaluation code (Hamming ranking, relevance = the
  query and the database item share at least one label), with the ranking tie rule and the
  AP@K normaliser made explicit because papers differ on both.
* Composed image retrieval follows CIRR (R@K, R_subset@K over the query's image set, the
  reference image removed from the ranking) and CIRCO (mAP@K over several ground truths,
  ``AP@K = sum_{i<=K} P@i * rel_i / min(K, n_targets)``).
* Dialog retrieval follows ChatIR: cumulative Hits@K per round.

Ranks are 0-based everywhere: rank 0 is the top of the ranking.

Tie rule for score rankings (:func:`first_positive_rank`, :func:`image_text_retrieval_metrics`):
*pessimistic* -- a positive that ties with a negative is ranked after it. CLIP_benchmark ranks
with ``torch.topk``, whose order among equal scores is unspecified, so the pessimistic rule
gives a lower bound that equals CLIP_benchmark's value whenever scores have no ties.
Ties are only exact where scores are computed exactly (integer embeddings, Hamming
distances, hand-made score matrices): with float embeddings, matrix-product rounding depends
on the block shape, so scores that agree to about 1e-7 may compare either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, TypeAlias

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ABSENT_RANK",
    "best_log_rank_integral",
    "dialog_metrics",
    "mean_rank_per_round",
    "rank_worsened_share",
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
    "rank_of_ids",
    "ranked_ids_from_scores",
    "recall_at_k",
    "target_rank",
]

ABSENT_RANK = 2**62
"""Rank given to a target that does not occur in a ranked list at all.

It exceeds any real rank, so it never counts as a hit at any ``k`` and adds about 0 to MRR;
it stays far from the int64 limit, so ``rank + 1`` cannot overflow.
"""

CodeFormat = Literal["auto", "sign", "bits", "packed"]
APVariant = Literal["hits_in_top_k", "dcmh"]

IdGroups: TypeAlias = Sequence[str | Sequence[str] | None]
"""Per query, one id (a ``str``), a sequence of ids, or ``None`` (no id; exclusions only)."""

_MAX_ERRORS_SHOWN = 5


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
            raise ValueError(f"ks must be positive integers, got {k!r} in {ks!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks is empty: give at least one cut-off, e.g. ks=(1, 5, 10)")
    return tuple(out)


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _show(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:_MAX_ERRORS_SHOWN])
    more = len(indices) - _MAX_ERRORS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _as_ranks(ranks: np.ndarray | Sequence[int], name: str = "ranks") -> np.ndarray:
    arr = np.asarray(ranks)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one rank per query), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: there are no queries to average over")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ValueError(
                f"{name} must hold whole numbers (0-based ranks), got {arr.dtype} values"
            )
    bad = np.flatnonzero(arr < 0)
    if bad.size:
        raise ValueError(f"{name} must be >= 0 (0-based); negative at query {_show(bad)}")
    return arr.astype(np.int64, copy=False)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    return arr


def _as_float_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    arr = _as_matrix(scores, name)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _check_no_nan(block: np.ndarray, offset: int, name: str) -> None:
    nan_rows = np.flatnonzero(np.isnan(block).any(axis=1))
    if nan_rows.size:
        raise ValueError(
            f"{name} contains NaN in row {_show(nan_rows + offset)}; NaN cannot be ranked"
        )


def _pair_keys(
    pairs: np.ndarray | Sequence[Sequence[int] | np.ndarray], nq: int, nd: int, name: str
) -> np.ndarray:
    """Sorted, unique ``row * nd + col`` keys from a boolean mask or per-row index lists."""
    if isinstance(pairs, np.ndarray) and pairs.dtype == np.bool_:
        if pairs.shape != (nq, nd):
            raise ValueError(f"{name} mask has shape {pairs.shape}, scores have shape {(nq, nd)}")
        return np.flatnonzero(pairs).astype(np.int64)
    if isinstance(pairs, np.ndarray) and pairs.ndim == 2 and pairs.shape == (nq, nd):
        raise ValueError(
            f"{name} is a {pairs.dtype} matrix of the scores' shape: pass a bool mask "
            f"(e.g. {name}.astype(bool)) or one array of column indices per query"
        )
    if len(pairs) != nq:
        raise ValueError(f"{name} has {len(pairs)} rows of indices, scores have {nq} rows")
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for i, idx in enumerate(pairs):
        arr = np.asarray(idx).reshape(-1)
        if arr.size == 0:
            continue
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}[{i}] must hold integer column indices, got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= nd:
            raise ValueError(f"{name}[{i}] has an index outside [0, {nd}): {arr.tolist()}")
        rows.append(np.full(arr.size, i, dtype=np.int64))
        cols.append(arr.astype(np.int64))
    if not rows:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(rows) * nd + np.concatenate(cols))


def _block_first_positive_rank(
    block: np.ndarray,
    pos_rows: np.ndarray,
    pos_cols: np.ndarray,
    exc_rows: np.ndarray,
    exc_cols: np.ndarray,
) -> np.ndarray:
    """Pessimistic 0-based rank of each row's best positive.

    ``pos_rows`` is sorted and every row has at least one positive; positives and excluded
    entries are disjoint and unique. Rank = number of non-positive, non-excluded entries
    scoring ``>=`` the best positive.
    """
    n = block.shape[0]
    pos_vals = block[pos_rows, pos_cols]
    starts = np.searchsorted(pos_rows, np.arange(n))
    best = np.maximum.reduceat(pos_vals, starts)
    n_ge = np.count_nonzero(block >= best[:, None], axis=1)
    n_pos_ge = np.bincount(pos_rows[pos_vals >= best[pos_rows]], minlength=n)
    if exc_rows.size:
        exc_ge = block[exc_rows, exc_cols] >= best[exc_rows]
        n_ge = n_ge - np.bincount(exc_rows[exc_ge], minlength=n)
    return (n_ge - n_pos_ge).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Rank-based building blocks
# --------------------------------------------------------------------------------------------


def first_positive_rank(
    scores: np.ndarray,
    positives: np.ndarray | Sequence[Sequence[int] | np.ndarray],
    *,
    exclude: np.ndarray | Sequence[Sequence[int] | np.ndarray] | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """0-based rank of each query's best-ranked positive under a score matrix.

    Higher scores rank first. The rank is the number of negatives whose score is **greater
    than or equal to** the best positive's score: ties are broken pessimistically (a positive
    tied with a negative counts as ranked after it), other positives never push a positive
    down, and excluded entries are ignored. This equals the position of the first positive
    in a descending sort whenever scores have no ties (CLIP_benchmark ranks with
    ``torch.topk``, whose order among equal scores is unspecified).

    Args:
        scores: Array of shape ``(n_queries, n_docs)``, higher is better. Integer scores are
            converted to float64; NaN raises.
        positives: Boolean mask of shape ``(n_queries, n_docs)``, or one sequence of column
            indices per query. Every query needs at least one positive.
        exclude: Entries to remove from the ranking entirely (e.g. the reference image of a
            composed query), in the same two forms. An entry both positive and excluded is
            excluded.
        chunk_size: Rows processed per block; bounds the temporary memory to
            ``chunk_size * n_docs`` booleans.

    Returns:
        int64 array of shape ``(n_queries,)``.

    Raises:
        ValueError: On shape mismatches, NaN scores, out-of-range indices, or a query without
            any positive (its index is named).

    Example:
        >>> s = np.array([[0.9, 0.5, 0.5], [0.1, 0.2, 0.3]])
        >>> first_positive_rank(s, [[1], [0, 1]]).tolist()  # 0.9 above + 0.5 tied; 0.3 above
        [2, 1]
    """
    scores = _as_float_scores(scores)
    chunk = _check_chunk_size(chunk_size)
    nq, nd = scores.shape
    pos_keys = _pair_keys(positives, nq, nd, "positives")
    if exclude is not None:
        exc_keys = _pair_keys(exclude, nq, nd, "exclude")
        pos_keys = np.setdiff1d(pos_keys, exc_keys, assume_unique=True)
    else:
        exc_keys = np.empty(0, dtype=np.int64)
    counts = np.bincount(pos_keys // max(nd, 1), minlength=nq) if nd else np.zeros(nq, int)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(
            f"query {_show(missing)} has no positive (after exclusions); every query needs at "
            "least one relevant item -- drop such queries before evaluating"
        )
    ranks = np.empty(nq, dtype=np.int64)
    for start in range(0, nq, chunk):
        stop = min(start + chunk, nq)
        block = scores[start:stop]
        _check_no_nan(block, start, "scores")
        lo, hi = np.searchsorted(pos_keys, [start * nd, stop * nd])
        elo, ehi = np.searchsorted(exc_keys, [start * nd, stop * nd])
        p, e = pos_keys[lo:hi], exc_keys[elo:ehi]
        ranks[start:stop] = _block_first_positive_rank(
            block, p // nd - start, p % nd, e // nd - start, e % nd
        )
    return ranks


def recall_at_k(
    ranks: np.ndarray | Sequence[int], ks: Iterable[int] = (1, 5, 10)
) -> dict[int, float]:
    """Fraction of queries whose (0-based) rank is below each ``k``.

    Args:
        ranks: Non-negative integers of shape ``(n_queries,)``, e.g. from
            :func:`first_positive_rank` or :func:`rank_of_ids` (:data:`ABSENT_RANK` never hits).
        ks: Cut-offs; ``k`` may exceed the number of documents.

    Returns:
        ``{k: R@k}`` with values in ``[0, 1]``.

    Example:
        >>> recall_at_k(np.array([0, 3, 12]), ks=(1, 5))
        {1: 0.3333333333333333, 5: 0.6666666666666666}
    """
    r = _as_ranks(ranks)
    return {k: float(np.mean(r < k)) for k in _check_ks(ks)}


def mrr(ranks: np.ndarray | Sequence[int]) -> float:
    """Mean reciprocal rank, ``mean(1 / (rank + 1))`` over 0-based ranks, in ``(0, 1]``.

    Args:
        ranks: Non-negative integers of shape ``(n_queries,)``.

    Returns:
        The MRR as a float.

    Example:
        >>> mrr(np.array([0, 1, 3]))  # (1 + 1/2 + 1/4) / 3
        0.5833333333333334
    """
    r = _as_ranks(ranks)
    return float(np.mean(1.0 / (r.astype(np.float64) + 1.0)))


# --------------------------------------------------------------------------------------------
# Image-text retrieval (CLIP_benchmark protocol)
# --------------------------------------------------------------------------------------------


def _as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    arr = _as_matrix(x, name)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise ValueError(f"{name} has non-finite values in row {_show(bad)}")
    return arr


def _image_text_ranks(
    image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(text -> image ranks, image -> text ranks), both pessimistic and 0-based."""
    img = _as_embeddings(image_emb, "image_emb")
    txt = _as_embeddings(text_emb, "text_emb")
    chunk = _check_chunk_size(chunk_size)
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"image_emb has dimension {img.shape[1]} but text_emb has {txt.shape[1]}: "
            "both must come from the same model"
        )
    n_img, n_txt = img.shape[0], txt.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"need at least one image and one text, got {n_img} and {n_txt}")
    t2i = np.asarray(text_to_image)
    if t2i.shape != (n_txt,) or not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(
            f"text_to_image must be an integer array of shape ({n_txt},) giving each text's "
            f"image index, got dtype {t2i.dtype} and shape {t2i.shape}"
        )
    out_of_range = np.flatnonzero((t2i < 0) | (t2i >= n_img))
    if out_of_range.size:
        raise ValueError(f"text_to_image is outside [0, {n_img}) at text {_show(out_of_range)}")
    t2i = t2i.astype(np.int64)
    captionless = np.flatnonzero(np.bincount(t2i, minlength=n_img) == 0)
    if captionless.size:
        raise ValueError(
            f"image {_show(captionless)} has no caption in text_to_image, so image -> text "
            "retrieval has no positive for it; drop such images first"
        )
    dtype = np.result_type(img.dtype, txt.dtype, np.float32)
    img = img.astype(dtype, copy=False)
    txt = txt.astype(dtype, copy=False)

    # The score of every positive pair comes from a row-wise dot product computed once, so
    # that both directions can be counted in one pass over text blocks: image -> text needs
    # each image's best caption score before any block is compared against it.
    pos = np.empty(n_txt, dtype=dtype)
    for start in range(0, n_txt, chunk):
        stop = min(start + chunk, n_txt)
        pos[start:stop] = np.einsum("ij,ij->i", txt[start:stop], img[t2i[start:stop]])
    best = np.full(n_img, -np.inf, dtype=dtype)
    np.maximum.at(best, t2i, pos)

    t_ranks = np.empty(n_txt, dtype=np.int64)
    i_ranks = np.zeros(n_img, dtype=np.int64)
    for start in range(0, n_txt, chunk):
        stop = min(start + chunk, n_txt)
        block = txt[start:stop] @ img.T
        rows = np.arange(stop - start)
        cols = t2i[start:stop]
        # Text -> image: the text's own image is removed from the count explicitly, so the
        # result does not depend on whether its block score rounds above or below `pos`.
        ge = block >= pos[start:stop, None]
        t_ranks[start:stop] = np.count_nonzero(ge, axis=1) - ge[rows, cols]
        # Image -> text: this block's texts that beat each image's best caption, minus the
        # image's own captions.
        ge = block >= best[None, :]
        i_ranks += np.count_nonzero(ge, axis=0)
        i_ranks -= np.bincount(cols[ge[rows, cols]], minlength=n_img)
    return t_ranks, i_ranks


def image_text_retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray | Sequence[int],
    ks: Iterable[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R@K and MRR in both directions, every caption of an image a positive (CLIP_benchmark).

    Scores are inner products: pass L2-normalised embeddings for cosine similarity (vistrieve
    encoders already return them). Text -> image: a text's only positive is its image.
    Image -> text: an image is a hit at ``k`` when *any* of its captions is among the top
    ``k`` texts. Ties are pessimistic (see :func:`first_positive_rank`). Text rows are
    processed ``chunk_size`` at a time, so memory stays at ``chunk_size * n_images`` scores;
    the positive-pair scores are computed once by a row-wise dot product.

    Args:
        image_emb: Float array of shape ``(n_images, d)``.
        text_emb: Float array of shape ``(n_texts, d)``.
        text_to_image: Integer array of shape ``(n_texts,)``: the image index of each text.
            Every image needs at least one text.
        ks: Recall cut-offs.
        chunk_size: Texts per block.

    Returns:
        ``text_to_image_R@{k}``, ``image_to_text_R@{k}`` for each ``k``, ``text_to_image_MRR``,
        ``image_to_text_MRR`` and ``mean_R`` (the mean of all the recalls), all fractions in
        ``[0, 1]`` (multiply by 100 for the percentages papers print).

    Raises:
        ValueError: On shape or dtype mismatches, non-finite embeddings, indices out of range
            or an image without captions.

    Example:
        >>> img = np.eye(2, dtype=np.float32)
        >>> txt = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
        >>> m = image_text_retrieval_metrics(img, txt, [0, 0, 1], ks=(1,))
        >>> m["text_to_image_R@1"], m["image_to_text_R@1"]  # text 1 prefers image 1
        (0.6666666666666666, 1.0)
    """
    ks_ = _check_ks(ks)
    t_ranks, i_ranks = _image_text_ranks(image_emb, text_emb, np.asarray(text_to_image), chunk_size)
    metrics: dict[str, float] = {}
    recalls: list[float] = []
    for direction, ranks in (("text_to_image", t_ranks), ("image_to_text", i_ranks)):
        for k, value in recall_at_k(ranks, ks_).items():
            metrics[f"{direction}_R@{k}"] = value
            recalls.append(value)
        metrics[f"{direction}_MRR"] = mrr(ranks)
    metrics["mean_R"] = float(np.mean(recalls))
    logger.debug(
        "image-text retrieval over %d images, %d texts: %s", len(i_ranks), len(t_ranks), metrics
    )
    return metrics


# --------------------------------------------------------------------------------------------
# Hashing: Hamming ranking and mAP
# --------------------------------------------------------------------------------------------


def _resolve_code_format(q: np.ndarray, d: np.ndarray, code_format: CodeFormat) -> str:
    if code_format not in ("auto", "sign", "bits", "packed"):
        raise ValueError(
            f"code_format must be 'auto', 'sign', 'bits' or 'packed', got {code_format!r}"
        )
    if code_format != "auto":
        return code_format
    if q.dtype == np.uint8 and d.dtype == np.uint8:
        if max(int(q.max(initial=0)), int(d.max(initial=0))) <= 1:
            logger.warning(
                "uint8 hash codes hold only 0/1 and are read as packed bits (np.packbits); "
                "pass code_format='bits' if they are one bit per byte"
            )
        return "packed"
    if q.dtype == np.uint8 or d.dtype == np.uint8:
        raise ValueError(
            f"query codes are {q.dtype} and database codes {d.dtype}: uint8 means packed bits, "
            "so pack both (np.packbits(..., axis=1)) or neither, or set code_format"
        )
    if (q.dtype != np.bool_ and q.size and q.min() < 0) or (
        d.dtype != np.bool_ and d.size and d.min() < 0
    ):
        return "sign"
    return "bits"


def _codes_to_sign(codes: np.ndarray, fmt: str, name: str) -> np.ndarray:
    """Codes as float32 in {-1, +1}, shape ``(n, n_bits)``."""
    if fmt == "packed":
        if codes.dtype != np.uint8:
            raise ValueError(f"packed {name} must be uint8 (np.packbits output), got {codes.dtype}")
        bits = np.unpackbits(codes, axis=1)
        return bits.astype(np.float32) * 2.0 - 1.0
    if fmt == "sign":
        ok = np.abs(codes) == 1
        if not ok.all():
            bad = np.flatnonzero(~ok.all(axis=1))
            raise ValueError(
                f"{name} must hold only -1 and +1 (code_format 'sign'); row {_show(bad)} has "
                "other values. np.sign maps 0 to 0: binarise with np.where(x >= 0, 1, -1)"
            )
        return codes.astype(np.float32)
    ok = (codes == 0) | (codes == 1)
    if not ok.all():
        bad = np.flatnonzero(~ok.all(axis=1))
        raise ValueError(
            f"{name} must hold only 0 and 1 (code_format 'bits'); row {_show(bad)} does not"
        )
    return codes.astype(np.float32) * 2.0 - 1.0


def _prepare_codes(
    query_codes: np.ndarray, db_codes: np.ndarray, code_format: CodeFormat
) -> tuple[np.ndarray, np.ndarray]:
    q = _as_matrix(query_codes, "query_codes")
    d = _as_matrix(db_codes, "db_codes")
    fmt = _resolve_code_format(q, d, code_format)
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"query codes have {q.shape[1]} columns but database codes {d.shape[1]} "
            f"(format {fmt!r}): both must use the same code length"
        )
    return _codes_to_sign(q, fmt, "query_codes"), _codes_to_sign(d, fmt, "db_codes")


def _hamming_from_sign(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    # For +-1 codes, <q, d> = n_bits - 2 * hamming; float32 is exact for these integers.
    return np.rint((q.shape[1] - q @ d.T) * 0.5).astype(np.int32)


def hamming_distance(
    query_codes: np.ndarray, db_codes: np.ndarray, *, code_format: CodeFormat = "auto"
) -> np.ndarray:
    """Hamming distances between two sets of binary hash codes.

    Code formats (``code_format``):

    * ``"sign"``: values in {-1, +1} (any numeric dtype), shape ``(n, n_bits)``.
    * ``"bits"``: values in {0, 1} or bool, shape ``(n, n_bits)``.
    * ``"packed"``: ``uint8`` from ``np.packbits(bits, axis=1)``, shape ``(n, ceil(n_bits / 8))``
      (faiss ``IndexBinary`` layout); padding bits must be equal (zero) in both sets.
    * ``"auto"`` (default): ``uint8`` is packed, bool is bits, otherwise codes holding a
      negative value (in either set) are sign codes and the rest bits. One-bit-per-byte
      ``uint8`` codes are ambiguous: pass ``code_format="bits"`` for them.

    Args:
        query_codes: Codes of shape ``(n_queries, n_cols)``.
        db_codes: Codes of shape ``(n_db, n_cols)``, same format and length.
        code_format: See above.

    Returns:
        int32 array of shape ``(n_queries, n_db)``.

    Example:
        >>> q = np.array([[1, -1, 1, 1]])
        >>> hamming_distance(q, np.array([[1, 1, 1, 1], [-1, 1, -1, -1]])).tolist()
        [[1, 4]]
    """
    q, d = _prepare_codes(query_codes, db_codes, code_format)
    return _hamming_from_sign(q, d)


def _relevance_block(q_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    if q_labels.ndim == 1:
        return q_labels[:, None] == db_labels[None, :]
    return (q_labels @ db_labels.T) > 0


def _prepare_labels(
    query_labels: np.ndarray, db_labels: np.ndarray, nq: int, nd: int
) -> tuple[np.ndarray, np.ndarray]:
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    if ql.ndim != dl.ndim or ql.ndim not in (1, 2):
        raise ValueError(
            "labels must both be multi-hot (n, n_classes) or both class ids (n,), got shapes "
            f"{ql.shape} and {dl.shape}"
        )
    if ql.shape[0] != nq or dl.shape[0] != nd:
        raise ValueError(
            f"query_labels has {ql.shape[0]} rows for {nq} queries and db_labels {dl.shape[0]} "
            f"rows for {nd} database items"
        )
    if ql.ndim == 2:
        if ql.shape[1] != dl.shape[1]:
            raise ValueError(f"query_labels has {ql.shape[1]} classes but db_labels {dl.shape[1]}")
        for arr, name in ((ql, "query_labels"), (dl, "db_labels")):
            if arr.size and arr.min() < 0:
                raise ValueError(f"{name} must be multi-hot (0/1), found negative values")
        ql = (ql != 0).astype(np.float32)
        dl = (dl != 0).astype(np.float32)
    return ql, dl


def _average_precision(rel_sorted: np.ndarray, top_k: int | None, variant: APVariant) -> np.ndarray:
    """AP of each row of a relevance matrix already in ranked order, shape ``(n,)``."""
    n_rows, n = rel_sorted.shape
    k = n if top_k is None else min(top_k, n)
    ap = np.zeros(n_rows, dtype=np.float64)
    if variant == "hits_in_top_k":
        rel = rel_sorted[:, :k]
        cum = np.cumsum(rel, axis=1, dtype=np.int64)
        hits = cum[:, -1] if k else np.zeros(n_rows, dtype=np.int64)
        prec = np.where(rel, cum / np.arange(1, k + 1), 0.0).sum(axis=1)
        np.divide(prec, hits, out=ap, where=hits > 0)
        return ap
    # DCMH / DCHMT `calc_map_k`: the first min(K, R) relevant items of the full ranking.
    cum = np.cumsum(rel_sorted, axis=1, dtype=np.int64)
    limit = np.minimum(cum[:, -1], k) if n else np.zeros(n_rows, dtype=np.int64)
    counted = rel_sorted & (cum <= limit[:, None])
    prec = np.where(counted, cum / np.arange(1, n + 1), 0.0).sum(axis=1)
    np.divide(prec, limit, out=ap, where=limit > 0)
    return ap


def _check_top_k(top_k: int | None) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None (mAP@ALL), got {top_k!r}")
    return int(top_k)


def _check_variant(variant: str) -> None:
    if variant not in ("hits_in_top_k", "dcmh"):
        raise ValueError(f"ap_variant must be 'hits_in_top_k' or 'dcmh', got {variant!r}")


def mean_average_precision(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    top_k: int | None = None,
    chunk_size: int = 128,
    *,
    code_format: CodeFormat = "auto",
    ap_variant: APVariant = "hits_in_top_k",
) -> float:
    """Hashing mAP under Hamming ranking (mAP@ALL or mAP@K), shared-label relevance.

    A database item is relevant to a query when they share at least one label. The database
    is ranked by Hamming distance ascending, **ties broken by database index** (a stable
    sort: among equal distances the item stored first ranks first). This is one of several
    conventions: DCMH / DCHMT rank with an unstable ``torch.sort``, others break ties
    randomly or average over tie groups, and because Hamming distances take only
    ``n_bits + 1`` values the choice moves mAP noticeably. State it with the result.

    ``ap_variant`` picks the AP@K normaliser (both agree for mAP@ALL):

    * ``"hits_in_top_k"`` (default): ``AP@K = (1 / R_K) * sum_{i<=K} P@i * rel_i`` with
      ``R_K`` the number of relevant items in the top K (DeepHash / HashNet ``CalcTopMap``).
    * ``"dcmh"``: DCMH / DCHMT ``calc_map_k``: the mean of ``j / position_j`` over the first
      ``min(K, R)`` relevant items of the *full* ranking, ``R`` = relevant items in the
      database; those items may lie below position K.

    A query with no relevant item (in the top K for ``"hits_in_top_k"``, in the database for
    ``"dcmh"``) has AP 0 and still counts in the mean, as in DCMH's code.

    Args:
        query_codes: Query hash codes, ``(n_queries, n_cols)``; see :func:`hamming_distance`.
        db_codes: Database hash codes, ``(n_db, n_cols)``.
        query_labels: Multi-hot ``(n_queries, n_classes)`` or class ids ``(n_queries,)``.
        db_labels: Multi-hot ``(n_db, n_classes)`` or class ids ``(n_db,)``.
        top_k: K for mAP@K; ``None`` for mAP@ALL (the whole database).
        code_format: Code format, see :func:`hamming_distance`.
        ap_variant: AP@K normaliser, see above.
        chunk_size: Queries per block; a block takes about 40 bytes per (query, item) pair.

    Returns:
        mAP as a fraction in ``[0, 1]``.

    Example:
        >>> qb = np.array([[1, 1]]); db = np.array([[1, 1], [1, -1], [-1, -1]])
        >>> mean_average_precision(qb, db, np.array([[1, 0]]), np.array([[0, 1], [1, 0], [1, 1]]))
        0.5833333333333333
    """
    top_k = _check_top_k(top_k)
    _check_variant(ap_variant)
    chunk = _check_chunk_size(chunk_size)
    q, d = _prepare_codes(query_codes, db_codes, code_format)
    nq, nd = q.shape[0], d.shape[0]
    if nq == 0 or nd == 0:
        raise ValueError(f"need at least one query and one database item, got {nq} and {nd}")
    ql, dl = _prepare_labels(query_labels, db_labels, nq, nd)
    dist_dtype = np.uint16 if q.shape[1] < 2**16 else np.int64
    aps = np.empty(nq, dtype=np.float64)
    for start in range(0, nq, chunk):
        stop = min(start + chunk, nq)
        dist = _hamming_from_sign(q[start:stop], d).astype(dist_dtype)
        # Stable sort keeps database order within equal distances (radix sort for uint16).
        order = np.argsort(dist, axis=1, kind="stable")
        rel = _relevance_block(ql[start:stop], dl)
        aps[start:stop] = _average_precision(
            np.take_along_axis(rel, order, axis=1), top_k, ap_variant
        )
    logger.debug("hashing mAP@%s over %d queries x %d items", top_k or "ALL", nq, nd)
    return float(aps.mean())


def map_from_scores(
    scores: np.ndarray,
    relevance: np.ndarray,
    top_k: int | None = None,
    chunk_size: int = 128,
    *,
    ap_variant: APVariant = "hits_in_top_k",
) -> float:
    """mAP@ALL / mAP@K for float scores (higher is better) and a relevance mask.

    Same definition as :func:`mean_average_precision`, including the tie rule: equal scores
    are ordered by database index (stable sort of the descending scores).

    Args:
        scores: Array of shape ``(n_queries, n_db)``; NaN raises.
        relevance: Bool array of the same shape.
        top_k: K for mAP@K; ``None`` for mAP@ALL.
        ap_variant: ``"hits_in_top_k"`` or ``"dcmh"``, see :func:`mean_average_precision`.
        chunk_size: Queries per block.

    Returns:
        mAP as a fraction in ``[0, 1]``.

    Example:
        >>> map_from_scores(np.array([[0.9, 0.8, 0.7]]), np.array([[False, True, True]]))
        0.5833333333333333
    """
    top_k = _check_top_k(top_k)
    _check_variant(ap_variant)
    chunk = _check_chunk_size(chunk_size)
    s = _as_float_scores(scores)
    rel = np.asarray(relevance)
    if rel.shape != s.shape or rel.dtype != np.bool_:
        raise ValueError(
            f"relevance must be a bool array of the scores' shape {s.shape}, got {rel.dtype} "
            f"{rel.shape}"
        )
    nq = s.shape[0]
    if nq == 0 or s.shape[1] == 0:
        raise ValueError(f"need at least one query and one database item, got shape {s.shape}")
    aps = np.empty(nq, dtype=np.float64)
    for start in range(0, nq, chunk):
        stop = min(start + chunk, nq)
        block = s[start:stop]
        _check_no_nan(block, start, "scores")
        order = np.argsort(-block, axis=1, kind="stable")
        aps[start:stop] = _average_precision(
            np.take_along_axis(rel[start:stop], order, axis=1), top_k, ap_variant
        )
    return float(aps.mean())


# --------------------------------------------------------------------------------------------
# Ranked id lists: composed (CIRR / CIRCO) and dialog (ChatIR) retrieval
# --------------------------------------------------------------------------------------------


def ranked_ids_from_scores(
    scores: np.ndarray, ids: Sequence[str], k: int | None = None, *, chunk_size: int = 1024
) -> list[list[str]]:
    """Turn a score matrix into per-query ranked id lists (higher score first).

    Equal scores keep the order of ``ids`` (stable sort), the same tie rule as
    :func:`map_from_scores`.

    Args:
        scores: Array of shape ``(n_queries, n_docs)``; NaN raises.
        ids: The ``n_docs`` document ids, in column order.
        k: Keep only the top ``k`` ids per query; ``None`` keeps all.
        chunk_size: Queries sorted per block.

    Returns:
        One list of ids per query.

    Example:
        >>> ranked_ids_from_scores(np.array([[0.1, 0.9, 0.1]]), ["a", "b", "c"])
        [['b', 'a', 'c']]
    """
    s = _as_float_scores(scores)
    chunk = _check_chunk_size(chunk_size)
    if len(ids) != s.shape[1]:
        raise ValueError(f"got {len(ids)} ids for {s.shape[1]} score columns")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    id_arr = np.asarray(list(ids), dtype=object)
    out: list[list[str]] = []
    for start in range(0, s.shape[0], chunk):
        block = s[start : start + chunk]
        _check_no_nan(block, start, "scores")
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        out.extend(id_arr[row].tolist() for row in order)
    return out


def _id_groups(groups: IdGroups | None, n: int, name: str) -> list[frozenset[str]]:
    if groups is None:
        return [frozenset()] * n
    if isinstance(groups, str) or len(groups) != n:
        size = "a string" if isinstance(groups, str) else f"{len(groups)} entries"
        raise ValueError(f"{name} must have one entry per query ({n}), got {size}")
    out: list[frozenset[str]] = []
    for g in groups:
        if g is None:
            out.append(frozenset())
        elif isinstance(g, str):
            out.append(frozenset((g,)))
        else:
            out.append(frozenset(g))
    return out


def _prepare_cir(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: IdGroups,
    exclude_ids: IdGroups | None,
) -> tuple[list[frozenset[str]], list[frozenset[str]]]:
    n = len(ranked_ids)
    if n == 0:
        raise ValueError("ranked_ids is empty: there are no queries to evaluate")
    for i, r in enumerate(ranked_ids):
        if isinstance(r, str):
            raise ValueError(f"ranked_ids[{i}] is a string; give a sequence of ids per query")
    targets = _id_groups(target_ids, n, "target_ids")
    excluded = _id_groups(exclude_ids, n, "exclude_ids")
    for i, (t, e) in enumerate(zip(targets, excluded, strict=True)):
        if not t:
            raise ValueError(f"query {i} has no target id; every query needs at least one")
        if t & e:
            raise ValueError(
                f"query {i}: target {sorted(t & e)} is also in exclude_ids; a target cannot be "
                "removed from its own ranking"
            )
    return targets, excluded


def _first_target_rank(
    ranked: Sequence[str],
    targets: frozenset[str],
    excluded: frozenset[str],
    subset: frozenset[str] | None,
) -> int:
    pos = 0
    for rid in ranked:
        if rid in excluded or (subset is not None and rid not in subset):
            continue
        if rid in targets:
            return pos
        pos += 1
    return ABSENT_RANK


def rank_of_ids(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: IdGroups,
    *,
    exclude_ids: IdGroups | None = None,
    subset_ids: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """0-based rank of each query's best-ranked target in its ranked id list.

    Args:
        ranked_ids: Per query, document ids best first (e.g. ``[h.id for h in hits]``).
        target_ids: Per query, the target id or a sequence of target ids.
        exclude_ids: Per query, ids removed from the ranking before counting (an id, a
            sequence, or ``None``) -- in CIRR the reference image must be removed this way.
        subset_ids: Per query, restrict the ranking to these ids (CIRR's image set); the rank
            counts only members.

    Returns:
        int64 array of shape ``(n_queries,)``. A query whose targets are all absent from its
        list gets :data:`ABSENT_RANK`, which never counts as a hit.

    Example:
        >>> rank_of_ids([["ref", "a", "t"]], ["t"], exclude_ids=["ref"]).tolist()
        [1]

    ChatIR target ranks per round, for :func:`cumulative_hits_at_k`::

        ranks = np.stack([rank_of_ids(lists, targets) for lists in lists_per_round], axis=1)
    """
    targets, excluded = _prepare_cir(ranked_ids, target_ids, exclude_ids)
    subsets: list[frozenset[str] | None]
    if subset_ids is None:
        subsets = [None] * len(ranked_ids)
    else:
        subsets = list(_id_groups(subset_ids, len(ranked_ids), "subset_ids"))
    return np.array(
        [
            _first_target_rank(r, t, e, s)
            for r, t, e, s in zip(ranked_ids, targets, excluded, subsets, strict=True)
        ],
        dtype=np.int64,
    )


def target_rank(ranked: Sequence[str], target: str) -> int:
    """0-based position of ``target`` in one ranked id list, or :data:`ABSENT_RANK`.

    Args:
        ranked: Document ids, best first.
        target: The id to find.

    Returns:
        The position of the first occurrence.

    Example:
        >>> target_rank(["a", "b", "c"], "c"), target_rank(["a"], "z") == ABSENT_RANK
        (2, True)
    """
    for i, rid in enumerate(ranked):
        if rid == target:
            return i
    return ABSENT_RANK


def cir_recall_at_k(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: IdGroups,
    ks: Iterable[int] = (1, 5, 10, 50),
    exclude_ids: IdGroups | None = None,
) -> dict[int, float]:
    """Composed-retrieval R@K: a query is a hit when any of its targets is in the top K.

    CIRR's protocol removes the reference image from the ranking before cutting at K: pass it
    in ``exclude_ids`` (leaving it in lowers R@K whenever the model ranks the reference
    high). CIRCO's R@K uses only the target the modification text was written for, so pass
    that single id there, not all ground truths.

    Args:
        ranked_ids: Per query, document ids best first; lists may be truncated.
        target_ids: Per query, the target id or sequence of target ids.
        ks: Cut-offs.
        exclude_ids: Per query, ids to drop from the ranking (the reference image).

    Returns:
        ``{k: R@k}`` as fractions in ``[0, 1]``.

    Example:
        >>> cir_recall_at_k([["ref", "x", "t"]], ["t"], ks=(1, 2), exclude_ids=["ref"])
        {1: 0.0, 2: 1.0}
    """
    ks_ = _check_ks(ks)
    return recall_at_k(rank_of_ids(ranked_ids, target_ids, exclude_ids=exclude_ids), ks_)


def cir_recall_subset_at_k(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: IdGroups,
    subset_ids: Sequence[Sequence[str]],
    ks: Iterable[int] = (1, 2, 3),
    exclude_ids: IdGroups | None = None,
) -> dict[int, float]:
    """CIRR R_subset@K: R@K with the ranking restricted to the query's image set.

    CIRR's image sets contain the reference image; as in CIRR's evaluation, pass it in
    ``exclude_ids`` so that the ranking runs over the other members only. Members absent
    from a truncated ranked list are treated as ranked after every listed member.

    Args:
        ranked_ids: Per query, document ids best first (the full-gallery ranking).
        target_ids: Per query, the target id or ids; at least one must be a member.
        subset_ids: Per query, the ids of its image set.
        ks: Cut-offs (CIRR reports 1, 2, 3).
        exclude_ids: Per query, ids to drop (the reference image).

    Returns:
        ``{k: R_subset@k}`` as fractions in ``[0, 1]``.

    Raises:
        ValueError: When no target of a query is in its subset (the query is named).

    Example:
        >>> cir_recall_subset_at_k([["x", "ref", "y", "t"]], ["t"], [["ref", "y", "t"]],
        ...                        ks=(1, 2), exclude_ids=["ref"])
        {1: 0.0, 2: 1.0}
    """
    ks_ = _check_ks(ks)
    n = len(ranked_ids)
    subsets = _id_groups(subset_ids, n, "subset_ids")
    targets = _id_groups(target_ids, n, "target_ids")
    excluded = _id_groups(exclude_ids, n, "exclude_ids")
    outside = [i for i in range(n) if not (targets[i] & (subsets[i] - excluded[i]))]
    if outside:
        raise ValueError(
            f"query {_show(np.array(outside))}: no target is a member of its subset_ids; "
            "R_subset@K needs the target inside the query's image set"
        )
    ranks = rank_of_ids(ranked_ids, target_ids, exclude_ids=exclude_ids, subset_ids=subset_ids)
    return recall_at_k(ranks, ks_)


def cir_map_at_k(
    ranked_ids: Sequence[Sequence[str]],
    target_ids: IdGroups,
    ks: Iterable[int] = (5, 10, 25, 50),
    exclude_ids: IdGroups | None = None,
) -> dict[int, float]:
    """CIRCO mAP@K over several ground-truth targets per query.

    ``AP@K = (1 / min(K, n_targets)) * sum_{i<=K} P@i * rel_i``, where ``n_targets`` counts
    all of the query's targets, found or not (CIRCO's ``compute_metrics``). Excluded ids
    (``exclude_ids``) are removed before cutting at K.

    Args:
        ranked_ids: Per query, document ids best first; only the top ``max(ks)`` are read.
        target_ids: Per query, the ground-truth id or ids.
        ks: Cut-offs (CIRCO reports 5, 10, 25, 50).
        exclude_ids: Per query, ids to drop from the ranking.

    Returns:
        ``{k: mAP@k}`` as fractions in ``[0, 1]``.

    Raises:
        ValueError: When an id occurs twice within the top ``max(ks)`` of a ranked list
            (it would count a target twice).

    Example:
        >>> cir_map_at_k([["a", "x", "b"]], [["a", "b"]], ks=(3,))  # (1/1 + 2/3) / 2
        {3: 0.8333333333333333}
    """
    ks_ = _check_ks(ks)
    targets, excluded = _prepare_cir(ranked_ids, target_ids, exclude_ids)
    k_max = max(ks_)
    aps = np.zeros((len(ranked_ids), len(ks_)), dtype=np.float64)
    cut = np.array(ks_)
    for i, (ranked, t, e) in enumerate(zip(ranked_ids, targets, excluded, strict=True)):
        top: list[str] = []
        for rid in ranked:
            if rid in e:
                continue
            top.append(rid)
            if len(top) == k_max:
                break
        if len(set(top)) != len(top):
            raise ValueError(f"ranked_ids[{i}] repeats an id within its top {k_max}")
        rel = np.fromiter((rid in t for rid in top), dtype=bool, count=len(top))
        prec = np.where(rel, np.cumsum(rel) / np.arange(1, len(top) + 1), 0.0)
        csum = np.concatenate([[0.0], np.cumsum(prec)])
        aps[i] = csum[np.minimum(cut, len(top))] / np.minimum(cut, len(t))
    return {k: float(aps[:, j].mean()) for j, k in enumerate(ks_)}


def cumulative_hits_at_k(target_ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """ChatIR cumulative Hits@K per dialog round.

    The value at round ``r`` is the fraction of dialogs whose target was in the top ``k`` at
    any round ``<= r``: a dialog counts once it has hit, whatever later rounds do, so the
    curve never decreases. ChatIR prints the same numbers times 100.

    Args:
        target_ranks: Integer array of shape ``(n_dialogs, n_rounds)``: the 0-based rank of
            the target at each round (round 0 = the caption alone), e.g. stacked
            :func:`rank_of_ids` results; :data:`ABSENT_RANK` for a target not retrieved.
        k: The hit cut-off (ChatIR uses 10).

    Returns:
        float64 array of shape ``(n_rounds,)`` with values in ``[0, 1]``.

    Example:
        >>> cumulative_hits_at_k(np.array([[12, 3, 40], [50, 60, 2]]), k=10).tolist()
        [0.0, 0.5, 1.0]
    """
    (k_,) = _check_ks((k,))
    ranks = np.asarray(target_ranks)
    if ranks.ndim != 2 or ranks.shape[0] == 0 or ranks.shape[1] == 0:
        raise ValueError(
            f"target_ranks must have shape (n_dialogs, n_rounds) with both > 0, got {ranks.shape}"
        )
    _as_ranks(ranks.reshape(-1), "target_ranks")
    hit_so_far = np.logical_or.accumulate(ranks < k_, axis=1)
    return hit_so_far.mean(axis=0)


def _dialog_ranks(target_ranks: np.ndarray, n_gallery: int) -> np.ndarray:
    ranks = np.asarray(target_ranks)
    if ranks.ndim != 2 or ranks.shape[0] == 0 or ranks.shape[1] == 0:
        raise ValueError(
            f"target_ranks must have shape (n_dialogs, n_rounds) with both > 0, got {ranks.shape}"
        )
    if n_gallery < 1:
        raise ValueError(f"n_gallery must be positive, got {n_gallery}")
    _as_ranks(ranks.reshape(-1), "target_ranks")
    return np.minimum(ranks, n_gallery - 1).astype(np.float64)


def best_log_rank_integral(target_ranks: np.ndarray, n_gallery: int) -> float:
    """Best log Rank Integral (BRI, PlugIR, Lee et al. 2024): lower is better.

    Per dialog, the best 1-based rank reached so far at each round is taken in natural log,
    and the area under that curve over rounds ``0..R`` (trapezoid rule) is divided by ``R``;
    BRI is the mean over dialogs. 0 means the target was first from the caption on; a
    target that is never retrieved counts at rank ``n_gallery``. With one round (``R = 0``)
    it is the mean log rank of round 0.

    Args:
        target_ranks: ``(n_dialogs, n_rounds)`` 0-based ranks, :data:`ABSENT_RANK` allowed.
        n_gallery: Images searched (the rank of a target that was not retrieved).

    Example:
        >>> round(best_log_rank_integral(np.array([[0, 5, 0]]), 100), 6)
        0.0
    """
    ranks = _dialog_ranks(target_ranks, n_gallery)
    best = np.log(np.minimum.accumulate(ranks, axis=1) + 1.0)
    if best.shape[1] == 1:
        return float(best[:, 0].mean())
    area = (best[:, :-1] + best[:, 1:]).sum(axis=1) / 2.0
    return float((area / (best.shape[1] - 1)).mean())


def mean_rank_per_round(target_ranks: np.ndarray, n_gallery: int) -> np.ndarray:
    """Mean 1-based rank of the target per round (not retrieved: ``n_gallery``)."""
    ranks = _dialog_ranks(target_ranks, n_gallery)
    out: np.ndarray = (ranks + 1.0).mean(axis=0)
    return out


def rank_worsened_share(target_ranks: np.ndarray, n_gallery: int) -> float:
    """Share of rounds ``1..R`` (over all dialogs) in which the target's rank got worse.

    Example:
        >>> rank_worsened_share(np.array([[5, 3, 4], [2, 2, 1]]), 100)
        0.25
    """
    ranks = _dialog_ranks(target_ranks, n_gallery)
    if ranks.shape[1] < 2:
        return 0.0
    return float((ranks[:, 1:] > ranks[:, :-1]).mean())


def dialog_metrics(target_ranks: np.ndarray, n_gallery: int, k: int = 10) -> dict[str, float]:
    """Cumulative Hits@K and mean rank per round, BRI and the share of worsened rounds.

    Keys: ``hits@{k}_round{r}`` (fractions), ``mean_rank_round{r}``, ``bri`` and
    ``rank_worse_share``.
    """
    hits = cumulative_hits_at_k(target_ranks, k)
    means = mean_rank_per_round(target_ranks, n_gallery)
    out = {f"hits@{k}_round{r}": float(v) for r, v in enumerate(hits)}
    out.update({f"mean_rank_round{r}": float(v) for r, v in enumerate(means)})
    out["bri"] = best_log_rank_integral(target_ranks, n_gallery)
    out["rank_worse_share"] = rank_worsened_share(target_ranks, n_gallery)
    return out


def prefix(metrics: Mapping[str, float], name: str) -> dict[str, float]:
    """Prefix metric keys with ``{name}_`` (sentence-transformers' ``prefix_name_to_metrics``).

    Args:
        metrics: Metric name -> value.
        name: Prefix; an empty string leaves the keys as they are.

    Returns:
        A new dict.

    Example:
        >>> prefix({"R@1": 0.5}, "flickr")
        {'flickr_R@1': 0.5}
    """
    return {f"{name}_{k}" if name else k: v for k, v in metrics.items()}
