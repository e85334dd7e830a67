"""Exact search through FAISS, the sq8 index and the on-disk IVF-PQ index built from shards."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vistrieve.indexes import (
    INDEXES,
    BF16Index,
    ExactIndex,
    SQ8Index,
    create_index,
    load_index,
)


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """FAISS's OpenMP k-means crawls when the cores are shared; these tests are tiny."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_batch_path_matches_torch_path_and_breaks_ties_by_position(metric: str) -> None:
    x = _unit(500, 16)
    x[300] = x[10]  # duplicates: equal scores at the cut
    x[301] = x[10]
    index = ExactIndex(16, metric=metric)  # type: ignore[arg-type]
    index.add(x, [f"v{i}" for i in range(500)])
    q = np.concatenate([x[10:11], _unit(40, 16, seed=1)])  # > 8 queries: the FAISS path
    s_batch, p_batch = index.search_arrays(q, 2)
    s_torch, p_torch = index._search_torch(q, 2)
    np.testing.assert_array_equal(p_batch, p_torch)
    np.testing.assert_allclose(s_batch, s_torch, rtol=1e-5, atol=1e-5)
    assert p_batch[0].tolist() == [10, 300]  # tie at the cut: the earlier items win


def test_exact_batch_path_clamps_k_to_the_index_size() -> None:
    index = ExactIndex(8)
    index.add(_unit(5, 8), list("abcde"))
    scores, pos = index.search_arrays(_unit(20, 8, seed=2), 7)
    assert pos.shape == scores.shape == (20, 5)
    assert all(sorted(row) == [0, 1, 2, 3, 4] for row in pos.tolist())
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("kind", ["sq8", "bf16"])
def test_sq8_is_registered_and_close_to_exact(kind: str) -> None:
    assert kind in INDEXES
    x, q = _unit(3000, 32), _unit(50, 32, seed=3)
    index = create_index(kind, dim=32)
    assert isinstance(index, SQ8Index) and index.kind == kind
    index.add(x, [str(i) for i in range(3000)])
    for nq in (1, 50):  # one query, a batch
        _, pos = index.search_arrays(q[:nq], 10)
        truth = _brute(x, q[:nq], 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)])
        assert recall >= 0.99
    scores, pos = index.search_arrays(q, 3)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, 1), rtol=1e-5, atol=1e-6)
    assert index.nbytes <= x.nbytes / 2


@pytest.mark.parametrize("cls", [SQ8Index, BF16Index])
def test_sq8_add_remove_save_load_roundtrip(tmp_path, cls: type[SQ8Index]) -> None:
    x = _unit(400, 16)
    index = cls(16, db_block=128, candidates=20)
    index.add(x[:200], [str(i) for i in range(200)])
    index.search_arrays(x[:10], 5)  # packs blocks; later adds must invalidate them
    index.add(x[200:], [str(i) for i in range(200, 400)])
    assert index.search(x[350:351], 1)[0][0].id == "350"
    assert index.remove(["0", "350"]) == 2
    assert index.search(x[351:352], 1)[0][0].id == "351"
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is cls and len(loaded) == 398 and loaded.candidates == 20
    np.testing.assert_allclose(loaded.reconstruct(["5"]), x[5:6])
    assert loaded.search(x[5:6], 1)[0][0].id == "5"
    loaded.add(x[:1], ["new"])  # a loaded (read-only, memory-mapped) index still takes adds
    assert loaded.search(x[:1], 1)[0][0].id == "new"
    loaded.remove(["new"])
    assert len(loaded) == 398


def test_sq8_rejects_l2_and_truncated_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="metric"):
        SQ8Index(8, metric="l2")
    index = SQ8Index(8)
    index.add(_unit(10, 8), [str(i) for i in range(10)])
    index.save(tmp_path / "i")
    f = tmp_path / "i" / "vectors.npy"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(ValueError):
        load_index(tmp_path / "i")


