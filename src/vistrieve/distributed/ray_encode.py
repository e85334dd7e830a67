"""Encode a corpus's images on a Ray cluster (or a local Ray runtime), in resumable shards.

The images are split, in corpus order, into fixed shards of ``shard_size`` items. Ray Data
maps the shards over a pool of actors (CPU or GPU); each actor builds the encoder once from
its JSON-able spec (:func:`vistrieve.encoders.create_encoder`) and encodes one shard per
call, skipping unreadable images with a record as the local build does
(:func:`vistrieve.retrievers.base.encode_items`). The driver writes each finished shard
atomically, so only the driver needs to reach the output folder; the workers need to read
the image paths (a shared file system on a multi-node cluster) and have vistrieve installed.

Layout of the output folder::

    manifest.json        {"format": "vistrieve-shards", "version", "encoder", "fingerprint",
                          "shard_size", "n_items", "n_shards", "dim",
                          "shards": [{"shard", "file", "sha256", "rows"}, ...]}  (finished)
    shard-00000.npy      float32 (rows, dim): the embeddings of the shard's readable images
    shard-00000.json     {"ids": [...], "skipped": [{"id", "source", "error"}], "stamp",
                          "sha256", "node"}: written after the .npy (``node``: the Ray node
                          that encoded it); its presence marks the shard done

Fault tolerance: a worker that dies (a crash, a lost node) is not restarted; Ray aborts
the run, the driver kills the pool, waits until Ray has declared lost nodes dead, and
starts again over the unfinished shards (up to ``max_retries`` times). An error raised by
the encoder itself (in its constructor or on a batch) is a bug and is raised at once. When
the whole run fails, calling again with ``resume=True`` re-encodes only the shards without
a valid record (the checksum, the row count and the images' sizes and mtimes must match),
so finished work is never lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vistrieve.errors import IntegrityError, VistrieveError
from vistrieve.types import Encoder, Item
from vistrieve.utils.io import atomic_save_npy, atomic_write_json, load_npy, read_json, sha256_file

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SHARD_FORMAT = "vistrieve-shards"
SHARD_VERSION = 1
_SHARD_RE = re.compile(r"^shard-\d{5,}\.(npy|json)$")

EncoderSource = str | Mapping[str, Any] | Callable[[], Encoder]
"""An encoder spec (name or mapping for :func:`~vistrieve.encoders.create_encoder`) or a
picklable zero-argument factory; every worker builds its own encoder from it."""


class RayUnavailableError(VistrieveError, RuntimeError):
    """Ray is not installed, or the Ray cluster named by an address cannot be reached."""


@dataclass
class ShardRecord:
    """One finished shard: its number, rows, checksum and skipped images."""

    shard: int
    rows: int
    sha256: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed: bool = False
    node: str | None = None
    """The id of the Ray node that encoded it (None when unknown)."""

    @property
    def file(self) -> str:
        """The shard's ``.npy`` file name."""
        return shard_name(self.shard) + ".npy"


@dataclass
class RayEncodeResult:
    """What :func:`encode_with_ray` did: the folder, the shards, how many were resumed."""

    directory: Path
    encoder: str
    n_items: int
    dim: int | None
    shards: list[ShardRecord]

    @property
    def n_encoded(self) -> int:
        """Images encoded (rows over all shards)."""
        return sum(s.rows for s in self.shards)

    @property
    def resumed_shards(self) -> int:
        """Shards reused from an earlier run."""
        return sum(s.resumed for s in self.shards)

    @property
    def encoded_shards(self) -> int:
        """Shards encoded by this run."""
        return len(self.shards) - self.resumed_shards

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Records (``id``, ``source``, ``error``) of unreadable images, in corpus order."""
        return [r for s in self.shards for r in s.skipped]

    @property
    def nodes(self) -> list[str]:
        """The Ray node ids that encoded this run's shards (resumed shards excluded)."""
        return sorted({s.node for s in self.shards if not s.resumed and s.node is not None})


def shard_name(n: int) -> str:
    """The file stem of shard ``n`` (``shard-00042``)."""
    return f"shard-{n:05d}"


