"""Tests for vistrieve.evals.metrics: hand-computed cases, a naive second implementation,
chunking invariance, and the published R@K of real CLIP embeddings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from tests import _reference_metrics as ref
from vistrieve.evals.metrics import (
    ABSENT_RANK,
    cir_map_at_k,
    cir_recall_at_k,
    cir_recall_subset_at_k,
    cumulative_hits_at_k,
    first_positive_rank,
    hamming_distance,
    image_text_retrieval_metrics,
    map_from_scores,
    mean_average_precision,
    mrr,
    prefix,
    rank_of_ids,
    ranked_ids_from_scores,
    recall_at_k,
    target_rank,
)
from vistrieve.utils.io import load_npy

CHUNKS = (1, 7, 10_000)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------- ranks


def test_first_positive_rank_ties_multiple_positives_and_exclusion() -> None:
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1],
            [0.2, 0.8, 0.8, 0.3],
            [0.4, 0.4, 0.4, 0.4],
        ]
    )
    positives = [[1], [1, 2], [3]]
    # row 0: positive 0.5; 0.9 is above and the negative 0.5 ties -> pessimistic rank 2.
    # row 1: two positives tie at 0.8; the other positive does not push it down -> 0.
    # row 2: constant scores, 3 tied negatives -> 3 (a constant scorer gets no credit).
    assert first_positive_rank(scores, positives).tolist() == [2, 0, 3]
    mask = np.zeros(scores.shape, dtype=bool)
    mask[0, 1] = mask[1, 1] = mask[1, 2] = mask[2, 3] = True
    assert first_positive_rank(scores, mask).tolist() == [2, 0, 3]
    # Excluding column 0 of row 0 removes the 0.9 above it: 2 -> 1; excluding one of row
    # 1's positives leaves the other one at rank 0.
    assert first_positive_rank(scores, positives, exclude=[[0], [1], []]).tolist() == [1, 0, 3]


def test_first_positive_rank_matches_reference_and_chunking() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=(23, 17)).astype(np.float64)  # many ties
    positives = [rng.choice(17, size=rng.integers(1, 4), replace=False) for _ in range(23)]
    expected = [
        ref.rank_of_best_positive(row.tolist(), set(p.tolist()))
        for row, p in zip(scores, positives, strict=True)
    ]
    for chunk in CHUNKS:
        assert first_positive_rank(scores, positives, chunk_size=chunk).tolist() == expected


def test_first_positive_rank_errors() -> None:
    with pytest.raises(ValueError, match="query 1 has no positive"):
        first_positive_rank(np.ones((2, 2)), np.array([[1, 0], [0, 0]], bool))
    with pytest.raises(ValueError, match="query 0 has no positive"):
        first_positive_rank(np.ones((1, 2)), [[1]], exclude=[[1]])
    with pytest.raises(ValueError, match="NaN in row 1"):
        first_positive_rank(np.array([[1.0, 0.0], [np.nan, 0.0]]), [[0], [0]])
    with pytest.raises(ValueError, match="outside"):
        first_positive_rank(np.ones((1, 2)), [[2]])
    with pytest.raises(ValueError, match="bool mask"):
        first_positive_rank(np.ones((2, 2)), np.eye(2, dtype=int))
    with pytest.raises(ValueError, match="chunk_size"):
        first_positive_rank(np.ones((1, 2)), [[0]], chunk_size=0)


def test_recall_and_mrr_by_hand() -> None:
    ranks = np.array([0, 3, 9, 12])
    # rank < 1: {0}; < 4: {0, 3}; < 10: {0, 3, 9}
    assert recall_at_k(ranks, (1, 4, 10)) == {1: 0.25, 4: 0.5, 10: 0.75}
    # (1/1 + 1/2 + 1/4) / 3 = 0.58333
    assert mrr(np.array([0, 1, 3])) == pytest.approx(1.75 / 3)
    # An absent target never hits and adds ~0 to MRR: (1 + 1/2 + 0) / 3
    assert recall_at_k(np.array([0, ABSENT_RANK]), (10**9,)) == {10**9: 0.5}
    assert mrr(np.array([0, 1, ABSENT_RANK])) == pytest.approx(1.5 / 3)
    # Whole-number float ranks are accepted.
    assert recall_at_k(np.array([0.0, 2.0]), (1,)) == {1: 0.5}


@pytest.mark.parametrize(
    ("ranks", "ks", "match"),
    [
        (np.array([], dtype=int), (1,), "empty"),
        (np.array([0, -1]), (1,), "negative at query 1"),
        (np.array([0.5]), (1,), "whole numbers"),
        (np.array([[0]]), (1,), "1-D"),
        (np.array([0]), (0,), "positive integers"),
        (np.array([0]), (), "ks is empty"),
    ],
)
def test_recall_errors(ranks: np.ndarray, ks: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        recall_at_k(ranks, ks)


# --------------------------------------------------------------------------- image-text


def test_image_text_metrics_by_hand_with_ties() -> None:
    # Integer-valued embeddings, so every score is exact and ties are real ties.
    img = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    txt = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
    t2i = np.array([0, 1, 2, 0])
    m = image_text_retrieval_metrics(img, txt, t2i, ks=(1, 2))
    # text -> image scores (i0, i1, i2):
    #   t0 (1, 0, 1): its image i0 ties with i2 -> rank 1
    #   t1 (0, 1, 1): i1 ties with i2           -> rank 1
    #   t2 (1, 1, 2): i2 strictly first         -> rank 0
    #   t3 (2, 0, 2): i0 ties with i2           -> rank 1
    assert m["text_to_image_R@1"] == pytest.approx(1 / 4)
    assert m["text_to_image_R@2"] == pytest.approx(4 / 4)
    assert m["text_to_image_MRR"] == pytest.approx((0.5 + 0.5 + 1 + 0.5) / 4)
    # image -> text scores (t0, t1, t2, t3):
    #   i0 (1, 0, 1, 2): captions t0, t3; best t3 = 2, no negative >= 2 -> rank 0
    #   i1 (0, 1, 1, 0): caption t1 = 1; negative t2 ties                -> rank 1
    #   i2 (1, 1, 2, 2): caption t2 = 2; negative t3 ties                -> rank 1
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(3 / 3)
    assert m["image_to_text_MRR"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["mean_R"] == pytest.approx((1 / 4 + 1 + 1 / 3 + 1) / 4)
    assert set(m) == {
        "text_to_image_R@1", "text_to_image_R@2", "text_to_image_MRR",
        "image_to_text_R@1", "image_to_text_R@2", "image_to_text_MRR", "mean_R",
    }  # fmt: skip


def test_image_to_text_any_caption_counts() -> None:
    # Image 0 has captions t0 (poor) and t1 (good): it is a hit at 1 through t1 alone.
    img = np.array([[1, 0], [0, 1]], np.float32)
    txt = np.array([[0, 1], [3, 0], [0, 2]], np.float32)
    m = image_text_retrieval_metrics(img, txt, [0, 0, 1], ks=(1,))
    # i0 scores (t0, t1, t2) = (0, 3, 0): best caption t1 first -> rank 0
    # i1 scores (1, 0, 2): caption t2 = 2 first -> rank 0
    assert m["image_to_text_R@1"] == 1.0
    # t0 scores (i0, i1) = (0, 1): its image i0 second -> miss; t1, t2 hit -> 2/3
    assert m["text_to_image_R@1"] == pytest.approx(2 / 3)


def test_image_text_metrics_match_reference_and_chunking() -> None:
    rng = np.random.default_rng(0)
    img = _unit(rng, 30, 8)
    # Uneven caption counts, shuffled, so an image's captions straddle text chunks.
    t2i = rng.permutation(np.concatenate([np.arange(30), rng.integers(0, 30, size=70)]))
    txt = _unit(rng, len(t2i), 8) + 0.8 * img[t2i]
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ks = (1, 5, 10)
    expected = ref.recall_and_mrr(img.tolist(), txt.tolist(), t2i.tolist(), ks)
    assert 0.0 < expected["text_to_image_R@1"] < 1.0  # the data is neither trivial nor hopeless
    for chunk in CHUNKS:
        got = image_text_retrieval_metrics(img, txt, t2i, ks, chunk_size=chunk)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), (chunk, key)
        assert all(0.0 <= v <= 1.0 for v in got.values())


def test_image_text_metrics_errors() -> None:
    img = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="image 2 has no caption"):
        image_text_retrieval_metrics(img, img[:2], np.array([0, 1]))
    with pytest.raises(ValueError, match="outside \\[0, 3\\) at text 2"):
        image_text_retrieval_metrics(img, img, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="dimension"):
        image_text_retrieval_metrics(img, np.eye(3, 4, dtype=np.float32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        image_text_retrieval_metrics(img, img, np.array([0, 1]))
    bad = img.copy()
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite values in row 1"):
        image_text_retrieval_metrics(img, bad, np.array([0, 1, 2]))


@pytest.mark.shared_data
def test_flickr30k_clip_vitl14_published_recall(shared_data: Path) -> None:
    root = shared_data / "flickr30k-clip-vitl14-1k"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    img = load_npy(root / "flickr30k_image_embeddings.npy").astype(np.float32)
    txt = load_npy(root / "flickr30k_text_embeddings.npy").astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    # 1000 pairs: text i describes image i.
    m = image_text_retrieval_metrics(img, txt, np.arange(len(txt)), ks=(1, 5, 10))
    assert m["text_to_image_R@1"] == pytest.approx(0.717)
    assert m["text_to_image_R@5"] == pytest.approx(0.92)
    assert m["text_to_image_R@10"] == pytest.approx(0.954)


# --------------------------------------------------------------------------- hashing


def test_hamming_distance_by_hand_and_all_formats_agree() -> None:
    q = np.array([[1, -1, 1, 1]])
    db = np.array([[1, 1, 1, 1], [-1, 1, -1, -1], [1, -1, 1, 1]])
    # differing positions: {1} -> 1; all four -> 4; none -> 0
    assert hamming_distance(q, db).tolist() == [[1, 4, 0]]

    rng = np.random.default_rng(1)
    a = np.where(rng.random((5, 20)) < 0.5, 1.0, -1.0)  # 20 bits: packing pads 4 zero bits
    b = np.where(rng.random((9, 20)) < 0.5, 1.0, -1.0)
    naive = [[ref.hamming(x, y) for y in b] for x in a]
    assert hamming_distance(a, b).tolist() == naive
    assert hamming_distance(a > 0, b > 0).tolist() == naive
    assert hamming_distance((a > 0).astype(np.int64), (b > 0).astype(np.int64)).tolist() == naive
    packed_a, packed_b = np.packbits(a > 0, axis=1), np.packbits(b > 0, axis=1)
    assert packed_a.shape == (5, 3)
    assert hamming_distance(packed_a, packed_b).tolist() == naive
    u8_a, u8_b = (a > 0).astype(np.uint8), (b > 0).astype(np.uint8)
    assert hamming_distance(u8_a, u8_b, code_format="bits").tolist() == naive


def test_hamming_auto_reads_uint8_as_packed_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    q = np.array([[1, 0]], np.uint8)  # bytes 00000001 00000000
    db = np.array([[0, 1]], np.uint8)  # bytes 00000000 00000001
    with caplog.at_level(logging.WARNING, logger="vistrieve.evals.metrics"):
        assert hamming_distance(q, db).tolist() == [[2]]  # 16 bits, two differ
    assert "packed bits" in caplog.text
    # 3 = 0b00000011 is not a 0/1 bit value, so only the packed reading accepts it: 2 bits.
    assert hamming_distance(np.array([[3]], np.uint8), np.array([[0]], np.uint8)).tolist() == [[2]]


@pytest.mark.parametrize(
    ("q", "db", "kwargs", "match"),
    [
        (np.array([[0.0, -1.0]]), np.array([[1.0, 1.0]]), {}, "np.sign maps 0 to 0"),
        (np.array([[1, 0]]), np.array([[2, 0]]), {}, "only 0 and 1"),
        (np.array([[1, -1]]), np.array([[1, -1, 1]]), {}, "same code length"),
        (np.array([[1]], np.uint8), np.array([[1.0]]), {}, "pack both"),
        (np.array([[1, 1]]), np.array([[1, 1]]), {"code_format": "hex"}, "code_format"),
        (np.array([[1, 1]]), np.array([[1, 1]]), {"code_format": "packed"}, "uint8"),
    ],
)
def test_hamming_errors(q: np.ndarray, db: np.ndarray, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hamming_distance(q, db, **kwargs)


def test_map_by_hand_all_vs_top_k_and_no_hit() -> None:
    q = np.array([[1, 1]])
    db = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    ql = np.array([[1, 0]])
    dl = np.array([[0, 1], [1, 0], [1, 1], [1, 0]])  # relevant: items 1, 2, 3
    # distances 0, 1, 1, 2 -> order 0, 1, 2, 3 (1 before 2 by index) -> relevance 0, 1, 1, 1
    # mAP@ALL = (P@2 + P@3 + P@4) / 3 = (1/2 + 2/3 + 3/4) / 3
    assert mean_average_precision(q, db, ql, dl) == pytest.approx((0.5 + 2 / 3 + 0.75) / 3)
    # mAP@2: relevance 0, 1 -> R_2 = 1 -> (1/2) / 1
    assert mean_average_precision(q, db, ql, dl, top_k=2) == pytest.approx(0.5)
    # mAP@1: nothing relevant in the top 1 -> 0
    assert mean_average_precision(q, db, ql, dl, top_k=1) == 0.0
    # K beyond the database is mAP@ALL
    assert mean_average_precision(q, db, ql, dl, top_k=99) == pytest.approx(0.6388888888)
    # A second query with no relevant item at all contributes 0 to the mean.
    q2, ql2 = np.array([[1, 1], [1, 1]]), np.array([[1, 0], [0, 0]])
    assert mean_average_precision(q2, db, ql2, dl) == pytest.approx(0.6388888888 / 2)
    # Class-id labels: query class 7, database classes -> same relevance 0, 1, 1, 1
    assert mean_average_precision(q, db, np.array([7]), np.array([3, 7, 7, 7])) == pytest.approx(
        0.6388888888
    )


def test_map_tie_rule_is_database_order() -> None:
    q, ql = np.array([[1, 1]]), np.array([[1]])
    db = np.array([[1, -1], [-1, 1]])  # both at distance 1
    # Item 0 irrelevant, item 1 relevant: stable order 0, 1 -> relevance 0, 1 -> AP 1/2.
    assert mean_average_precision(q, db, ql, np.array([[0], [1]])) == pytest.approx(0.5)
    # Same codes, database stored the other way round -> relevance 1, 0 -> AP 1.
    assert mean_average_precision(q, db[::-1], ql, np.array([[1], [0]])) == pytest.approx(1.0)
    # Equal float scores follow the same rule.
    assert map_from_scores(np.array([[0.3, 0.3]]), np.array([[False, True]])) == pytest.approx(0.5)


def test_map_variants_differ_only_at_k() -> None:
    scores = np.arange(10, 0, -1)[None, :].astype(float)  # ranking = index order
    rel = np.zeros((1, 10), dtype=bool)
    rel[0, [0, 4, 8]] = True  # relevant at positions 1, 5, 9
    # @2, hits_in_top_k: top 2 holds one relevant item -> (1/1) / 1 = 1
    assert map_from_scores(scores, rel, top_k=2) == pytest.approx(1.0)
    # @2, dcmh: the first min(2, 3) = 2 relevant items, at positions 1 and 5 -> (1/1 + 2/5) / 2
    assert map_from_scores(scores, rel, top_k=2, ap_variant="dcmh") == pytest.approx(0.7)
    # @ALL both: (1/1 + 2/5 + 3/9) / 3
    variant: Literal["hits_in_top_k", "dcmh"]
    for variant in ("hits_in_top_k", "dcmh"):
        got = map_from_scores(scores, rel, ap_variant=variant)
        assert got == pytest.approx((1 + 0.4 + 1 / 3) / 3)


def test_map_matches_reference_with_ties_and_chunking() -> None:
    rng = np.random.default_rng(2)
    qb = np.where(rng.random((13, 8)) < 0.5, 1, -1)  # 8 bits: distances tie a lot
    db = np.where(rng.random((50, 8)) < 0.5, 1, -1)
    ql = (rng.random((13, 4)) < 0.3).astype(np.uint8)
    dl = (rng.random((50, 4)) < 0.3).astype(np.uint8)
    variant: Literal["hits_in_top_k", "dcmh"]
    for variant in ("hits_in_top_k", "dcmh"):
        for top_k in (None, 1, 10):
            expected = ref.hashing_map(
                qb.tolist(), db.tolist(), ql.tolist(), dl.tolist(), top_k, variant
            )
            for chunk in CHUNKS:
                got = mean_average_precision(qb, db, ql, dl, top_k, chunk, ap_variant=variant)
                assert got == pytest.approx(expected), (variant, top_k, chunk)
    packed = mean_average_precision(np.packbits(qb > 0, 1), np.packbits(db > 0, 1), ql, dl, 10)
    assert packed == pytest.approx(
        ref.hashing_map(qb.tolist(), db.tolist(), ql.tolist(), dl.tolist(), 10)
    )


def test_map_from_scores_matches_reference() -> None:
    rng = np.random.default_rng(4)
    scores = np.round(rng.random((9, 30)), 1)  # one decimal: many ties
    rel = rng.random((9, 30)) < 0.25
    for top_k in (None, 5):
        expected = ref.score_map(scores.tolist(), rel.tolist(), top_k)
        for chunk in CHUNKS:
            assert map_from_scores(scores, rel, top_k, chunk) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, "top_k"),
        ({"query_labels": np.array([[1, 0, 0]])}, "classes"),
        ({"db_labels": np.array([[1, 0]])}, "rows"),
        ({"query_labels": np.array([[-1, 1]])}, "multi-hot"),
        ({"ap_variant": "other"}, "ap_variant"),
    ],
)
def test_map_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "query_codes": np.array([[1, -1]]),
        "db_codes": np.array([[1, 1], [-1, -1]]),
        "query_labels": np.array([[1, 0]]),
        "db_labels": np.array([[1, 0], [0, 1]]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mean_average_precision(**args)


def test_map_from_scores_errors() -> None:
    with pytest.raises(ValueError, match="NaN in row 0"):
        map_from_scores(np.array([[np.nan, 1.0]]), np.array([[True, False]]))
    with pytest.raises(ValueError, match="bool array"):
        map_from_scores(np.array([[0.0, 1.0]]), np.array([[1, 0]]))


# --------------------------------------------------------------------------- composed


def test_cir_recall_and_circo_map_by_hand() -> None:
    ranked = [["ref1", "a", "t1", "b"], ["c", "d", "e", "t2"]]
    targets = [["t1"], ["t2", "x"]]
    exclude = [["ref1"], []]
    # q0 without ref1: a, t1, b -> rank 1; q1: t2 -> rank 3
    assert cir_recall_at_k(ranked, targets, (1, 2, 4), exclude) == {1: 0.0, 2: 0.5, 4: 1.0}
    # Leaving the reference in pushes t1 to rank 2: R@2 drops to 0.
    assert cir_recall_at_k(ranked, targets, (2,)) == {2: 0.0}
    # mAP@3: q0 relevance 0, 1, 0 -> (1/2) / min(3, 1) = 0.5; q1 none in top 3 -> 0; mean 0.25
    assert cir_map_at_k(ranked, targets, (3,), exclude) == {3: 0.25}
    # mAP@4: q0 still 0.5 (3 items left); q1 t2 at 4 -> (1/4) / min(4, 2) = 0.125
    assert cir_map_at_k(ranked, targets, (4,), exclude)[4] == pytest.approx(0.3125)
    # Several ground truths (CIRCO): relevance 1, 0, 1, 1 among 5 targets
    ranked2, targets2 = [["g1", "n", "g2", "g3"]], [["g1", "g2", "g3", "g4", "g5"]]
    # @3: (1/1 + 2/3) / min(3, 5); @4: (1/1 + 2/3 + 3/4) / min(4, 5)
    got = cir_map_at_k(ranked2, targets2, (3, 4))
    assert got[3] == pytest.approx((1 + 2 / 3) / 3)
    assert got[4] == pytest.approx((1 + 2 / 3 + 0.75) / 4)
    # A single id per query may be given as a str.
    assert cir_recall_at_k([["x", "t"]], ["t"], (1, 2)) == {1: 0.0, 2: 1.0}
    assert cir_recall_at_k([["x", "t"]], ["t"], (1,), exclude_ids=["x"]) == {1: 1.0}


def test_circo_map_matches_reference() -> None:
    rng = np.random.default_rng(5)
    pool = [f"i{j}" for j in range(40)]
    ranked = [list(rng.permutation(pool)) for _ in range(12)]
    targets = [list(rng.choice(pool, size=rng.integers(1, 6), replace=False)) for _ in range(12)]
    got = cir_map_at_k(ranked, targets, (5, 10, 25, 50))
    for k in (5, 10, 25, 50):
        assert got[k] == pytest.approx(ref.circo_map(ranked, targets, k))


def test_cir_recall_subset_by_hand() -> None:
    ranked = [["x", "ref", "y", "t"], ["t2", "z", "w"]]
    subsets = [["ref", "y", "t"], ["w", "t2"]]
    # q0 members without ref: y, t -> rank 1; q1 members: t2, w -> rank 0
    got = cir_recall_subset_at_k(ranked, ["t", "t2"], subsets, (1, 2), exclude_ids=["ref", "r2"])
    assert got == {1: 0.5, 2: 1.0}
    # Without dropping the reference q0's target falls to rank 2 among ref, y, t.
    assert cir_recall_subset_at_k(ranked, ["t", "t2"], subsets, (2,)) == {2: 0.5}


def test_cir_errors() -> None:
    with pytest.raises(ValueError, match="one entry per query"):
        cir_recall_at_k([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="query 1 has no target"):
        cir_recall_at_k([["a"], ["b"]], [["a"], []])
    with pytest.raises(ValueError, match="also in exclude_ids"):
        cir_map_at_k([["a"]], [["a"]], (1,), [["a"]])
    with pytest.raises(ValueError, match="repeats an id"):
        cir_map_at_k([["a", "a", "b"]], [["a"]], (3,))
    with pytest.raises(ValueError, match="query 0: no target is a member"):
        cir_recall_subset_at_k([["a", "t"]], ["t"], [["a", "b"]])
    with pytest.raises(ValueError, match="is a string"):
        cir_recall_at_k(["abc"], ["a"])


def test_ranked_ids_from_scores_tie_order_and_k() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [0.0, 0.0, 1.0, 0.0]])
    ids = ["a", "b", "c", "d"]
    # Equal scores keep column order: a before c; b, d before... by index too.
    assert ranked_ids_from_scores(scores, ids) == [["b", "a", "c", "d"], ["c", "a", "b", "d"]]
    for chunk in CHUNKS:
        assert ranked_ids_from_scores(scores, ids, k=2, chunk_size=chunk) == [
            ["b", "a"],
            ["c", "a"],
        ]
    with pytest.raises(ValueError, match="3 ids for 4"):
        ranked_ids_from_scores(scores, ids[:3])


def test_rank_of_ids_and_target_rank() -> None:
    ranked = [["r", "a", "t"], ["a", "b"], ["x", "t1", "t2"]]
    ranks = rank_of_ids(ranked, ["t", "z", ["t2", "t1"]], exclude_ids=["r", None, None])
    # q0: r dropped -> t at 1; q1: z absent; q2: best-ranked target t1 at 1
    assert ranks.tolist() == [1, ABSENT_RANK, 1]
    assert target_rank(["a", "b", "c"], "c") == 2
    assert target_rank(["a"], "z") == ABSENT_RANK


# --------------------------------------------------------------------------- dialog


def test_cumulative_hits_by_hand() -> None:
    ranks = np.array([[12, 3, 40], [50, 60, 2], [0, 30, 30], [ABSENT_RANK] * 3])
    # round 0: only dialog 2 (rank 0) -> 1/4; round 1: + dialog 0 (rank 3) -> 2/4;
    # round 2: + dialog 1 (rank 2) -> 3/4. Dialog 2 falls to 30 later but stays counted.
    np.testing.assert_allclose(cumulative_hits_at_k(ranks, k=10), [0.25, 0.5, 0.75])
    # k=1: only dialog 2 at round 0 -> 1/4 every round
    np.testing.assert_allclose(cumulative_hits_at_k(ranks, k=1), [0.25, 0.25, 0.25])


def test_cumulative_hits_monotone_and_matches_reference() -> None:
    rng = np.random.default_rng(6)
    ranks = rng.integers(0, 40, size=(50, 11))
    hits = cumulative_hits_at_k(ranks, k=10)
    assert hits.shape == (11,)
    assert (np.diff(hits) >= 0).all()
    np.testing.assert_allclose(hits, ref.cumulative_hits(ranks.tolist(), 10))


def test_cumulative_hits_from_ranked_lists() -> None:
    # Two dialogs, two rounds of retrieved ids.
    lists_per_round = [[["x", "y"], ["t2", "x"]], [["t1", "y"], ["x", "y"]]]
    targets = ["t1", "t2"]
    ranks = np.stack([rank_of_ids(lists, targets) for lists in lists_per_round], axis=1)
    assert ranks.tolist() == [[ABSENT_RANK, 0], [0, ABSENT_RANK]]
    np.testing.assert_allclose(cumulative_hits_at_k(ranks, k=1), [0.5, 1.0])


def test_cumulative_hits_errors() -> None:
    with pytest.raises(ValueError, match="n_dialogs, n_rounds"):
        cumulative_hits_at_k(np.array([1, 2]), 10)
    with pytest.raises(ValueError, match="negative"):
        cumulative_hits_at_k(np.array([[0, -1]]), 10)
    with pytest.raises(ValueError, match="positive integers"):
        cumulative_hits_at_k(np.array([[0, 1]]), 0)


def test_prefix() -> None:
    assert prefix({"R@1": 0.5}, "flickr") == {"flickr_R@1": 0.5}
    assert prefix({"R@1": 0.5}, "") == {"R@1": 0.5}
