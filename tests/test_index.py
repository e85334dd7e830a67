"""Vector indexes against brute-force numpy ground truth on seeded synthetic vectors.

Follows faiss ``tests/test_contrib.py``: indexes are checked against exact k-NN computed
independently (here in float64 numpy) on data shaped like faiss ``contrib/datasets.py``'s
``SyntheticDataset`` (a low intrinsic dimension, so approximate indexes have structure to
exploit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import faiss
import numpy as np
import pytest
import torch

import vistrieve.indexes.exact as exact_mod
from vistrieve.indexes import (
    INDEXES,
    BaseIndex,
    ExactIndex,
    FaissIndex,
    IndexMismatchError,
    create_index,
    index_kinds,
    load_index,
    register_index_kind,
)
from vistrieve.types import Hit, Index
from vistrieve.utils.io import MANIFEST_NAME

D = 32
_I = TypeVar("_I", bound=BaseIndex)
MetricName = Literal["ip", "l2"]
DType = Literal["float32", "float16"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    # The suite runs on small shared machines, where spinning OpenMP workers make the many
    # tiny matmuls and top-ks here slow; one thread gives the same results.
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


def _normal(n: int, nq: int, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random L2-normalised float32 database (n, d) and queries (nq, d)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + nq, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def _synthetic(n: int, nq: int, d: int = D, seed: int = 1338) -> tuple[np.ndarray, np.ndarray]:
    """faiss SyntheticDataset: a 10-dim ellipsoid bent by sin() into d dims, normalised."""
    rs = np.random.RandomState(seed)
    x = rs.normal(size=(n + nq, 10)) @ rs.rand(10, d)
    x = np.sin(x * (rs.rand(d) * 4 + 0.1)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def _scores(x: np.ndarray, q: np.ndarray, metric: MetricName = "ip") -> np.ndarray:
    """Exact float64 scores (nq, n): inner product or negative squared distance."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "ip":
        return q64 @ x64.T
    return -((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)


def _truth(x: np.ndarray, q: np.ndarray, k: int, metric: MetricName = "ip") -> np.ndarray:
    """Ground-truth top-k positions: score descending, ties by lower position."""
    s = _scores(x, q, metric)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"v{i}" for i in range(start, start + n)]


def _filled(index: _I, x: np.ndarray) -> _I:
    index.add(x, _ids(len(x)))
    return index


# -------------------------------------------------------------------------- exact
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_top_k_equals_numpy_ground_truth(metric: MetricName) -> None:
    x, q = _normal(2000, 64)
    idx = _filled(ExactIndex(D, metric=metric), x)
    scores, pos = idx.search_arrays(q, 10)
    truth = _truth(x, q, 10, metric)
    np.testing.assert_array_equal(pos, truth)
    assert scores.dtype == np.float32 and pos.dtype == np.int64
    np.testing.assert_allclose(
        scores, np.take_along_axis(_scores(x, q, metric), truth, 1), atol=1e-5
    )
    assert (np.diff(scores, axis=1) <= 0).all()
    hits = idx.search(q[:3], 4)
    assert all(isinstance(h, Hit) for row in hits for h in row)
    assert [[h.id for h in row] for row in hits] == [[f"v{p}" for p in r[:4]] for r in truth[:3]]
    assert [h.score for h in hits[0]] == pytest.approx(scores[0, :4].tolist())


def test_batched_search_uses_long_faiss_blocks_and_restores_the_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More rows than one long block, so the search crosses block boundaries.
    x, q = _normal(exact_mod._FAISS_DB_BLOCK + 700, 20)
    idx = _filled(ExactIndex(D), x)
    seen: list[int] = []
    knn = faiss.knn

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(faiss.cvar.distance_compute_blas_database_bs)
        return knn(*args, **kwargs)

    monkeypatch.setattr(faiss, "knn", spy)
    before = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = 777
    try:
        _, pos = idx.search_arrays(q, 10)
        assert faiss.cvar.distance_compute_blas_database_bs == 777
    finally:
        faiss.cvar.distance_compute_blas_database_bs = before
    assert seen == [exact_mod._FAISS_DB_BLOCK]
    np.testing.assert_array_equal(pos, _truth(x, q, 10))


