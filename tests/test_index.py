from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vistrieve.retrievers.factory import create_index
from vistrieve.retrievers.index import (
    ExactIndex,
    FaissIndex,
    IndexMismatchError,
    load_index,
)


def _data(n: int = 2000, nq: int = 50, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def _brute(x: np.ndarray, q: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    if metric == "ip":
        s = q @ x.T
    else:
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _ids(n: int) -> list[str]:
    return [f"v{i}" for i in range(n)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_matches_brute_force(metric: str) -> None:
    x, q = _data()
    idx = ExactIndex(32, metric=metric)  # type: ignore[arg-type]
    idx.add(x, _ids(len(x)))
    scores, pos = idx.search_arrays(q, 10)
    np.testing.assert_array_equal(pos, _brute(x, q, 10, metric))
    if metric == "ip":
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, 1), atol=1e-5)
    else:
        d2 = ((q[:, None, :] - x[None, pos[0], :][None]) ** 2).sum(-1)[0, 0]
        np.testing.assert_allclose(scores[0], -d2, atol=1e-4)
    hits = idx.search(q[:2], 3)
    assert [h.id for h in hits[0]] == [f"v{p}" for p in pos[0, :3]]


def test_blocked_equals_unblocked() -> None:
    x, q = _data(500, 37)
    a = ExactIndex(32)
    b = ExactIndex(32, query_block=3, db_block=7)
    a.add(x, _ids(500))
    b.add(x, _ids(500))
    sa, pa = a.search_arrays(q, 15)
    sb, pb = b.search_arrays(q, 15)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_allclose(sa, sb, atol=1e-6)


def test_float16_storage_close_to_float32() -> None:
    x, q = _data()
    a, b = ExactIndex(32), ExactIndex(32, dtype="float16")
    a.add(x, _ids(len(x)))
    b.add(x, _ids(len(x)))
    sa, pa = a.search_arrays(q, 10)
    sb, pb = b.search_arrays(q, 10)
    overlap = np.mean([len(set(r1) & set(r2)) / 10 for r1, r2 in zip(pa, pb, strict=True)])
    assert overlap > 0.97
    np.testing.assert_allclose(sa[:, 0], sb[:, 0], atol=2e-3)


def test_ties_break_towards_earlier_items() -> None:
    idx = ExactIndex(2)
    idx.add(np.array([[1, 0], [1, 0], [0, 1], [1, 0]], np.float32), ["a", "b", "c", "d"])
    assert [h.id for h in idx.search(np.array([[1, 0]], np.float32), 3)[0]] == ["a", "b", "d"]


def test_padding_when_k_exceeds_size() -> None:
    idx = ExactIndex(4)
    assert idx.search(np.ones((2, 4), np.float32), 3) == [[], []]
    idx.add(np.eye(4, dtype=np.float32)[:2], ["a", "b"])
    scores, pos = idx.search_arrays(np.ones((1, 4), np.float32), 5)
    assert pos.tolist() == [[0, 1, -1, -1, -1]] and np.isinf(scores[0, 2:]).all()
    assert len(idx.search(np.ones((1, 4), np.float32), 5)[0]) == 2


def test_add_remove_reconstruct() -> None:
    x, q = _data(100, 5)
    idx = ExactIndex(32)
    idx.add(x[:60], _ids(60))
    idx.add(x[60:], [f"v{i}" for i in range(60, 100)])
    assert len(idx) == 100
    np.testing.assert_allclose(idx.reconstruct(["v70", "v3"]), x[[70, 3]])
    assert idx.remove(["v3", "v70"]) == 2 and len(idx) == 98 and "v3" not in idx
    keep = [i for i in range(100) if i not in (3, 70)]
    _, pos = idx.search_arrays(q, 5)
    expected = _brute(x[keep], q, 5)
    assert [[idx.ids[p] for p in row] for row in pos] == [
        [f"v{keep[p]}" for p in row] for row in expected
    ]
    with pytest.raises(KeyError, match="v3"):
        idx.remove(["v3"])
    assert idx.remove(["v3"], missing_ok=True) == 0


def test_bad_input() -> None:
    idx = ExactIndex(8)
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(2, 4\)"):
        idx.add(np.zeros((2, 4), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        idx.add(np.zeros((2, 8), np.float32), ["a"])
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        idx.add(np.zeros((2, 8), np.float32), ["a", "a"])
    idx.add(np.ones((1, 8), np.float32), ["a"])
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        idx.add(np.ones((1, 8), np.float32), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        idx.add(np.full((1, 8), np.nan, np.float32), ["n"])
    with pytest.raises(ValueError, match="k must be a positive"):
        idx.search(np.ones((1, 8), np.float32), 0)
    with pytest.raises(ValueError, match="queries must have shape"):
        idx.search(np.ones((1, 3), np.float32), 1)
    with pytest.raises(ValueError):
        ExactIndex(0)
    with pytest.raises(ValueError, match="dtype"):
        ExactIndex(4, dtype="int8")  # type: ignore[arg-type]


FACTORIES = ["Flat", "IVF16,Flat", "HNSW16", "IVF16,PQ8"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_faiss_recall_and_round_trip(factory: str, tmp_path: Path) -> None:
    x, q = _data()
    idx = FaissIndex(32, factory, model="m", nprobe=16, ef_search=128)
    idx.add(x, _ids(len(x)))
    _, pos = idx.search_arrays(q, 10)
    truth = _brute(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)])
    assert recall >= (0.99 if factory != "IVF16,PQ8" else 0.4), recall
    idx.remove(["v0", "v1"])
    assert all("v0" not in [h.id for h in row] for row in idx.search(x[:1], 10))
    idx.save(tmp_path / "i")
    loaded = load_index(tmp_path / "i", expected_model="m", expected_dim=32)
    assert isinstance(loaded, FaissIndex) and len(loaded) == len(x) - 2
    a, b = idx.search_arrays(q, 10), loaded.search_arrays(q, 10)
    np.testing.assert_array_equal(a[1], b[1])
    loaded.add(x[:1] * 0.5 + x[1:2] * 0.5, ["new"])
    assert "new" in loaded


def test_faiss_hnsw_tombstones_and_compact() -> None:
    x, _ = _data(300)
    idx = FaissIndex(32, "HNSW16")
    idx.add(x, _ids(300))
    idx.remove([f"v{i}" for i in range(10)])
    assert len(idx._tombstones) == 10
    hits = idx.search(x[:10], 5)
    assert all(h.id not in {f"v{i}" for i in range(10)} for row in hits for h in row)
    assert all(len(row) == 5 for row in hits)
    idx.compact()
    assert not idx._tombstones and len(idx) == 290
    assert idx.search(x[20:21], 1)[0][0].id == "v20"


def test_faiss_training_needs_enough_vectors() -> None:
    x, _ = _data(20)
    idx = FaissIndex(32, "IVF64,Flat")
    assert idx.needs_training
    with pytest.raises(ValueError, match="could not be trained"):
        idx.add(x, _ids(20))
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        FaissIndex(32, "NotAnIndex")


def test_exact_save_load_and_manifest_checks(tmp_path: Path) -> None:
    x, q = _data(300)
    idx = ExactIndex(32, model="enc-a", dtype="float16")
    idx.add(x, _ids(300))
    idx.save(tmp_path / "i")
    loaded = ExactIndex.load(tmp_path / "i", expected_model="enc-a", expected_dim=32)
    np.testing.assert_array_equal(idx.search_arrays(q, 5)[1], loaded.search_arrays(q, 5)[1])
    with pytest.raises(IndexMismatchError, match=r"'enc-a' \(dim 32\).*'enc-b' \(dim 64\)"):
        load_index(tmp_path / "i", expected_model="enc-b", expected_dim=64)
    with pytest.raises(ValueError, match="not a vistrieve index"):
        load_index(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "nope")


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    x, _ = _data(100)
    for kind, fname in (("exact", "vectors.npy"), ("faiss:IVF4,Flat", "index.faiss")):
        d = tmp_path / kind.replace(":", "_").replace(",", "_")
        idx = create_index(kind, 32)
        idx.add(x, _ids(100))
        idx.save(d)
        f = d / fname
        f.write_bytes(f.read_bytes()[:-100])
        with pytest.raises(ValueError, match="truncated"):
            load_index(d)
        f.unlink()
        with pytest.raises(FileNotFoundError, match=fname):
            load_index(d)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, q = _data(100)
    idx = ExactIndex(32)
    idx.add(x, _ids(100))
    idx.save(tmp_path / "i")
    before = load_index(tmp_path / "i").search_arrays(q, 3)
    idx.add(x[:1] + 1, ["extra"])

    def boom(self, directory):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(ExactIndex, "_save_payload", boom)
    with pytest.raises(OSError, match="disk full"):
        idx.save(tmp_path / "i")
    after = load_index(tmp_path / "i")
    assert len(after) == 100
    np.testing.assert_array_equal(after.search_arrays(q, 3)[1], before[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i"]


def test_create_index_specs() -> None:
    assert isinstance(create_index("exact", 8), ExactIndex)
    assert create_index("exact:float16", 8).dtype == "float16"  # type: ignore[attr-defined]
    assert isinstance(create_index("faiss:HNSW8", 8), FaissIndex)
    ready = ExactIndex(8)
    assert create_index(ready, 8) is ready
    with pytest.raises(ValueError, match="dim 8"):
        create_index(ready, 16)
    with pytest.raises(KeyError, match="did you mean 'exact'"):
        create_index("exactt", 8)
    with pytest.raises(ValueError, match="factory string"):
        create_index("faiss", 8)
