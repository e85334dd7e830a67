"""The Ray engine on an existing multi-node cluster: a real head node and a real worker
node (two raylets, one CPU each) started on this machine with ``ray.cluster_utils``
(about 60 s for the module).

``vistrieve index --engine ray --ray-address ADDR`` runs in a separate process, as a user
runs it against a cluster started with ``ray start``, and spreads the shards over both
nodes; losing the worker node in the middle of a run loses no shard."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from vistrieve.distributed import encode_with_ray, load_shards  # noqa: E402
from vistrieve.encoders import create_encoder  # noqa: E402

N_IMAGES = 12


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """12 small random PNGs in one folder, as (id, path) pairs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cluster-photos")
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(N_IMAGES):
        p = root / f"p{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
        pairs.append((f"p{i:02d}", str(p)))
    return pairs


@pytest.fixture(scope="module")
def reference(images: list[tuple[str, str]]) -> np.ndarray:
    return create_encoder("clip-tiny-test").encode_image([p for _, p in images])


def _start_cluster() -> Any:
    if ray.is_initialized():
        ray.shutdown()
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A fresh two-node cluster per test (a test may remove a node)."""
    c = _start_cluster()
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def test_cli_on_an_existing_two_node_cluster(
    cluster: Any, images: list[tuple[str, str]], reference: np.ndarray, tmp_path: Path
) -> None:
    from vistrieve.retrievers.dense import DenseRetriever

    src = Path(images[0][1]).parent
    out = tmp_path / "idx"
    # Ray Data starts handing out shards as soon as one actor is ready; the tiny test model
    # encodes a shard in milliseconds, so wait for the whole pool to make the spread certain.
    env = {**os.environ, "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}
    cmd = [
        sys.executable,
        "-m",
        "vistrieve.cli",
        "index",
        str(src),
        str(out),
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,
        "--ray-workers",
        "2",
        "--encoder",
        "clip-tiny-test",
        "--chunk-size",
        "3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Both nodes took shards: the pool's two one-CPU actors cannot share one node.
    assert "encoded 4 shards on 2 Ray nodes" in proc.stdout, proc.stdout
    retriever = DenseRetriever.load(out)
    ids = [Path(p).name for _, p in images]  # a folder's ids are its relative paths
    assert list(retriever.image_index.ids) == ids
    np.testing.assert_allclose(retriever.image_index.reconstruct(ids), reference, atol=1e-5)
    # The cluster outlives the run: the driver disconnected without shutting it down.
    assert len([n for n in _alive_nodes(cluster)]) == 2


def _alive_nodes(cluster: Any) -> list[dict[str, Any]]:
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        return [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


def slow_encoder(delay: float) -> Any:
    """A factory (pickled by value into every actor) of the test encoder that takes
    ``delay`` seconds per shard, so that a node can be lost while shards are in flight."""

    def make() -> Any:
        import time as _time

        from vistrieve.encoders import create_encoder as _create

        enc: Any = _create("clip-tiny-test")
        inner = enc.encode_image_tolerant

        def encode(imgs: Any) -> Any:
            _time.sleep(delay)
            return inner(imgs)

        enc.encode_image_tolerant = encode
        return enc

    return make


def test_losing_the_worker_node_mid_run_loses_nothing(
    cluster: Any,
    images: list[tuple[str, str]],
    reference: np.ndarray,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import json
    import logging

    out = tmp_path / "shards"
    worker_node = next(n for n in cluster.list_all_nodes() if not n.head)
    removed = threading.Event()

    def kill_when_busy() -> None:
        # Once the worker node has finished a shard it holds the next one: lose it then.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for f in out.glob("shard-*.json"):
                try:
                    if json.loads(f.read_text()).get("node") == worker_node.node_id:
                        cluster.remove_node(worker_node, allow_graceful=False)
                        removed.set()
                        return
                except ValueError:
                    pass  # read while being replaced
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        killer.start()
        with caplog.at_level(logging.WARNING, logger="vistrieve.distributed.ray_encode"):
            result = encode_with_ray(
                slow_encoder(0.5), images, out, num_workers=2, shard_size=1, progress=False
            )
    finally:
        ray.shutdown()
    killer.join(timeout=60)
    assert removed.is_set(), "the worker node never finished a shard: recovery was not tested"
    assert len(result.shards) == N_IMAGES and result.encoded_shards == N_IMAGES
    assert set(result.nodes) == {cluster.head_node.node_id, worker_node.node_id}
    # The rest of the run happened on the head node, in this call.
    assert "unfinished shards again" in caplog.text
    emb, ids, _ = load_shards(out)
    assert ids == [i for i, _ in images]
    np.testing.assert_allclose(emb, reference, atol=1e-5)
