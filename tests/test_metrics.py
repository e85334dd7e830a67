from __future__ import annotations

import numpy as np
import pytest

from tests._reference_metrics import hashing_map, recall_both_directions
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
    recall_at_k,
    target_rank,
)


def test_recall_hand_computed_five_caption_protocol() -> None:
    # 2 images (unit axes), 4 texts: t0,t1 -> image 0; t2,t3 -> image 1.
    img = np.array([[1, 0], [0, 1]], np.float32)
    s = np.sqrt(0.5)
    txt = np.array([[1, 0], [0, 1], [0, 1], [s, s * 0.9]], np.float32)
    m = image_text_retrieval_metrics(img, txt, np.array([0, 0, 1, 1]), ks=(1, 2))
    # text->image: t0 hit@1, t1 wrong (image 1 first), t2 hit, t3: 0.707 vs 0.636 -> wrong.
    assert m["text_to_image_R@1"] == pytest.approx(2 / 4)
    assert m["text_to_image_R@2"] == pytest.approx(1.0)
    # image->text: image 0 ranks t0 (1.0) first -> hit; image 1 ranks t1, t2 (1.0) first:
    # t2 is its caption but t1 ties with it and ties count against the query -> rank 1.
    assert m["image_to_text_R@1"] == pytest.approx(1 / 2)
    assert m["image_to_text_R@2"] == pytest.approx(1.0)
    # MRR text->image: 1, 1/2, 1, 1/2 -> 0.75
    assert m["text_to_image_MRR"] == pytest.approx(0.75)
    assert m["mean_R"] == pytest.approx(np.mean([0.5, 1.0, 0.5, 1.0]))


