"""Tests of the FAISS binary Hamming index against brute-force popcount search."""

from __future__ import annotations

import numpy as np
import pytest

from vistrieve.evals.metrics import hamming_distance
from vistrieve.indexes import BinaryHashIndex, IndexMismatchError, load_index

BITS = 64


def _popcount_hamming(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances of packed codes with numpy popcount."""
    x = np.bitwise_xor(q[:, None, :], d[None, :, :])
    return np.bitwise_count(x).sum(-1).astype(np.int64)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    db = rng.standard_normal((400, BITS)).astype(np.float32)
    q = rng.standard_normal((20, BITS)).astype(np.float32)
    return db, q, [f"d{i}" for i in range(len(db))]


def _build(kind: str, db: np.ndarray, ids: list[str], **kw) -> BinaryHashIndex:
    extra = {"nlist": 4, "nprobe": 4} if kind == "ivf" else {}
    if kind == "hnsw":
        extra = {"ef_search": 400}
    index = BinaryHashIndex(BITS, index_type=kind, **extra, **kw)  # type: ignore[arg-type]
    index.add(db, ids)
    return index


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_search_matches_brute_force_hamming(kind: str, data) -> None:
    db, q, ids = data
    index = _build(kind, db, ids)
    packed_db, packed_q = np.packbits(db > 0, axis=1), np.packbits(q > 0, axis=1)
    truth = _popcount_hamming(packed_q, packed_db)
    np.testing.assert_array_equal(truth, hamming_distance(packed_q, packed_db))
    k = 10
    scores, pos = index.search_arrays(q, k)
    expected = np.sort(truth, axis=1)[:, :k]
    # every returned item really is at the returned distance, and the distances are the k
    # smallest (which of several items tied at the k-th distance is returned may vary)
    np.testing.assert_array_equal(-scores, expected)
    np.testing.assert_array_equal(np.take_along_axis(truth, pos, 1), expected)
    for row in range(len(q)):
        strictly_better = np.flatnonzero(truth[row] < expected[row, -1])
        assert set(strictly_better) <= set(pos[row].tolist())
        # ties are listed by position
        for a, b in zip(pos[row][:-1], pos[row][1:], strict=True):
            if truth[row, a] == truth[row, b]:
                assert a < b


def test_packed_and_unpacked_inputs_agree(data) -> None:
    db, q, ids = data
    a = _build("flat", db, ids)
    b = BinaryHashIndex(BITS)
    b.add(np.packbits(db > 0, axis=1), ids)
    c = BinaryHashIndex(BITS)
    c.add(np.where(db > 0, 1, -1).astype(np.int8), ids)
    for other in (b, c):
        np.testing.assert_array_equal(a.codes(), other.codes())
        assert a.search_arrays(q, 5)[1].tolist() == other.search_arrays(q, 5)[1].tolist()
    hits = a.search(q[:1], 3)[0]
    assert [h.score for h in hits] == [-h.metadata["hamming"] for h in hits]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_delete_removes_items_from_results(kind: str, data) -> None:
    db, q, ids = data
    index = _build(kind, db, ids)
    before = index.search(q[:1], 5)[0]
    top = [h.id for h in before]
    assert index.remove(top[:2]) == 2
    assert len(index) == len(ids) - 2 and top[0] not in index
    after = index.search(q[:1], 5)[0]
    assert not set(top[:2]) & {h.id for h in after}
    # the rest move up (compared by distance: items tied at the cut may be swapped)
    dist = [h.metadata["hamming"] for h in after]
    assert dist[:3] == [h.metadata["hamming"] for h in before[2:5]]
    if kind == "hnsw":
        assert index.n_tombstones == 2
        index.compact()
        assert index.n_tombstones == 0
        compacted = index.search(q[:1], 5)[0]
        assert [h.metadata["hamming"] for h in compacted] == dist
        assert not set(top[:2]) & {h.id for h in compacted}
    with pytest.raises(KeyError):
        index.remove(["d0", "nope"])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(kind: str, data, tmp_path) -> None:
    db, q, ids = data
    index = _build(kind, db, ids, model="cmseh-64@clip", rescore_multiplier=3)
    index.add(db[:1] * -1, ["extra"], rescore_vectors=None)
    index.remove(["d3"])
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix", expected_model="cmseh-64@clip", expected_dim=BITS)
    assert isinstance(loaded, BinaryHashIndex)
    assert loaded.ids == index.ids and loaded.index_type == kind
    assert loaded.rescore_multiplier == 3 and loaded.manifest()["bits"] == BITS
    np.testing.assert_array_equal(loaded.codes(), index.codes())
    for a, b in zip(index.search_arrays(q, 8), loaded.search_arrays(q, 8), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.add(db[:1], ["new"])  # labels keep increasing after a load
    assert "new" in loaded


def test_loading_with_another_bit_count_is_refused(data, tmp_path) -> None:
    db, _, ids = data
    _build("flat", db, ids).save(tmp_path / "ix")
    with pytest.raises(IndexMismatchError, match="64-bit codes but 32-bit codes were expected"):
        BinaryHashIndex.load(tmp_path / "ix", expected_bits=32)
    with pytest.raises(IndexMismatchError, match="holds 64-bit codes"):
        load_index(tmp_path / "ix", expected_dim=128)


def test_codes_of_another_bit_count_are_rejected(data) -> None:
    db, q, ids = data
    index = _build("flat", db, ids)
    with pytest.raises(ValueError, match="32-bit codes but the index holds 64-bit"):
        index.add(db[:2, :32], ["x", "y"])
    with pytest.raises(ValueError, match="128-bit packed codes"):
        index.search(np.zeros((1, 16), np.uint8), 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        BinaryHashIndex(60)
    with pytest.raises(ValueError, match="duplicate id"):
        index.add(db[:1], ["d0"])


def test_rescoring_with_stored_float_vectors(data) -> None:
    db, q, ids = data
    index = BinaryHashIndex(BITS, rescore_multiplier=8)
    index.add(db, ids, rescore_vectors=db)
    scores, pos = index.search_arrays(q, 5, rescore_queries=q)
    exact = q @ db.T
    for row in range(len(q)):
        cand = np.argsort(
            _popcount_hamming(
                np.packbits(q[row : row + 1] > 0, axis=1), np.packbits(db > 0, axis=1)
            )[0],
            kind="stable",
        )[:40]
        # the re-scored list is the best 5 of the Hamming candidates by the float score
        assert set(pos[row]) <= set(cand.tolist()) | set(pos[row])
        np.testing.assert_allclose(scores[row], exact[row, pos[row]], rtol=1e-5)
        assert np.all(np.diff(scores[row]) <= 0)
    # a multiplier as large as the index gives the exact float top-k
    _, full = index.search_arrays(q, 5, rescore_queries=q, rescore_multiplier=len(ids))
    np.testing.assert_array_equal(full, np.argsort(-exact, axis=1, kind="stable")[:, :5])
    with pytest.raises(ValueError, match="dim 32"):
        index.search(q, 3, rescore_queries=q[:, :32])
    with pytest.raises(ValueError, match="every add or for none"):
        index.add(db[:1], ["z"])


def test_asymmetric_rescoring_without_stored_vectors(data) -> None:
    db, q, ids = data
    index = _build("flat", db, ids)
    _, pos = index.search_arrays(q, 5, rescore_queries=q, rescore_multiplier=len(ids))
    signs = np.where(db > 0, 1.0, -1.0)
    np.testing.assert_array_equal(pos, np.argsort(-(q @ signs.T), axis=1, kind="stable")[:, :5])


def test_empty_and_small_indexes(data) -> None:
    db, q, _ = data
    index = BinaryHashIndex(BITS)
    scores, pos = index.search_arrays(q[:2], 3)
    assert pos.shape == scores.shape == (2, 0)  # k is clamped to the index size
    index.add(db[:2], ["a", "b"])
    assert index.search_arrays(q[:1], 5)[1].shape == (1, 2)
    hits = index.search(q[:1], 5)[0]
    assert sorted(h.id for h in hits) == ["a", "b"]
    with pytest.raises(ValueError, match="needs at least nlist"):
        BinaryHashIndex(BITS, index_type="ivf", nlist=16).add(db[:5], list("abcde"))