def _shards(x: np.ndarray, size: int):
    """``(vectors, ids)`` shards of ``size`` rows, ids ``i<row>``."""
    return iter(
        [(x[s : s + size], [f"i{j}" for j in range(s, s + size)]) for s in range(0, len(x), size)]
    )


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow  # about 45 s on 2 shared cores (three FAISS trainings)
def test_ivf_disk_from_shards_is_memory_mapped_and_accurate(tmp_path) -> None:
    from vistrieve.indexes import IVFDiskIndex, ShardedSearch, build_ivf_disk

    x = _clustered(3000, 16)
    shards = [(x[s : s + 500], [f"i{j}" for j in range(s, s + 500)]) for s in range(0, 3000, 500)]
    index = build_ivf_disk(
        iter(shards), tmp_path / "ivf", dim=16, nlist=16, m=4, nprobe=8, model="m", train_size=1000
    )
    assert isinstance(index, IVFDiskIndex) and len(index) == 3000
    files = {f.name for f in (tmp_path / "ivf").iterdir()}
    assert {"manifest.json", "index.faiss", "lists.ivfdata", "refine_codes.npy"} <= files
    assert not any(f.startswith(".") for f in (p.name for p in tmp_path.iterdir()))  # no staging
    q = x[:100] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = _brute(x, q, 10)
    _, pos = index.search_arrays(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)])
    assert recall >= 0.9
    reopened = load_index(tmp_path / "ivf", expected_model="m")
    assert reopened.search(q[:1], 1)[0][0].id == index.search(q[:1], 1)[0][0].id
    with pytest.raises(ValueError, match="read-only"):
        reopened.add(x[:1], ["new"])
    reopened.save(tmp_path / "copy")  # re-saving a memory-mapped index copies its lists
    want = reopened.search_arrays(q, 10)
    del reopened
    shutil.rmtree(tmp_path / "ivf")  # the copy must not read the original's files
    copy = load_index(tmp_path / "copy")
    assert len(copy) == 3000
    got_copy = copy.search_arrays(q, 10)
    np.testing.assert_array_equal(got_copy[1], want[1])
    np.testing.assert_allclose(got_copy[0], want[0])

    # Two shard indexes searched as one: the same top-k as one index over everything.
    build_ivf_disk(iter(shards[:3]), tmp_path / "a", dim=16, nlist=8, m=4, nprobe=8)
    build_ivf_disk(iter(shards[3:]), tmp_path / "b", dim=16, nlist=8, m=4, nprobe=8)
    merged = ShardedSearch([load_index(tmp_path / "a"), load_index(tmp_path / "b")])
    hits = merged.search(q, 10)
    got = [[int(h.id[1:]) for h in row] for row in hits]
    recall = np.mean([len(set(a_) & set(b_)) / 10 for a_, b_ in zip(got, truth, strict=True)])
    assert recall >= 0.9 and len(merged) == 3000
    assert all(row[i].score >= row[i + 1].score for row in hits for i in range(9))


def test_chunked_npy_copy_from_memory_whole_file_and_partial_maps(tmp_path) -> None:
    from vistrieve.indexes.ivf_disk import _save_npy_chunked

    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (1000, 12), dtype=np.int8)
    raw = tmp_path / "raw.bin"
    a.tofile(raw)
    np.save(tmp_path / "a.npy", a)
    sources = {
        "memory": a,
        "raw map": np.memmap(raw, dtype=np.int8, mode="r", shape=(1000, 12)),
        "npy map": np.load(tmp_path / "a.npy", mmap_mode="r"),
        "slice of a map": np.load(tmp_path / "a.npy", mmap_mode="r")[300:],
    }
    for name, src in sources.items():
        out = tmp_path / f"{name}.npy"
        _save_npy_chunked(out, src, 500, chunk=64)
        np.testing.assert_array_equal(np.load(out), np.asarray(src[:500]), err_msg=name)


def test_ivf_disk_in_memory_add_remove_and_budget_rule(tmp_path) -> None:
    from vistrieve.indexes import choose_ivf_params

    x = _clustered(1000, 16)
    index = create_index("ivf_disk", dim=16, nlist=8, m=4)
    index.add(x, [str(i) for i in range(1000)])
    assert index.remove(["0"]) == 1
    index.save(tmp_path / "i")
    loaded = load_index(tmp_path / "i")
    assert len(loaded) == 999 and loaded.search(x[5:6], 1)[0][0].id == "5"
    p = choose_ivf_params(10_000_000, 256, memory_budget_bytes=4 * 2**30)
    assert p["nlist"] == 16384 and p["m"] == 64 and 16 <= p["nprobe"] <= 256
    assert choose_ivf_params(10_000_000, 256, memory_budget_bytes=2**30)["m"] < 64
    with pytest.raises(ValueError, match="budget"):
        choose_ivf_params(10_000_000, 256, memory_budget_bytes=10**6)