def test_recall_cross_check_and_chunking() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((40, 8)).astype(np.float32)
    txt = rng.standard_normal((120, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t2i = np.repeat(np.arange(40), 3)
    ks = (1, 5, 10)
    ref = recall_both_directions(img, txt, t2i, ks)
    for chunk in (1, 7, 1000):
        got = image_text_retrieval_metrics(img, txt, t2i, ks, chunk_size=chunk)
        for key, value in ref.items():
            assert got[key] == pytest.approx(value), (chunk, key)


def test_recall_errors() -> None:
    img = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="image 2 has no caption"):
        image_text_retrieval_metrics(img, img[:2], np.array([0, 1]))
    with pytest.raises(ValueError, match="valid image row"):
        image_text_retrieval_metrics(img, img, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="query 1 has no positive"):
        first_positive_rank(np.ones((2, 2)), np.array([[1, 0], [0, 0]], bool))


def test_rank_helpers() -> None:
    ranks = np.array([0, 3, 9, 12])
    assert recall_at_k(ranks, (1, 4, 10)) == {1: 0.25, 4: 0.5, 10: 0.75}
    assert mrr(np.array([0, 1, ABSENT_RANK])) == pytest.approx((1 + 0.5 + 0) / 3)
    assert target_rank(["a", "b", "c"], "c") == 2
    assert target_rank(["a"], "z") == ABSENT_RANK


def test_hamming_forms_agree() -> None:
    rng = np.random.default_rng(1)
    a = np.sign(rng.standard_normal((5, 16))).astype(np.float32)
    b = np.sign(rng.standard_normal((7, 16))).astype(np.float32)
    d = hamming_distance(a, b)
    naive = (a[:, None, :] != b[None, :, :]).sum(-1)
    np.testing.assert_array_equal(d, naive)
    pa, pb = np.packbits(a > 0, axis=1), np.packbits(b > 0, axis=1)
    np.testing.assert_array_equal(hamming_distance(pa, pb), naive)
    with pytest.raises(ValueError, match="sign"):
        hamming_distance(np.array([[0.3, -1.0]]), np.array([[1.0, 1.0]]))


def test_map_hand_computed() -> None:
    # One query, 4 db items; Hamming distances 0, 1, 1, 2 -> order 0, 1, 2, 3 (tie by index).
    q = np.array([[1, 1]], np.float32)
    db = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    ql = np.array([[1, 0]])
    dl = np.array([[0, 1], [1, 0], [1, 1], [1, 0]])  # relevant: items 1, 2, 3
    # relevance in ranked order: 0,1,1,1 -> P@2=1/2, P@3=2/3, P@4=3/4 -> AP=(1/2+2/3+3/4)/3
    assert mean_average_precision(q, db, ql, dl) == pytest.approx((0.5 + 2 / 3 + 0.75) / 3)
    # @2: relevance 0,1 -> (1/2)/1
    assert mean_average_precision(q, db, ql, dl, top_k=2) == pytest.approx(0.5)
    # @1: nothing relevant in the top 1 -> 0
    assert mean_average_precision(q, db, ql, dl, top_k=1) == 0.0
    scores = -hamming_distance(q, db).astype(float)
    rel = (ql @ dl.T) > 0
    assert map_from_scores(scores, rel) == pytest.approx((0.5 + 2 / 3 + 0.75) / 3)


def test_map_cross_check_and_chunking() -> None:
    rng = np.random.default_rng(2)
    qb = np.sign(rng.standard_normal((25, 16))).astype(np.float32)
    db = np.sign(rng.standard_normal((60, 16))).astype(np.float32)
    ql = (rng.random((25, 5)) < 0.3).astype(np.uint8)
    dl = (rng.random((60, 5)) < 0.3).astype(np.uint8)
    for top_k in (None, 10):
        ref = hashing_map(qb, db, ql, dl, top_k)
        for chunk in (1, 7, 100):
            got = mean_average_precision(qb, db, ql, dl, top_k=top_k, chunk_size=chunk)
            assert got == pytest.approx(ref), (top_k, chunk)
    packed = mean_average_precision(np.packbits(qb > 0, 1), np.packbits(db > 0, 1), ql, dl)
    assert packed == pytest.approx(hashing_map(qb, db, ql, dl))


def test_cir_metrics_hand_computed() -> None:
    ranked = [["ref1", "a", "t1", "b"], ["c", "d", "e", "t2"]]
    targets = [["t1"], ["t2", "x"]]
    excl = [["ref1"], []]
    # q0 after dropping ref1: a, t1, b -> hit at 2; q1: t2 at rank 4.
    assert cir_recall_at_k(ranked, targets, (1, 2, 4), excl) == {1: 0.0, 2: 0.5, 4: 1.0}
    assert cir_recall_at_k(ranked, targets, (2,)) == {2: 0.0}
    # q0: AP@3 = (1/2) / min(3, 1) = 0.5; q1: AP@3 = 0 (no target in top 3) -> 0.25
    assert cir_map_at_k(ranked, targets, (3,), excl) == {3: 0.25}
    # q1 @4: t2 at 4 -> P@4 = 1/4, / min(4, 2) -> 0.125; q0 @4 -> 0.5 -> mean 0.3125
    assert cir_map_at_k(ranked, targets, (4,), excl)[4] == pytest.approx(0.3125)
    subsets = [["ref1", "t1", "b"], ["d", "t2"]]
    # q0 restricted (ref removed): t1, b -> hit@1; q1: d, t2 -> hit@2.
    got = cir_recall_subset_at_k(ranked, targets, subsets, (1, 2), reference_ids=["ref1", "z"])
    assert got == {1: 0.5, 2: 1.0}
    with pytest.raises(ValueError, match="different lengths"):
        cir_recall_at_k(ranked, targets[:1])


def test_cumulative_hits() -> None:
    ranks = np.array([[12, 3, 40], [50, 60, 2], [0, 30, 30], [ABSENT_RANK] * 3])
    hits = cumulative_hits_at_k(ranks, k=10)
    np.testing.assert_allclose(hits, [0.25, 0.5, 0.75])
    assert (np.diff(hits) >= 0).all()
    with pytest.raises(ValueError):
        cumulative_hits_at_k(np.array([1, 2]), 10)


def test_real_clip_embeddings_published_recall(shared_data) -> None:  # type: ignore[no-untyped-def]
    from vistrieve.evals.datasets import load_paired_embeddings

    p = load_paired_embeddings(shared_data / "flickr30k-clip-vitl14-1k")
    m = image_text_retrieval_metrics(p.image, p.text, p.text_to_image)
    assert (m["text_to_image_R@1"], m["text_to_image_R@5"], m["text_to_image_R@10"]) == (
        pytest.approx(0.717), pytest.approx(0.92), pytest.approx(0.954)
    )