# ----------------------------------------------------------------------------- ray access
def import_ray() -> Any:
    """Import Ray (with Ray Data), or say how to install it.

    Raises:
        RayUnavailableError: Ray is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailableError(
            f"the Ray engine needs Ray Data, which is not installed ({exc}); install it with "
            "`pip install 'vistrieve[ray]'`, or use the local engine (--engine local)"
        ) from exc
    return ray


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Check that a Ray address is well-formed and that something listens there, so that a
    wrong address fails at once instead of after Ray's minute of retries.

    ``None`` (start a local runtime) and ``"auto"`` (the cluster started on this machine by
    ``ray start --head``; Ray itself reports when there is none) are not probed.

    Raises:
        ValueError: the address is not ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``.
        RayUnavailableError: nothing answers at ``HOST:PORT``.
    """
    if address is None or address in ("auto", "local"):
        return
    hostport = address[len("ray://") :] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto; give the "
            "address `ray start --head` printed (e.g. 10.0.0.1:6379 or ray://10.0.0.1:10001)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
            "`ray start --head` and pass the address it prints, or leave the address out "
            "to run on a local Ray runtime"
        ) from exc


@contextmanager
def ray_runtime(address: str | None = None) -> Iterator[Any]:
    """Use the Ray runtime this process is already connected to, or connect to
    ``address`` (``None``: start a local one) and shut it down afterwards. The address is
    checked (:func:`check_address`) in either case.

    Raises:
        RayUnavailableError: Ray is missing or the cluster cannot be reached.
    """
    check_address(address)
    ray = import_ray()
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray is already initialised; ignoring address %r", address)
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = (
            "start a cluster on this machine first (`ray start --head`), or leave the "
            "address out to run on a local Ray runtime"
            if address == "auto"
            else "check the address (`ray status` on the head node prints it)"
            if address
            else "check that Ray can start here (`ray start --head` shows why it cannot)"
        )
        raise RayUnavailableError(
            f"cannot connect to Ray at {address or 'a new local runtime'!r}: {exc}; {hint}"
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- workers
def _make_encoder(source: EncoderSource) -> Encoder:
    if isinstance(source, (str, Mapping)):
        from vistrieve.encoders import create_encoder

        return create_encoder(source)
    return source()


class ShardEncoder:
    """The actor of the pool: builds the encoder once, then encodes one shard per call.

    Args:
        encoder: The encoder spec or factory.
        max_image_pixels: Skip images declaring more pixels (None: no limit of our own).
        registry: An :class:`ActorRegistry` actor to announce this actor to, so that the
            driver can end the pool when the run is over.
    """

    def __init__(
        self,
        encoder: EncoderSource,
        max_image_pixels: int | None = None,
        registry: Any = None,
    ) -> None:
        if registry is not None:
            import ray

            registry.add.remote(ray.get_runtime_context().current_actor)
        self.encoder = _make_encoder(encoder)
        self.max_image_pixels = max_image_pixels

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Encode the shards of a Ray Data batch (columns ``shard`` and ``items``, a JSON list
        of ``[id, path]``); returns the embeddings as bytes with their ids and skips."""
        import ray

        from vistrieve.retrievers.base import encode_items

        node = ray.get_runtime_context().get_node_id()
        out: dict[str, list[Any]] = {
            k: [] for k in ("shard", "rows", "dim", "emb", "ids", "skipped", "node")
        }
        for shard, payload in zip(batch["shard"], batch["items"], strict=True):
            items = [Item(str(i), image=str(p)) for i, p in json.loads(payload)]
            emb, ids, skipped = encode_items(self.encoder, items, self.max_image_pixels)
            emb = np.ascontiguousarray(emb, dtype=np.float32).reshape(len(ids), self.encoder.dim)
            out["shard"].append(int(shard))
            out["rows"].append(len(ids))
            out["dim"].append(int(self.encoder.dim))
            out["emb"].append(emb.tobytes())
            out["ids"].append(json.dumps(ids))
            out["skipped"].append(json.dumps(skipped))
            out["node"].append(node)
        ints = ("shard", "rows", "dim")
        return {
            k: np.asarray(v, dtype=np.int64) if k in ints else np.asarray(v, dtype=object)
            for k, v in out.items()
        }


# ----------------------------------------------------------------------------- driver
def _pairs(items: Sequence[Item] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for it in items:
        if isinstance(it, Item):
            if it.image is None:
                continue  # caption-only items have nothing to encode, as in a local build
            if it.uri is None:
                raise ValueError(
                    f"item {it.id!r} holds an in-memory image; the Ray engine encodes image "
                    "files only: save the image to a file, or build with the local engine"
                )
            pair = (it.id, it.uri)
        else:
            pair = (str(it[0]), os.fspath(it[1]))
        if pair[0] in seen:
            raise ValueError(f"duplicate item id {pair[0]!r}; ids must be unique")
        seen.add(pair[0])
        pairs.append(pair)
    return pairs


def _encoder_key(encoder: EncoderSource) -> Any:
    """What identifies the encoder in the manifest: its spec without runtime options."""
    if isinstance(encoder, str):
        return {"name": encoder}
    if isinstance(encoder, Mapping):
        from vistrieve.encoders import _RUNTIME_KEYS

        return {k: v for k, v in encoder.items() if k not in _RUNTIME_KEYS}
    return {"factory": f"{encoder.__module__}.{getattr(encoder, '__qualname__', encoder)}"}


def _fingerprint(key: Any, shard_size: int, pairs: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    h.update(f"\0{shard_size}".encode())
    for i, p in pairs:
        h.update(b"\0" + i.encode("utf-8", "surrogateescape"))
        h.update(b"\1" + p.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _stamp(shard: Sequence[tuple[str, str]]) -> str:
    from vistrieve.retrievers.base import chunk_stamp

    return chunk_stamp([Item(i, image=p) for i, p in shard])


def _clear_shards(directory: Path) -> None:
    """Delete this module's files in ``directory`` (never anything else)."""
    for p in directory.iterdir():
        if p.is_file() and (p.name == MANIFEST_FILE or _SHARD_RE.match(p.name)):
            p.unlink()


def _valid_shard(directory: Path, n: int, shard: Sequence[tuple[str, str]]) -> ShardRecord | None:
    """The record of a finished shard ``n`` when its files are intact and its images
    unchanged; None when it must be encoded (again)."""
    npy = directory / (shard_name(n) + ".npy")
    info_file = directory / (shard_name(n) + ".json")
    if not npy.is_file() or not info_file.is_file():
        return None
    try:
        info = read_json(info_file)
        if info.get("stamp") != _stamp(shard):
            raise ValueError("its images changed since it was encoded")
        if sha256_file(npy) != info.get("sha256"):
            raise ValueError("its checksum does not match (damaged file)")
        ids = list(info["ids"])
        if not set(ids) <= {i for i, _ in shard}:
            raise ValueError("it holds ids of another shard")
        emb = load_npy(npy)
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise ValueError(f"its array has shape {emb.shape} for {len(ids)} ids")
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        logger.warning("re-encoding shard %s: %s", npy, exc)
        return None
    node = info.get("node")
    return ShardRecord(
        n,
        len(ids),
        str(info["sha256"]),
        list(info["skipped"]),
        resumed=True,
        node=str(node) if node is not None else None,
    )


def _write_manifest(
    directory: Path, base: dict[str, Any], done: Mapping[int, ShardRecord], dim: int | None
) -> None:
    atomic_write_json(
        directory / MANIFEST_FILE,
        {
            **base,
            "dim": dim,
            "shards": [
                {"shard": r.shard, "file": r.file, "sha256": r.sha256, "rows": r.rows}
                for r in sorted(done.values(), key=lambda r: r.shard)
            ],
        },
    )


MIN_SHARDS = 16
"""Shards :func:`default_shard_size` aims for, so that every actor of a pool gets work."""


def default_shard_size(n_images: int, *, largest: int = 2048, smallest: int = 128) -> int:
    """Images per shard when none is given: at least :data:`MIN_SHARDS` shards of
    ``smallest`` to ``largest`` images each.

    A folder of 1,000 images in shards of 2,048 would be one shard, encoded by one actor
    while the others wait; 16 shards of 63 would spend more time on per-shard overhead
    than on encoding. The size depends on the number of images alone (not on the number
    of workers), so a run resumed with another pool keeps its shards.

    Raises:
        ValueError: ``n_images`` is negative or the bounds are not ``0 < smallest <= largest``.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    if not 0 < smallest <= largest:
        raise ValueError(f"need 0 < smallest <= largest, got {smallest} and {largest}")
    return min(largest, max(smallest, -(-n_images // MIN_SHARDS)))


def encode_with_ray(
    encoder: EncoderSource,
    items: Sequence[Item] | Sequence[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    num_workers: int = 2,
    shard_size: int | None = None,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    resume: bool = True,
    progress: bool = True,
    max_image_pixels: int | None = None,
    max_retries: int = 3,
) -> RayEncodeResult:
    """Encode the images of ``items`` on Ray into shards of embeddings in ``out_dir``.

    Runs on the Ray runtime this process is connected to, else on ``address`` (a cluster
    started with ``ray start --head``: ``"auto"``, ``HOST:PORT`` or ``ray://HOST:10001``),
    else on a new local runtime that is shut down afterwards.

    Args:
        encoder: Encoder spec (``"clip-tiny-test"``, ``{"name": "bridge-lite1", "device":
            "cuda"}`` ...) or a picklable zero-argument factory; each worker builds one.
        items: Corpus items (those without an image are left out; in-memory images are
            refused) or ``(id, image path)`` pairs, in the order the shards follow.
        out_dir: Folder of the shards and ``manifest.json`` (created; only this module's
            files in it are ever deleted).
        address: Ray cluster address; None starts a local runtime.
        num_workers: Actors in the pool (each holds one encoder).
        shard_size: Images per shard, the unit of work and of resume; None picks
            :func:`default_shard_size` of the number of images.
        num_cpus_per_worker: CPUs Ray reserves per actor.
        num_gpus_per_worker: GPUs per actor (fractions share a GPU); give the encoder
            ``device="cuda"`` with it.
        resume: Reuse the valid shards of an earlier run with the same encoder, items and
            shard size; False encodes everything again.
        progress: Show a progress bar over the shards.
        max_image_pixels: Skip (and record) images declaring more pixels.
        max_retries: How many times a run aborted by a dead worker or a lost node starts
            again over the unfinished shards before the error is raised (a later call
            with ``resume=True`` still goes on).

    Returns:
        The shards, in order, with what was resumed and what was skipped.

    Raises:
        ValueError: a bad argument, a duplicate id, or an in-memory image.
        RayUnavailableError: Ray is missing or the cluster cannot be reached.
    """
    for name, value in (("num_workers", num_workers), ("shard_size", shard_size)):
        if value is not None and int(value) <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if num_cpus_per_worker < 0 or num_gpus_per_worker < 0 or max_retries < 0:
        raise ValueError("num_cpus_per_worker, num_gpus_per_worker and max_retries must be >= 0")
    if max_image_pixels is not None and max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
    pairs = _pairs(items)
    if shard_size is None:
        shard_size = default_shard_size(len(pairs))
    shards = [pairs[i : i + shard_size] for i in range(0, len(pairs), shard_size)]
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    key = _encoder_key(encoder)
    base = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "encoder": key,
        "fingerprint": _fingerprint(key, shard_size, pairs),
        "shard_size": shard_size,
        "n_items": len(pairs),
        "n_shards": len(shards),
    }
    manifest_file = directory / MANIFEST_FILE
    old: Any = None
    if manifest_file.is_file():
        try:
            old = read_json(manifest_file)
        except ValueError as exc:
            logger.warning("ignoring unreadable %s: %s", manifest_file, exc)
    same = isinstance(old, dict) and all(old.get(k) == v for k, v in base.items())
    done: dict[int, ShardRecord] = {}
    dim: int | None = None
    if resume and same:
        dim = old.get("dim")
        for n, shard in enumerate(shards):
            record = _valid_shard(directory, n, shard)
            if record is not None:
                done[n] = record
    else:
        if resume and old is not None:
            logger.info("shards in %s are for other items or settings; starting over", directory)
        _clear_shards(directory)
    _write_manifest(directory, base, done, dim)
    todo = [n for n in range(len(shards)) if n not in done]
    passes = 0
    while todo:
        try:
            dim = _run(
                encoder,
                shards,
                todo,
                directory,
                base,
                done,
                dim,
                address=address,
                num_workers=num_workers,
                num_cpus=num_cpus_per_worker,
                num_gpus=num_gpus_per_worker,
                progress=progress,
                max_image_pixels=max_image_pixels,
                settle_on_failure=passes < max_retries,
            )
        except Exception as exc:
            # A dead worker or a lost node aborts Ray Data's run; the
            # shards finished so far are on disk, so run again over the others.
            if not _is_cluster_failure(exc) or passes >= max_retries:
                raise
            passes += 1
            left = sum(n not in done for n in todo)
            logger.warning(
                "the Ray run failed (%s: %s); encoding the %d unfinished shards again "
                "(retry %d of %d)",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                left,
                passes,
                max_retries,
            )
        todo = [n for n in range(len(shards)) if n not in done]
    return RayEncodeResult(
        directory=directory,
        encoder=json.dumps(key, sort_keys=True, default=str),
        n_items=len(pairs),
        dim=dim,
        shards=[done[n] for n in range(len(shards))],
    )


def _bound_encoder_class(
    encoder: EncoderSource, max_image_pixels: int | None, registry: Any
) -> type[ShardEncoder]:
    """:class:`ShardEncoder` with its arguments built in.

    Ray Data would put constructor arguments in the object store, where an actor started
    after they are released cannot find them (Ray warns about it on every run); a class
    that carries them is shipped with its definition and starts on any node.
    """

    class BoundShardEncoder(ShardEncoder):
        def __init__(self) -> None:
            super().__init__(encoder, max_image_pixels, registry)

    return BoundShardEncoder


def _is_cluster_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost node, actor, worker or object: a
    failure of the cluster that another pass can get past, not of the encoder's code."""
    try:
        import ray.exceptions as rex
    except ImportError:
        return False
    kinds = tuple(
        k
        for k in (
            getattr(rex, name, None)
            for name in (
                "RayActorError",
                "NodeDiedError",
                "ObjectLostError",
                "WorkerCrashedError",
                "RaySystemError",
            )
        )
        if isinstance(k, type)
    )
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if getattr(cur, "actor_init_failed", False):
            return False  # the encoder's constructor raised: code, not the cluster
        if isinstance(cur, kinds):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _settle_nodes(ray: Any, timeout: float = 120.0) -> None:
    """Wait until Ray knows which nodes are lost, before a run starts again.

    A node that died is still listed as alive until its health checks fail (seconds to
    tens of seconds); an actor placed on it meanwhile dies while starting, which Ray Data
    reports by failing the run without ending its iterator (the run hangs). A zero-CPU
    probe pinned to each listed node either runs (the node is up) or fails once Ray
    declares the node dead, so when all probes are back, the list is right.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_node_probe)
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in ray.nodes()
        if n.get("Alive")
    ]
    deadline = time.monotonic() + timeout
    for ref in refs:
        try:
            ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # a lost node: what the probe is there to find out
            logger.info("node probe failed: %s", str(exc).splitlines()[0] if str(exc) else exc)


def _node_probe() -> bool:
    return True


class ActorRegistry:
    """The handles of one run's pool actors (a zero-CPU Ray actor on the cluster).

    Ray Data releases its actors by dropping its references to them. After a run that
    failed, those references live on in the exception's frames (and in any logging
    handler that keeps records), and live actors of the failed run then hold the
    resources the next run needs; the driver kills the actors itself instead.
    """

    def __init__(self) -> None:
        self.actors: list[Any] = []

    def add(self, actor: Any) -> None:
        """Record one pool actor."""
        self.actors.append(actor)

    def take(self) -> list[Any]:
        """Return the recorded actors and forget them."""
        actors, self.actors = self.actors, []
        return actors


def _start_registry(ray: Any) -> Any:
    """An :class:`ActorRegistry` on the driver's node, so that losing another node cannot
    take the list of actors with it (the driver's own node takes the driver along)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(ActorRegistry).options(scheduling_strategy=here).remote()


def _kill_pool(ray: Any, registry: Any) -> None:
    """Kill the pool actors ``registry`` recorded (without restart), then the registry."""
    try:
        actors = ray.get(registry.take.remote(), timeout=30)
    except Exception as exc:  # the run's result stands; the actors go with the job
        logger.warning("could not list the encoding actors to stop them: %s", exc)
        actors = []
    for actor in [*actors, registry]:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:
            logger.warning("could not stop encoding actor %s: %s", actor, exc)


def _actor_pool(ray: Any, size: int) -> Any:
    """A fixed pool of ``size`` actors that each hold one shard at a time.

    Ray Data's default queues several shards on the first actor that is ready, so a short
    run can finish on one node while the others still load the model, and a lost actor
    takes its whole queue with it; shards are seconds to minutes of work, so the round trip
    to hand out the next one costs nothing.
    """
    try:
        return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)
    except TypeError:  # a Ray without the setting
        return ray.data.ActorPoolStrategy(size=size)


def _run(
    encoder: EncoderSource,
    shards: Sequence[Sequence[tuple[str, str]]],
    todo: Sequence[int],
    directory: Path,
    base: dict[str, Any],
    done: dict[int, ShardRecord],
    dim: int | None,
    *,
    address: str | None,
    num_workers: int,
    num_cpus: float,
    num_gpus: float,
    progress: bool,
    max_image_pixels: int | None,
    settle_on_failure: bool,
) -> int | None:
    """Encode the shards ``todo`` on Ray, writing each as it arrives; returns the dim.

    ``settle_on_failure``: after a cluster failure, wait for Ray to declare lost nodes dead
    (:func:`_settle_nodes`) before raising, because another pass follows; without it the
    error is raised at once.
    """
    from tqdm.auto import tqdm

    with ray_runtime(address) as ray:
        ray_log = logging.getLogger("ray.data")
        log_level = ray_log.level
        if not logger.isEnabledFor(logging.INFO):
            ray_log.setLevel(logging.ERROR)  # Ray Data's per-operator chatter
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts shards
        ds = ray.data.from_items(
            [{"shard": n, "items": json.dumps(list(map(list, shards[n])))} for n in todo],
            override_num_blocks=len(todo),
        )
        registry = _start_registry(ray)
        worker = _bound_encoder_class(encoder, max_image_pixels, registry)
        kwargs: dict[str, Any] = dict(
            batch_size=1,
            batch_format="numpy",
            compute=_actor_pool(ray, min(num_workers, len(todo))),
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        # A dead actor is not restarted: on a lost node its restart waits for resources the
        # live actors hold, and Ray Data counts it against its budget and stops handing out
        # shards, so the run stalls. Without restarts the run fails at once, and
        # encode_with_ray starts again over the unfinished shards. (Ray Data's own default
        # restarts forever, which also hangs on an image that always crashes the worker.)
        retries = {"max_restarts": 0, "max_task_retries": 0}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            try:
                ds = ds.map_batches(worker, **kwargs, **retries)
            except TypeError:  # a Ray without free-form remote arguments
                ds = ds.map_batches(worker, **kwargs)
        bar = tqdm(total=len(todo), desc="encode shards (ray)", unit="shard", disable=not progress)
        try:
            for row in ds.iter_rows():
                n, rows, dim = int(row["shard"]), int(row["rows"]), int(row["dim"])
                emb = np.frombuffer(row["emb"], dtype=np.float32).reshape(rows, dim)
                ids = json.loads(row["ids"])
                skipped = json.loads(row["skipped"])
                node = str(row["node"])
                npy = directory / (shard_name(n) + ".npy")
                atomic_save_npy(npy, emb)
                digest = sha256_file(npy)
                # The record is written last: its presence marks the shard finished.
                atomic_write_json(
                    directory / (shard_name(n) + ".json"),
                    {
                        "ids": ids,
                        "skipped": skipped,
                        "stamp": _stamp(shards[n]),
                        "sha256": digest,
                        "node": node,
                    },
                )
                done[n] = ShardRecord(n, rows, digest, skipped, node=node)
                _write_manifest(directory, base, done, dim)
                bar.update(1)
        except Exception as exc:
            if settle_on_failure and _is_cluster_failure(exc):
                _settle_nodes(ray)
            raise
        finally:
            bar.close()
            ray_log.setLevel(log_level)
            _kill_pool(ray, registry)
    return dim


def iter_shards(
    directory: str | os.PathLike[str], *, dim: int | None = None
) -> Iterator[tuple[np.ndarray, list[str], list[dict[str, str]]]]:
    """Yield the shards of a finished :func:`encode_with_ray` run one at a time, in order,
    each checked against the manifest, so that a consumer holds one shard in memory
    (``build_ivf_disk(((e, i) for e, i, _ in iter_shards(d)), ...)``).

    Args:
        directory: The run's output folder.
        dim: Width expected when the manifest records none.

    Yields:
        ``(embeddings float32 (rows, dim), ids, skip records)`` per shard.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``directory``.
        IntegrityError: the run is unfinished, or a shard is damaged (checksum, shape).
    """
    root = Path(directory)
    manifest_file = root / MANIFEST_FILE
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"{root} holds no {MANIFEST_FILE}; encode into it with encode_with_ray first"
        )
    manifest = read_json(manifest_file)
    if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
        raise IntegrityError(f"{manifest_file} is not a vistrieve shard manifest", manifest_file)
    records = manifest.get("shards", [])
    finished = [r["shard"] for r in records]
    if finished != list(range(int(manifest["n_shards"]))):
        missing = sorted(set(range(int(manifest["n_shards"]))) - set(finished))
        raise IntegrityError(
            f"{root}: {len(missing)} of {manifest['n_shards']} shards are unfinished (first: "
            f"{missing[:5]}); run the encoding again with resume to finish them",
            root,
        )
    width = manifest.get("dim") or dim
    for r in records:
        npy = root / r["file"]
        info_file = root / (shard_name(int(r["shard"])) + ".json")
        for f in (npy, info_file):
            if not f.is_file():
                raise IntegrityError(
                    f"{f} is missing though {MANIFEST_FILE} lists it as finished; the shard "
                    "is damaged: run the encoding again with resume to redo it",
                    f,
                )
        if sha256_file(npy) != r["sha256"]:
            raise IntegrityError(
                f"{npy}: checksum does not match {MANIFEST_FILE}; the shard is damaged: "
                "delete it and run the encoding again with resume",
                npy,
            )
        info = read_json(info_file)
        emb = load_npy(npy)
        if emb.shape != (len(info["ids"]), width):
            raise IntegrityError(
                f"{npy}: shape {emb.shape} does not match its {len(info['ids'])} ids and "
                f"width {width}",
                npy,
            )
        yield emb.astype(np.float32, copy=False), list(info["ids"]), list(info["skipped"])


def load_shards(
    directory: str | os.PathLike[str], *, dim: int | None = None
) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """Read the shards of a finished :func:`encode_with_ray` run back, in order, as one array
    (see :func:`iter_shards` for one shard at a time).

    Args:
        directory: The run's output folder.
        dim: Width of the empty array returned when no image was encoded.

    Returns:
        ``(embeddings float32 (n, dim), ids, skip records)``, in corpus order.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``directory``.
        IntegrityError: the run is unfinished, or a shard is damaged (checksum, shape).
    """
    embs: list[np.ndarray] = []
    ids: list[str] = []
    skipped: list[dict[str, str]] = []
    width = dim
    for emb, shard_ids, shard_skipped in iter_shards(directory, dim=dim):
        embs.append(emb)
        ids.extend(shard_ids)
        skipped.extend(shard_skipped)
        width = emb.shape[1]
    if not embs:
        manifest = read_json(Path(directory) / MANIFEST_FILE)
        width = manifest.get("dim") or width
        return np.empty((0, width or 0), dtype=np.float32), ids, skipped
    return np.concatenate(embs), ids, skipped


__all__ = [
    "MANIFEST_FILE",
    "MIN_SHARDS",
    "EncoderSource",
    "RayEncodeResult",
    "RayUnavailableError",
    "ShardEncoder",
    "ShardRecord",
    "check_address",
    "default_shard_size",
    "encode_with_ray",
    "import_ray",
    "iter_shards",
    "load_shards",
    "ray_runtime",
]
