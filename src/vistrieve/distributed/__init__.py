"""Distributed encoding of a corpus (Ray): shards of embeddings with their ids, resumable.

See :mod:`vistrieve.distributed.ray_encode`. Ray is an optional extra
(``pip install 'vistrieve[ray]'``); importing this package does not import Ray.
"""

from __future__ import annotations

from vistrieve.distributed.ray_encode import (
    MANIFEST_FILE,
    RayEncodeResult,
    RayUnavailableError,
    ShardRecord,
    default_shard_size,
    encode_with_ray,
    iter_shards,
    load_shards,
)

__all__ = [
    "MANIFEST_FILE",
    "RayEncodeResult",
    "RayUnavailableError",
    "ShardRecord",
    "default_shard_size",
    "encode_with_ray",
    "iter_shards",
    "load_shards",
]