def test_ivf_disk_tuned_for_a_recall_target(tmp_path) -> None:
    from vistrieve.indexes import build_ivf_disk, tune_search

    data = _clustered(3200, 16)
    x, q = data[:3000], data[3000:]  # the last 200 are held out as queries
    index = build_ivf_disk(
        _shards(x, 1000),
        tmp_path / "ivf",
        dim=16,
        nlist=32,
        m=4,
        nprobe=1,
        train_size=2000,
        recall_target=0.95,
        tune_queries=100,
    )
    tuning = index.tuning
    assert tuning is not None and tuning["met"] and tuning["recall"] >= 0.95
    assert (index.nprobe, index.k_factor) == (tuning["nprobe"], tuning["k_factor"]) != (1, 4)
    reopened = load_index(tmp_path / "ivf")
    assert reopened.tuning == tuning and reopened.nprobe == tuning["nprobe"]

    # Held-out queries, truth from a second (numpy) implementation: the choice carries over.
    truth = _brute(x, q, 10)
    _, pos = reopened.search_arrays(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)]) >= 0.9

    # A lower target never needs more work; an unreachable one reports that it was missed.
    low = tune_search(reopened, q, truth, recall_target=0.3, k_factors=(4,))
    assert low["met"]
    assert low["nprobe"] <= tuning["nprobe"] or low["k_factor"] < tuning["k_factor"]
    capped = tune_search(reopened, q, truth, recall_target=1.0, nprobes=[1], k_factors=(1,))
    assert not capped["met"] and (reopened.nprobe, reopened.k_factor) == (1, 1)
    with pytest.raises(ValueError, match="truth must have shape"):
        tune_search(reopened, q, truth[:, :5])
    with pytest.raises(ValueError, match="recall_target"):
        tune_search(reopened, q, truth, recall_target=1.5)


def test_ivf_disk_fast_scan_builds_saves_and_reloads(tmp_path) -> None:
    from vistrieve.indexes import IVFDiskIndex, build_ivf_disk

    data = _clustered(3200, 16)
    x, q = data[:3000], data[3000:]
    index = build_ivf_disk(
        _shards(x, 750),
        tmp_path / "fs",
        dim=16,
        nlist=16,
        m=8,
        nprobe=1,
        train_size=2000,
        recall_target=0.9,
        tune_queries=100,
        fast_scan=True,
    )
    assert isinstance(index, IVFDiskIndex) and index.fast_scan and len(index) == 3000
    assert index.factory == "IVF16,PQ8x4fs"
    files = {f.name for f in (tmp_path / "fs").iterdir()}
    assert "lists.ivfdata" not in files and {"index.faiss", "refine_codes.npy"} <= files
    tuning = index.tuning
    assert tuning is not None and tuning["met"] and tuning["recall"] >= 0.91  # target + margin
    assert tuning["k_factor"] in (16, 64, 256)
    truth = _brute(x, q, 10)
    scores, pos = index.search_arrays(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)]) >= 0.85
    # Re-scored with the 8-bit codes: the scores are the inner products up to quantisation.
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, 1), atol=0.02)
    with pytest.raises(ValueError, match="read-only"):
        index.add(x[:1], ["new"])
    index.save(tmp_path / "copy")
    copy = load_index(tmp_path / "copy")
    np.testing.assert_array_equal(copy.search_arrays(q, 10)[1], pos)

    # Built in memory too; an odd m cannot be packed.
    mem = create_index("ivf_disk", dim=16, nlist=8, m=4, fast_scan=True, nprobe=8, k_factor=16)
    mem.add(x, [str(i) for i in range(3000)])
    assert mem.remove(["0"]) == 1 and mem.search(x[5:6], 1)[0][0].id == "5"
    with pytest.raises(ValueError, match="must be even"):
        create_index("ivf_disk", dim=15, nlist=8, m=5, fast_scan=True)
    with pytest.raises(ValueError, match="odd dim needs fast_scan=False"):
        create_index("ivf_disk", dim=7, fast_scan=True)
    assert create_index("ivf_disk", dim=6, fast_scan=True).m == 2  # the largest even divisor