def test_float16_storage_recall_and_scores() -> None:
    x, q = _normal(2000, 64)
    idx = _filled(ExactIndex(D, dtype="float16"), x)
    scores, pos = idx.search_arrays(q, 10)
    truth = _truth(x, q, 10)
    assert _recall(pos, truth) >= 0.99
    np.testing.assert_allclose(scores[:, 0], _scores(x, q).max(1), atol=2e-3)
    assert idx.vectors.dtype.is_floating_point and idx.vectors.element_size() == 2


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tiny_blocks_equal_unblocked(metric: MetricName, dtype: DType) -> None:
    x, q = _normal(300, 21)
    whole = _filled(
        ExactIndex(D, metric=metric, dtype=dtype, query_block=10_000, db_block=10_000), x
    )
    for qb, db in ((3, 7), (1, 1000), (64, 11), (5, 10)):
        blocked = _filled(ExactIndex(D, metric=metric, dtype=dtype, query_block=qb, db_block=db), x)
        for k in (1, 10, 25):
            sa, pa = whole.search_arrays(q, k)
            sb, pb = blocked.search_arrays(q, k)
            np.testing.assert_array_equal(pa, pb)
            np.testing.assert_allclose(sa, sb, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("db_block", [1, 4, 7, 1000])
def test_ties_go_to_the_earlier_item_even_at_the_cut(metric: MetricName, db_block: int) -> None:
    # Small integer vectors: scores are exact in float32, so ties are real ties, many of
    # them straddling the k-th place and the block boundaries.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, size=(60, 6)).astype(np.float32)
    q = rng.integers(0, 3, size=(9, 6)).astype(np.float32)
    dtypes: tuple[DType, ...] = ("float32", "float16")
    for dtype in dtypes:
        idx = ExactIndex(6, metric=metric, dtype=dtype, db_block=db_block, query_block=4)
        idx.add(x, _ids(60))
        for k in (1, 3, 8, 59):
            scores, pos = idx.search_arrays(q, k)
            np.testing.assert_array_equal(pos, _truth(x, q, k, metric))
            np.testing.assert_array_equal(scores, np.take_along_axis(_scores(x, q, metric), pos, 1))


def test_k_is_clamped_to_the_index_size() -> None:
    idx = ExactIndex(4)
    assert idx.search(np.ones((2, 4), np.float32), 3) == [[], []]
    scores, pos = idx.search_arrays(np.ones((2, 4), np.float32), 3)
    assert pos.shape == scores.shape == (2, 0)
    idx.add(np.eye(4, dtype=np.float32)[:2], ["a", "b"])
    scores, pos = idx.search_arrays(np.array([[1, 2, 0, 0]], np.float32), 5)
    assert pos.tolist() == [[1, 0]] and scores[0].tolist() == [2.0, 1.0]
    assert [h.id for h in idx.search(np.array([[1, 2, 0, 0]], np.float32), 5)[0]] == ["b", "a"]
    assert idx.search(np.empty((0, 4), np.float32), 2) == []
    assert idx.search_arrays(np.empty((0, 4), np.float32), 2)[1].shape == (0, 2)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_add_remove_reconstruct(metric: MetricName) -> None:
    x, q = _normal(300, 20)
    idx = ExactIndex(D, metric=metric, db_block=64)
    for start in range(0, 300, 37):  # many small adds (storage grows)
        idx.add(x[start : start + 37], _ids(min(37, 300 - start), start))
    assert len(idx) == 300 and idx.ids == _ids(300) and "v5" in idx
    np.testing.assert_array_equal(idx.reconstruct(["v70", "v3"]), x[[70, 3]])
    gone = [3, 70, 71, 299, 0]
    assert idx.remove([f"v{i}" for i in gone] + ["v3"]) == 5
    keep = [i for i in range(300) if i not in gone]
    assert len(idx) == 295 and "v3" not in idx and idx.ids == [f"v{i}" for i in keep]
    np.testing.assert_array_equal(idx.reconstruct(["v72", "v298"]), x[[72, 298]])
    _, pos = idx.search_arrays(q, 10)
    np.testing.assert_array_equal(pos, _truth(x[keep], q, 10, metric))
    with pytest.raises(KeyError, match="v3"):
        idx.remove(["v3", "v4"])
    assert "v4" in idx  # a failed remove removes nothing
    assert idx.remove(["v3", "v4"], missing_ok=True) == 1
    with pytest.raises(KeyError, match="nope"):
        idx.reconstruct(["nope"])
    idx.add(x[:1], ["v0"])  # a removed id can be added again
    assert idx.ids[-1] == "v0" and idx.search(x[:1], 1)[0][0].id == "v0"
    # removing almost everything releases storage and keeps working
    idx.remove(idx.ids[:-2])
    assert len(idx) == 2 and idx.vectors.shape == (2, D)
    assert [h.id for h in idx.search(x[:1], 5)[0]][0] == "v0"


def test_float16_reconstruct_is_close() -> None:
    x, _ = _normal(50, 1)
    idx = _filled(ExactIndex(D, dtype="float16"), x)
    got = idx.reconstruct(["v1", "v2"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x[[1, 2]], atol=1e-3)


def test_input_errors() -> None:
    idx = ExactIndex(8)
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(2, 4\)"):
        idx.add(np.zeros((2, 4), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(8,\)"):
        idx.add(np.zeros(8, np.float32), ["a"])
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        idx.add(np.zeros((2, 8), np.float32), ["a"])
    with pytest.raises(ValueError, match="duplicate id 'b' within the batch"):
        idx.add(np.zeros((4, 8), np.float32), ["a", "b", "b", "a"])
    with pytest.raises(ValueError, match="non-empty strings"):
        idx.add(np.zeros((1, 8), np.float32), [""])
    with pytest.raises(ValueError, match="non-empty strings"):
        idx.add(np.zeros((1, 8), np.float32), [3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one string"):
        idx.add(np.zeros((1, 8), np.float32), "a")
    with pytest.raises(TypeError, match="float array"):
        idx.add(np.array([["x"] * 8]), ["a"])
    assert len(idx) == 0
    idx.add(np.ones((2, 8), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="duplicate id 'b': it is already in the index"):
        idx.add(np.ones((2, 8), np.float32), ["c", "b"])
    assert idx.ids == ["a", "b"]
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or infinite.*row 1"):
            idx.add(np.array([[1] * 8, [bad] * 8], np.float32), ["n", "m"])
        with pytest.raises(ValueError, match="queries contain NaN"):
            idx.search(np.full((1, 8), bad, np.float32), 1)
    bad_ks: tuple[Any, ...] = (0, -3, 1.5, True)
    for k in bad_ks:
        with pytest.raises(ValueError, match="k must be a positive int"):
            idx.search(np.ones((1, 8), np.float32), k)
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 8\), got \(1, 3\)"):
        idx.search(np.ones((1, 3), np.float32), 1)
    with pytest.raises(ValueError, match="dim"):
        ExactIndex(0)
    with pytest.raises(ValueError, match="dtype"):
        ExactIndex(4, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric"):
        ExactIndex(4, metric="cos")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="db_block"):
        ExactIndex(4, db_block=0)
    with pytest.raises(ValueError, match="beyond float16"):
        ExactIndex(2, dtype="float16").add(np.array([[1e6, 0]], np.float32), ["big"])


def test_indexes_satisfy_the_index_protocol() -> None:
    assert isinstance(ExactIndex(4), Index)
    assert isinstance(FaissIndex(4, "Flat"), Index)


# -------------------------------------------------------------------------- faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_flat_and_full_probe_ivf_are_exact(metric: MetricName) -> None:
    x, q = _normal(2000, 50)
    truth = _truth(x, q, 10, metric)
    for factory, nprobe in (("Flat", None), ("IVF16,Flat", 16)):
        idx = _filled(FaissIndex(D, factory, metric=metric, nprobe=nprobe), x)
        scores, pos = idx.search_arrays(q, 10)
        np.testing.assert_array_equal(pos, truth)
        np.testing.assert_allclose(
            scores, np.take_along_axis(_scores(x, q, metric), truth, 1), atol=1e-4
        )


def test_faiss_ivf_and_hnsw_recall() -> None:
    x, q = _synthetic(2000, 100)
    truth = _truth(x, q, 10)
    ivf = _filled(FaissIndex(D, "IVF32,Flat", nprobe=1), x)
    low = _recall(ivf.search_arrays(q, 10)[1], truth)
    ivf.set_search_params(nprobe=12)
    assert ivf.nprobe == 12
    high = _recall(ivf.search_arrays(q, 10)[1], truth)
    assert high >= 0.9 and high > low, (low, high)
    hnsw = _filled(FaissIndex(D, "HNSW16", ef_search=64), x)
    assert _recall(hnsw.search_arrays(q, 10)[1], truth) >= 0.9
    pq = _filled(FaissIndex(D, "IVF16,PQ8x4", nprobe=16), x)
    assert _recall(pq.search_arrays(q, 10)[1], truth) >= 0.4


def test_faiss_labels_and_id_map() -> None:
    x, _ = _normal(300, 1)
    hnsw = _filled(FaissIndex(D, "HNSW16"), x)
    ivf = _filled(FaissIndex(D, "IVF4,Flat"), x)
    assert isinstance(hnsw.faiss_index, faiss.IndexIDMap2)  # HNSW has no add_with_ids
    assert isinstance(faiss.downcast_index(ivf.faiss_index), faiss.IndexIVF)
    for idx in (hnsw, ivf):
        np.testing.assert_array_equal(idx.labels_of(["v5", "v0"]), [5, 0])
        idx.remove(["v1", "v2"])
        idx.add(x[:1] * 0.5, ["new"])
        np.testing.assert_array_equal(idx.labels_of(["v5", "new"]), [5, 300])
        assert idx.search(x[7:8], 1)[0][0].id == "v7"


def test_faiss_remove_with_remove_ids() -> None:
    x, q = _normal(500, 30)
    for factory in ("Flat", "IVF8,Flat", "PQ4x4"):
        idx = _filled(FaissIndex(D, factory, nprobe=8 if "IVF" in factory else None), x)
        assert idx.remove(["v0", "v10", "v11"]) == 3
        assert idx.n_tombstones == 0 and idx.faiss_index.ntotal == 497
        hits = idx.search(x[[0, 10]], 5)
        assert all(h.id not in {"v0", "v10", "v11"} for row in hits for h in row)
        if factory != "PQ4x4":
            keep = [i for i in range(500) if i not in (0, 10, 11)]
            _, pos = idx.search_arrays(q, 5)
            assert [[idx.ids[p] for p in r] for r in pos] == [
                [f"v{keep[p]}" for p in r] for r in _truth(x[keep], q, 5)
            ]


def test_faiss_hnsw_tombstones_and_compact() -> None:
    x, q = _normal(400, 20)
    idx = _filled(FaissIndex(D, "HNSW16", ef_search=100), x)
    removed = [f"v{i}" for i in range(0, 40, 2)]
    assert idx.remove(removed) == 20
    assert idx.n_tombstones == 20 and len(idx) == 380 and idx.faiss_index.ntotal == 400
    hits = idx.search(x[:40], 10)
    assert all(len(row) == 10 for row in hits)
    assert not {h.id for row in hits for h in row} & set(removed)
    keep = [i for i in range(400) if f"v{i}" not in removed]
    _, pos = idx.search_arrays(q, 10)
    assert _recall(pos, _truth(x[keep], q, 10)) >= 0.95
    # k beyond the live count: at most the live items, never a tombstone
    wide = idx.search(q[:1], 400)[0]
    assert 300 <= len(wide) <= 380 and not {h.id for h in wide} & set(removed)
    before = idx.search_arrays(q, 10)
    np.testing.assert_array_equal(idx.reconstruct(["v1"]), x[[1]])
    idx.compact()
    assert idx.n_tombstones == 0 and idx.faiss_index.ntotal == 380 and len(idx) == 380
    assert idx.ef_search == 100
    after = idx.search_arrays(q, 10)
    assert _recall(after[1], before[1]) >= 0.95
    assert idx.search(x[21:22], 1)[0][0].id == "v21"
    np.testing.assert_array_equal(idx.labels_of(["v21"]), [21])


def test_faiss_training_needs_enough_vectors() -> None:
    x, _ = _normal(100, 1)
    idx = FaissIndex(D, "IVF64,Flat")
    assert idx.needs_training
    with pytest.raises(ValueError, match=r"at least 64 vectors .*nlist=64.* got 20"):
        idx.add(x[:20], _ids(20))
    assert len(idx) == 0 and idx.needs_training
    idx.add(x, _ids(100))
    assert not idx.needs_training and len(idx) == 100
    with pytest.raises(ValueError, match=r"at least 256 vectors .*PQ centroid"):
        FaissIndex(D, "PQ8").add(x, _ids(100))
    small = FaissIndex(D, "IVF4,Flat", train_size=50)
    small.add(x, _ids(100))
    assert len(small) == 100 and small.search(x[:1], 1)[0][0].id == "v0"


def test_faiss_bad_parameters() -> None:
    with pytest.raises(ValueError, match="invalid FAISS factory string 'NotAnIndex'"):
        FaissIndex(D, "NotAnIndex")
    with pytest.raises(ValueError, match="nprobe applies to IVF indexes only"):
        FaissIndex(D, "HNSW16", nprobe=4)
    with pytest.raises(ValueError, match="ef_search applies to HNSW indexes only"):
        FaissIndex(D, "IVF4,Flat", ef_search=4)
    with pytest.raises(ValueError, match="nprobe must be a positive int"):
        FaissIndex(D, "IVF4,Flat", nprobe=0)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        FaissIndex(D, "Flat").add(np.zeros((2, 3), np.float32), ["a", "b"])


# ------------------------------------------------------------------- persistence
SAVE_CASES = [
    ("exact", {}),
    ("exact-f16-l2", {"dtype": "float16", "metric": "l2"}),
    ("Flat", {}),
    ("IVF16,Flat", {"nprobe": 4}),
    ("HNSW16", {"ef_search": 40}),
    ("IVF16,PQ8x4", {"nprobe": 8}),
    ("PQ8x4", {}),
]


def _make(name: str, kw: dict[str, Any], model: str = "enc-a") -> BaseIndex:
    if name.startswith("exact"):
        return ExactIndex(D, model=model, **kw)
    return FaissIndex(D, name, model=model, **kw)


@pytest.mark.parametrize(("name", "kw"), SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_save_load_round_trip(name: str, kw: dict[str, Any], tmp_path: Path) -> None:
    x, q = _normal(2000, 40)
    idx = _filled(_make(name, kw), x)
    idx.remove(["v0", "v5", "v1999"])  # HNSW: tombstones travel with the index
    idx.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx", expected_model="enc-a", expected_dim=D)
    assert type(loaded) is type(idx) and loaded.ids == idx.ids and len(loaded) == 1997
    assert loaded.metric == idx.metric and loaded.model == "enc-a"
    sa, pa = idx.search_arrays(q, 10)
    sb, pb = loaded.search_arrays(q, 10)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(sa, sb)
    if isinstance(idx, FaissIndex):
        assert isinstance(loaded, FaissIndex)
        assert (loaded.nprobe, loaded.ef_search) == (idx.nprobe, idx.ef_search)
        assert loaded.n_tombstones == idx.n_tombstones
    else:
        assert isinstance(idx, ExactIndex) and isinstance(loaded, ExactIndex)
        assert loaded.dtype == idx.dtype
    manifest = json.loads((tmp_path / "idx" / MANIFEST_NAME).read_text())
    assert manifest["kind"] == idx.kind and manifest["count"] == 1997 and manifest["dim"] == D
    assert {f["name"] for f in manifest["files"]} >= {"ids.json", "labels.npy"}
    # the loaded index keeps working: new labels do not collide with old ones
    loaded.add(x[:1], ["again"])
    loaded.remove(["v7"])
    assert "again" in loaded and "v7" not in loaded
    assert loaded.search(x[:1], 1)[0][0].id == "again"
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind


def test_class_load_checks_the_kind(tmp_path: Path) -> None:
    x, _ = _normal(10, 1)
    _filled(ExactIndex(D), x).save(tmp_path / "e")
    assert isinstance(ExactIndex.load(tmp_path / "e"), ExactIndex)
    with pytest.raises(TypeError, match="holds a .exact. index, not a FaissIndex"):
        FaissIndex.load(tmp_path / "e")


@pytest.mark.parametrize("name", ["exact", "HNSW16"])
def test_load_refuses_another_model_or_dim(name: str, tmp_path: Path) -> None:
    x, _ = _normal(50, 1)
    _filled(_make(name, {}), x).save(tmp_path / "i")
    with pytest.raises(IndexMismatchError, match=r"'enc-a' \(dim 32\).*'enc-b' \(dim 64\)"):
        load_index(tmp_path / "i", expected_model="enc-b", expected_dim=64)
    with pytest.raises(IndexMismatchError, match=r"'enc-a' \(dim 32\).*'enc-b'"):
        load_index(tmp_path / "i", expected_model="enc-b", expected_dim=32)
    with pytest.raises(IndexMismatchError, match=r"'enc-a' \(dim 32\).*dim 16"):
        load_index(tmp_path / "i", expected_dim=16)
    with pytest.raises(ValueError, match="rebuild the index"):
        load_index(tmp_path / "i", expected_model="enc-b")
    assert len(load_index(tmp_path / "i", expected_model="enc-a", expected_dim=32)) == 50


def test_index_without_model_name_loads_for_any_model(tmp_path: Path) -> None:
    x, _ = _normal(5, 1)
    _filled(ExactIndex(D), x).save(tmp_path / "i")
    assert len(load_index(tmp_path / "i", expected_model="enc-b", expected_dim=D)) == 5


@pytest.mark.parametrize(
    ("name", "fname"),
    [
        ("exact", "vectors.npy"),
        ("IVF4,Flat", "index.faiss"),
        ("HNSW16", "index.faiss"),
        ("exact", "ids.json"),
        ("Flat", "labels.npy"),
    ],
)
def test_truncated_and_missing_files(name: str, fname: str, tmp_path: Path) -> None:
    x, _ = _normal(200, 1)
    _filled(_make(name, {}), x).save(tmp_path / "i")
    f = tmp_path / "i" / fname
    f.write_bytes(f.read_bytes()[:-50])
    with pytest.raises(ValueError, match=f"{fname}.*truncated"):
        load_index(tmp_path / "i")
    f.unlink()
    with pytest.raises(FileNotFoundError, match=fname):
        load_index(tmp_path / "i")


def test_corrupt_faiss_file_of_the_right_size(tmp_path: Path) -> None:
    x, _ = _normal(200, 1)
    _filled(FaissIndex(D, "Flat"), x).save(tmp_path / "i")
    f = tmp_path / "i" / "index.faiss"
    f.write_bytes(b"\0" * f.stat().st_size)
    with pytest.raises(ValueError, match="index.faiss does not match the SHA-256"):
        load_index(tmp_path / "i")
    # A manifest written before checksums: FAISS's own read error is reported.
    mf = tmp_path / "i" / "manifest.json"
    manifest = json.loads(mf.read_text())
    for rec in manifest["files"]:
        rec.pop("sha256")
    mf.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="index.faiss: it is truncated or corrupt"):
        load_index(tmp_path / "i")


def test_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "vectors.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a vistrieve index: it has no manifest.json"):
        load_index(tmp_path / "plain")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a vistrieve index: it is a file"):
        load_index(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_index(tmp_path / "nope")
    (tmp_path / "plain" / MANIFEST_NAME).write_text('{"kind": "exact"}')
    with pytest.raises(ValueError, match="not a vistrieve index manifest.*format_version"):
        load_index(tmp_path / "plain")
    (tmp_path / "plain" / MANIFEST_NAME).write_text('{"kind": "exac')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_index(tmp_path / "plain")


def test_format_version_and_unknown_kind(tmp_path: Path) -> None:
    x, _ = _normal(5, 1)
    _filled(ExactIndex(D), x).save(tmp_path / "i")
    mf = tmp_path / "i" / MANIFEST_NAME
    manifest = json.loads(mf.read_text())
    mf.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        load_index(tmp_path / "i")
    mf.write_text(json.dumps({**manifest, "kind": "mystery"}))
    with pytest.raises(ValueError, match="unknown index kind 'mystery'"):
        load_index(tmp_path / "i")


def test_register_index_kind_extends_load_index(tmp_path: Path) -> None:
    class ScaledIndex(ExactIndex):
        kind = "scaled-test"

    register_index_kind("scaled-test", ScaledIndex)
    try:
        assert "scaled-test" in index_kinds()
        x, q = _normal(30, 3)
        _filled(ScaledIndex(D), x).save(tmp_path / "s")
        loaded = load_index(tmp_path / "s")
        assert type(loaded) is ScaledIndex
        np.testing.assert_array_equal(loaded.search_arrays(q, 3)[1], _truth(x, q, 3))
    finally:
        INDEXES.unregister("scaled-test")
    with pytest.raises(TypeError, match="not a BaseIndex subclass"):
        register_index_kind("bad", dict)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["exact", "HNSW16"])
def test_save_is_atomic(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, q = _normal(300, 10)
    idx = _filled(_make(name, {}), x)
    idx.save(tmp_path / "i")
    before = load_index(tmp_path / "i").search_arrays(q, 5)
    idx.remove(["v1", "v2"])
    idx.add(x[:3] + 1, ["e1", "e2", "e3"])

    def half_then_fail(path: Path) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    if name == "exact":
        real = exact_mod.atomic_save_npy

        def failing_save_npy(path: Path, array: np.ndarray) -> None:
            if Path(path).name == "vectors.npy":
                half_then_fail(path)
            real(path, array)

        monkeypatch.setattr(exact_mod, "atomic_save_npy", failing_save_npy)
    else:
        monkeypatch.setattr(faiss, "write_index", lambda index, path: half_then_fail(path))
    with pytest.raises(OSError, match="disk full"):
        idx.save(tmp_path / "i")
    after = load_index(tmp_path / "i")
    assert len(after) == 300 and after.ids == _ids(300)
    np.testing.assert_array_equal(after.search_arrays(q, 5)[1], before[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i"]


# ---------------------------------------------------------------------- factory
def test_create_index_specs() -> None:
    assert isinstance(create_index("exact", 8), ExactIndex)
    assert create_index("exact:float16", 8).dtype == "float16"  # type: ignore[attr-defined]
    assert isinstance(create_index("faiss:HNSW8", 8), FaissIndex)
    ready = ExactIndex(8)
    assert create_index(ready, 8) is ready
    with pytest.raises(ValueError, match="dim 8"):
        create_index(ready, 16)


def test_atomic_writes_get_ordinary_permissions_even_from_replacing_writers(
    tmp_path: Path,
) -> None:
    import os

    from vistrieve.utils.io import atomic_write

    def replacing_writer(p: Path) -> None:  # writes elsewhere, then replaces the given file
        other = p.with_suffix(".other")
        other.write_bytes(b"x")
        os.chmod(other, 0o600)
        os.replace(other, p)

    atomic_write(tmp_path / "f.bin", replacing_writer)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "f.bin").st_mode & 0o777 == 0o666 & ~umask
