"""Distributed encoding on a real local Ray runtime (2 CPUs): equal embeddings, crash
recovery, per-shard resume, and ``vistrieve index --engine ray``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from vistrieve.distributed import (  # noqa: E402
    MANIFEST_FILE,
    RayUnavailableError,
    default_shard_size,
    encode_with_ray,
    iter_shards,
    load_shards,
)
from vistrieve.encoders import create_encoder  # noqa: E402

N_IMAGES = 20


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray runtime with 2 worker CPUs for the whole module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """20 small random PNGs and one unreadable file, as (id, path) pairs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(N_IMAGES):
        p = root / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        pairs.append((f"img{i:02d}", str(p)))
    bad = root / "broken.png"
    bad.write_bytes(b"not an image")
    pairs.insert(7, ("broken", str(bad)))
    return pairs


@pytest.fixture(scope="module")
def reference(images: list[tuple[str, str]]) -> np.ndarray:
    """The single-process embeddings of the readable images, in order."""
    encoder = create_encoder("clip-tiny-test")
    return encoder.encode_image([p for i, p in images if i != "broken"])


def readable_ids(images: list[tuple[str, str]]) -> list[str]:
    return [i for i, _ in images if i != "broken"]


@pytest.fixture(scope="module")
def encoded(
    ray_local: None, images: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    """One Ray run over the images in shards of 6 (4 shards), shared by the tests."""
    out = tmp_path_factory.mktemp("ray-shards")
    return out, encode_with_ray("clip-tiny-test", images, out, shard_size=6, progress=False)


def test_embeddings_equal_single_process(
    encoded: tuple[Path, Any], images: list[tuple[str, str]], reference: np.ndarray
) -> None:
    out, result = encoded
    assert len(result.shards) == 4 and result.encoded_shards == 4
    assert [s["id"] for s in result.skipped] == ["broken"]
    assert sorted(p.name for p in out.glob("shard-*.npy")) == [
        f"shard-{n:05d}.npy" for n in range(4)
    ]
    emb, ids, skipped = load_shards(out)
    assert ids == readable_ids(images)
    assert [s["id"] for s in skipped] == ["broken"]
    np.testing.assert_allclose(emb, reference, atol=1e-5)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert [s["shard"] for s in manifest["shards"]] == [0, 1, 2, 3]
    # One local node did all the work, and each shard's record names it.
    assert result.nodes == [ray.get_runtime_context().get_node_id()]
    assert {json.loads((out / f"shard-{n:05d}.json").read_text())["node"] for n in range(4)} == {
        result.nodes[0]
    }
    # One shard at a time (what build_ivf_disk consumes), in the same order.
    parts = list(iter_shards(out))
    assert [len(i) for _, i, _ in parts] == [r["rows"] for r in manifest["shards"]]
    np.testing.assert_array_equal(np.concatenate([e for e, _, _ in parts]), emb)
    assert [x for _, i, _ in parts for x in i] == ids


def _copy_run(encoded: tuple[Path, Any], dest: Path) -> Path:
    import shutil

    shutil.copytree(encoded[0], dest)
    return dest


def test_resume_reencodes_only_unfinished_shards(
    encoded: tuple[Path, Any],
    images: list[tuple[str, str]],
    reference: np.ndarray,
    tmp_path: Path,
) -> None:
    out = _copy_run(encoded, tmp_path / "run")
    # Lose shard 2's record and damage shard 3's array: what an interrupted run leaves.
    (out / "shard-00002.json").unlink()
    np.save(out / "shard-00003.npy", np.zeros((3, 3), dtype=np.float32))
    mtime0 = (out / "shard-00000.npy").stat().st_mtime_ns
    with pytest.raises(ValueError, match="shard-00002.json is missing.*run the encoding again"):
        load_shards(out)
    result = encode_with_ray("clip-tiny-test", images, out, shard_size=6, progress=False)
    assert [s.resumed for s in result.shards] == [True, True, False, False]
    assert (out / "shard-00000.npy").stat().st_mtime_ns == mtime0
    emb, ids, _ = load_shards(out)
    assert ids == readable_ids(images)
    np.testing.assert_allclose(emb, reference, atol=1e-5)


def test_resume_of_a_finished_run_encodes_nothing(
    encoded: tuple[Path, Any], images: list[tuple[str, str]], tmp_path: Path
) -> None:
    out = _copy_run(encoded, tmp_path / "run")
    result = encode_with_ray("clip-tiny-test", images, out, shard_size=6, progress=False)
    assert result.resumed_shards == 4 and result.encoded_shards == 0


@pytest.mark.slow
def test_other_settings_start_over(
    encoded: tuple[Path, Any], images: list[tuple[str, str]], tmp_path: Path
) -> None:
    out = _copy_run(encoded, tmp_path / "run")
    (out / "notes.txt").write_text("kept")
    result = encode_with_ray("clip-tiny-test", images, out, shard_size=11, progress=False)
    assert result.resumed_shards == 0 and len(result.shards) == 2
    assert not (out / "shard-00003.npy").exists()
    assert (out / "notes.txt").read_text() == "kept"


def _crash_once_encoder(victim: str, marker: Path) -> Any:
    """An encoder factory whose worker process dies, once, on the shard with ``victim``."""

    def crash_once_encoder():  # pickled by value into every actor
        import os as _os

        from vistrieve.encoders import create_encoder as _create

        enc = _create("clip-tiny-test")
        inner = enc.encode_image_tolerant

        def encode(imgs):  # type: ignore[no-untyped-def]
            if victim in [str(x) for x in imgs]:
                try:
                    fd = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    _os.close(fd)
                    _os._exit(1)  # the worker process dies mid-shard, once
            return inner(imgs)

        enc.encode_image_tolerant = encode
        return enc

    return crash_once_encoder


def _count_settles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each wait for lost nodes (the real one still runs)."""
    from vistrieve.distributed import ray_encode

    calls: list[int] = []
    real = ray_encode._settle_nodes

    def settle(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(ray_encode, "_settle_nodes", settle)
    return calls


def test_killed_worker_loses_nothing(
    ray_local: None,
    images: list[tuple[str, str]],
    reference: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "crashed-once"
    settles = _count_settles(monkeypatch)
    out = tmp_path / "shards"
    factory = _crash_once_encoder(images[9][1], marker)
    result = encode_with_ray(factory, images, out, shard_size=6, progress=False)
    assert marker.exists(), "the worker never crashed: the test did not test recovery"
    assert len(settles) == 1  # waited for Ray once, before the second pass
    assert len(result.shards) == 4
    emb, ids, _ = load_shards(out)
    assert ids == readable_ids(images)
    np.testing.assert_allclose(emb, reference, atol=1e-5)


def test_a_crash_with_no_retries_left_fails_at_once(
    ray_local: None, images: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "crashed-once"
    settles = _count_settles(monkeypatch)
    factory = _crash_once_encoder(images[1][1], marker)
    with pytest.raises(Exception) as info:
        encode_with_ray(
            factory, images[:6], tmp_path / "o", shard_size=3, max_retries=0, progress=False
        )
    from vistrieve.distributed.ray_encode import _is_cluster_failure

    assert marker.exists() and _is_cluster_failure(info.value)
    assert settles == []  # no pass follows, so nothing to wait for


def test_encoder_errors_fail_without_retrying_the_run(
    ray_local: None,
    images: list[tuple[str, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    def broken_encoder():  # type: ignore[no-untyped-def]
        from vistrieve.encoders import create_encoder as _create

        enc = _create("clip-tiny-test")

        def encode(imgs):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("a bug in the encoder")

        enc.encode_image_tolerant = encode
        return enc

    def unbuildable_encoder():  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("a bug in the encoder's constructor")

    for factory in (broken_encoder, unbuildable_encoder):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vistrieve.distributed.ray_encode"):
            with pytest.raises(Exception, match="a bug in the encoder"):
                encode_with_ray(factory, images[:4], tmp_path / "o", progress=False)
        assert "unfinished shards again" not in caplog.text


def test_cluster_failures_are_told_from_code_errors() -> None:
    import ray.exceptions as rex

    from vistrieve.distributed.ray_encode import _is_cluster_failure

    assert _is_cluster_failure(rex.NodeDiedError("node 1 died"))
    assert _is_cluster_failure(rex.ActorUnavailableError("gone", None))
    try:
        try:
            raise rex.WorkerCrashedError()
        except rex.WorkerCrashedError as inner:
            raise RuntimeError("the dataset failed") from inner
    except RuntimeError as outer:
        assert _is_cluster_failure(outer)
    assert not _is_cluster_failure(ZeroDivisionError("a bug"))
    assert not _is_cluster_failure(ValueError("bad image"))


def test_bad_arguments(images: list[tuple[str, str]], tmp_path: Path) -> None:
    from vistrieve.types import Item

    with pytest.raises(ValueError, match="shard_size"):
        encode_with_ray("clip-tiny-test", images, tmp_path, shard_size=0)
    with pytest.raises(ValueError, match="duplicate item id 'img01'"):
        encode_with_ray("clip-tiny-test", images + [images[1]], tmp_path)
    from PIL import Image

    with pytest.raises(ValueError, match="in-memory image"):
        encode_with_ray("clip-tiny-test", [Item("m", image=Image.new("RGB", (4, 4)))], tmp_path)


def test_default_shard_size() -> None:
    # at least 16 shards, each of 128 to 2048 images
    assert default_shard_size(0) == 128
    assert default_shard_size(1000) == 128  # ceil(1000 / 16) = 63, raised to 128
    assert default_shard_size(8000) == 500
    assert default_shard_size(8001) == 501
    assert default_shard_size(32768) == 2048
    assert default_shard_size(10**9) == 2048
    assert default_shard_size(100, largest=10, smallest=2) == 7
    with pytest.raises(ValueError, match="n_images"):
        default_shard_size(-1)
    with pytest.raises(ValueError, match="smallest <= largest"):
        default_shard_size(10, largest=4, smallest=8)


def test_no_shard_size_uses_the_default(
    ray_local: None, images: list[tuple[str, str]], tmp_path: Path
) -> None:
    result = encode_with_ray("clip-tiny-test", images, tmp_path, progress=False)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["shard_size"] == default_shard_size(len(images)) == 128
    assert manifest["n_shards"] == 1 and len(result.shards) == 1


def test_bad_address_fails_fast(tmp_path: Path) -> None:
    from vistrieve.distributed.ray_encode import check_address

    with pytest.raises(ValueError, match="not HOST:PORT"):
        check_address("nonsense")
    with pytest.raises(RayUnavailableError, match="127.0.0.1:9"):
        check_address("127.0.0.1:9", timeout=2)
    with pytest.raises(RayUnavailableError, match="ray://127.0.0.1:9"):
        check_address("ray://127.0.0.1:9", timeout=2)


# ----------------------------------------------------------------------------- the CLI
def _folder(tmp_path: Path, images: list[tuple[str, str]]) -> Path:
    import shutil

    src = tmp_path / "photos"
    src.mkdir()
    for _, p in images:
        shutil.copy(p, src / Path(p).name)
    return src


def test_cli_index_engine_ray_matches_local_and_searches(
    ray_local: None,
    images: list[tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vistrieve.cli.main import main
    from vistrieve.retrievers.dense import DenseRetriever

    src = _folder(tmp_path, images)
    common = ["--encoder", "clip-tiny-test", "--chunk-size", "5"]
    rc = main(["index", str(src), str(tmp_path / "ray"), "--engine", "ray", *common])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "with ray" in out and "skipped unreadable image" in out and "broken.png" in out
    assert main(["index", str(src), str(tmp_path / "local"), *common]) == 0
    r_ray = DenseRetriever.load(tmp_path / "ray")
    r_local = DenseRetriever.load(tmp_path / "local")
    assert list(r_ray.image_index.ids) == list(r_local.image_index.ids)
    assert list(r_ray.corpus.keys()) == list(r_local.corpus.keys())
    ids = list(r_local.image_index.ids)
    np.testing.assert_allclose(
        r_ray.image_index.reconstruct(ids), r_local.image_index.reconstruct(ids), atol=1e-5
    )
    assert r_ray.build_report is not None and r_local.build_report is not None
    assert r_ray.build_report.skipped == r_local.build_report.skipped
    capsys.readouterr()
    rc = main(["search", str(tmp_path / "ray"), "--image", images[3][1], "-k", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "img03" in out


def test_cli_engine_ray_without_ray(
    monkeypatch: pytest.MonkeyPatch,
    images: list[tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import builtins

    from vistrieve.cli.main import main

    real_import = builtins.__import__

    def no_ray(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    src = _folder(tmp_path, images[:3])
    rc = main(
        ["index", str(src), str(tmp_path / "o"), "--engine", "ray", "--encoder", "clip-tiny-test"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install 'vistrieve[ray]'" in err and "--engine local" in err


def test_cli_bad_ray_address(
    images: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vistrieve.cli.main import main

    src = _folder(tmp_path, images[:3])
    args = [
        "index",
        str(src),
        str(tmp_path / "o"),
        "--engine",
        "ray",
        "--encoder",
        "clip-tiny-test",
    ]
    assert main([*args, "--ray-address", "127.0.0.1:9"]) == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:9'" in capsys.readouterr().err
    assert main([*args, "--ray-address", "no-port"]) == 2
    assert "not HOST:PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--ray-address and --ray-gpus-per-worker need"):
        main(["index", str(src), str(tmp_path / "o"), "--ray-address", "auto"])


def test_ray_extra_declared() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("ray[data]") for d in extras["ray"])
    assert any("ray" in d for d in extras["test"])