def test_ivf_budget_rule_counts_fast_scan_lists_in_ram() -> None:
    from vistrieve.indexes import choose_ivf_params

    pq = choose_ivf_params(10_000_000, 256, memory_budget_bytes=4 * 2**30)
    fs = choose_ivf_params(10_000_000, 256, memory_budget_bytes=4 * 2**30, fast_scan=True)
    assert fs["fast_scan"] and pq["m"] == 64 and fs["m"] == 128  # 64 bytes per code each
    assert fs["ram_bytes"] - pq["ram_bytes"] == 10_000_000 * 72  # the lists are in RAM
    assert fs["disk_bytes"] == pq["disk_bytes"]
    # A budget too small for 64-byte codes in RAM: smaller codes, 4-bit ones included.
    small = 10_000_000 * (64 + 8) * 2 - 1
    assert choose_ivf_params(10_000_000, 256, memory_budget_bytes=small, fast_scan=True)["m"] == 64
    assert choose_ivf_params(10_000_000, 256, memory_budget_bytes=small)["m"] == 32
    assert create_index("ivf_disk", dim=256, fast_scan=True).m == 128


def test_score_rows_matches_numpy_for_float_and_int8_rows() -> None:
    from vistrieve.indexes.sq import quantize_rows, score_rows

    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((7, 8)).astype(np.float32)
    pos = rng.integers(0, 50, (7, 5))
    want_ip = np.einsum("qcd,qd->qc", table[pos], q)
    want_l2 = -((table[pos] - q[:, None, :]) ** 2).sum(-1)
    for block in (1, 6, 1000):  # one query per block, a partial block, all at once
        got = score_rows(table, pos, q, rows_per_block=block)
        np.testing.assert_allclose(got, want_ip, rtol=1e-5, atol=1e-5)
        got = score_rows(table, pos, q, metric="l2", rows_per_block=block)
        np.testing.assert_allclose(got, want_l2, rtol=1e-5, atol=1e-4)
    codes, scales = quantize_rows(table)
    approx = codes.astype(np.float32) * scales[:, None]
    got = score_rows(codes, pos, q, scales=scales, metric="l2")
    np.testing.assert_allclose(got, -((approx[pos] - q[:, None, :]) ** 2).sum(-1), atol=1e-4)
    got = score_rows(codes, pos, q, scales=scales)
    np.testing.assert_allclose(got, np.einsum("qcd,qd->qc", approx[pos], q), atol=1e-4)


def test_a_loaded_index_builds_its_id_map_only_when_asked(tmp_path) -> None:
    x = _unit(200, 8)
    index = create_index("exact", dim=8)
    index.add(x, [f"i{j}" for j in range(200)])
    index.save(tmp_path / "e")
    loaded = load_index(tmp_path / "e")
    assert loaded.search(x[3:4], 1)[0][0].id == "i3"
    assert loaded._pos_map is None  # searching needs positions, not the id -> position map
    assert "i7" in loaded and "zz" not in loaded
    assert loaded.remove(["i7"]) == 1 and "i7" not in loaded and "i8" in loaded
    np.testing.assert_array_equal(loaded.labels_of(["i8"]), index.labels_of(["i8"]))


def test_random_read_advice_on_memory_maps_only(tmp_path) -> None:
    import mmap

    from vistrieve.utils.io import advise_random

    np.save(tmp_path / "a.npy", np.arange(4096, dtype=np.int8))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert advise_random(mapped) is hasattr(mmap, "MADV_RANDOM")
    np.testing.assert_array_equal(mapped, np.load(tmp_path / "a.npy"))  # reads unchanged
    assert advise_random(np.zeros(3)) is False  # not a memory map: nothing to advise


def test_score_rows_reads_memory_maps_in_parallel_chunks(tmp_path, monkeypatch) -> None:
    from vistrieve.indexes import sq

    rng = np.random.default_rng(2)
    table = rng.integers(-127, 128, (3000, 16), dtype=np.int8)
    scales = rng.random(3000).astype(np.float32)
    np.save(tmp_path / "t.npy", table)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    rows = rng.integers(0, 3000, 5000)
    np.testing.assert_array_equal(sq.gather_rows(mapped, rows), table[rows])  # from the cache
    np.testing.assert_array_equal(sq.gather_rows(table, rows[:7]), table[rows[:7]])
    monkeypatch.setattr(sq, "_CACHED_S", 0.0)  # every read looks like a disk read: threads
    monkeypatch.setattr(sq, "_reader_pool", None)
    np.testing.assert_array_equal(sq.gather_rows(mapped, rows), table[rows])
    assert sq._reader_pool is not None
    q = rng.standard_normal((40, 16)).astype(np.float32)
    pos = rng.integers(0, 3000, (40, 30))
    want = sq.score_rows(table, pos, q, scales=scales)
    monkeypatch.setattr(sq, "_GATHER_ROWS", 100)  # several gathers, partial last one
    got = sq.score_rows(mapped, pos, q, scales=scales, rows_per_block=64)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_sq8_int8_products_and_float_fallback_rank_alike(monkeypatch) -> None:
    from vistrieve.indexes import sq

    x, q = _unit(3000, 32), _unit(50, 32, seed=1)
    fast = SQ8Index(32, candidates=40)
    fast.add(x, [str(i) for i in range(3000)])
    got_fast = fast.search_arrays(q, 10)
    monkeypatch.setattr(sq, "_int_mm_works", lambda: False)  # a torch without the kernel
    slow = SQ8Index(32, candidates=40)
    slow.add(x, [str(i) for i in range(3000)])
    got_slow = slow.search_arrays(q, 10)
    truth = _brute(x, q, 10)
    for scores, pos in (got_fast, got_slow):
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)]) >= 0.99
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, 1), rtol=1e-5)
    assert fast.nbytes == 3000 * (32 + 4)


@pytest.mark.parametrize("width", [256, 300])  # whole chunks of 64 rows, and a ragged tail
def test_filtered_heap_pushes_keep_exactly_what_plain_heaps_keep(width: int) -> None:
    import faiss
    import torch

    from vistrieve.indexes.sq import push_scores

    rng = np.random.default_rng(5)
    nq, c = 37, 15
    # Scores rounded to one decimal: many ties, which both paths must break alike.
    blocks = [np.round(rng.standard_normal((nq, width)), 1).astype(np.float32) for _ in range(6)]

    def run(filtered: bool) -> tuple[np.ndarray, np.ndarray]:
        vals = np.empty((nq, c), dtype=np.float32)
        ids = np.empty((nq, c), dtype=np.int64)
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = nq, c
        heaps.val, heaps.ids = faiss.swig_ptr(vals), faiss.swig_ptr(ids)
        heaps.heapify()
        for b, block in enumerate(blocks):
            ds = b * width
            for qs in (0, 20):  # two query blocks, as a search splits them
                part = torch.from_numpy(block[qs : qs + 20])
                push_scores(heaps, vals, part, ds, qs, filtered and ds >= c)
        return vals, ids

    plain, filtered = run(False), run(True)
    np.testing.assert_array_equal(filtered[0], plain[0])
    np.testing.assert_array_equal(filtered[1], plain[1])
    # And the heaps hold the true best c of each row (as a set: ties are cut by order).
    allv = np.concatenate(blocks, axis=1)
    np.testing.assert_array_equal(
        np.sort(plain[0], axis=1), np.sort(np.sort(allv, axis=1)[:, -c:], axis=1)
    )


def test_sq8_small_blocks_filter_and_still_match_exact() -> None:
    x, q = _unit(5000, 24), _unit(30, 24, seed=9)
    index = SQ8Index(24, candidates=30, db_block=320, query_block=16)  # many filtered blocks
    index.add(x, [str(i) for i in range(5000)])
    _, pos = index.search_arrays(q, 10)
    truth = _brute(x, q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)]) >= 0.99
