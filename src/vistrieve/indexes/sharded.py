"""Search several indexes (shards of one collection) and merge the results into one top-k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vistrieve.indexes.base import BaseIndex
from vistrieve.types import Hit


def merge_top_k(
    scores: Sequence[np.ndarray], keys: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One top-``k`` per row from several result blocks ``(scores, keys)`` of the same
    queries: score descending, then key ascending; key -1 (no result) sorts last."""
    cs, ck = np.concatenate(list(scores), 1), np.concatenate(list(keys), 1)
    tie = np.where(ck < 0, np.iinfo(np.int64).max, ck)
    order = np.lexsort((tie, -cs), axis=1)[:, :k]
    return np.take_along_axis(cs, order, 1), np.take_along_axis(ck, order, 1)


class ShardedSearch:
    """One top-k over several indexes holding disjoint parts of a collection.

    Each shard answers ``k`` results; the union is ordered by score (descending; equal
    scores by shard order, then by position) and cut to ``k``. Scores must be comparable:
    all shards need the same metric and dimension (checked) and the same encoder (checked
    when their manifests record one).

    Args:
        shards: The indexes, e.g. ``[vistrieve.indexes.load_index(p) for p in paths]``.

    Raises:
        ValueError: no shards, or shards of different dimension, metric or model.

    Example:
        >>> from vistrieve.indexes import ExactIndex
        >>> a, b = ExactIndex(2), ExactIndex(2)
        >>> a.add(np.array([[1, 0]], np.float32), ["a"])
        >>> b.add(np.array([[0.6, 0.8]], np.float32), ["b"])
        >>> [h.id for h in ShardedSearch([a, b]).search(np.array([[0, 1]], np.float32), 2)[0]]
        ['b', 'a']
    """

    def __init__(self, shards: Sequence[BaseIndex]) -> None:
        if not shards:
            raise ValueError("ShardedSearch needs at least one index")
        first = shards[0]
        for i, s in enumerate(shards):
            if s.dim != first.dim or s.metric != first.metric:
                raise ValueError(
                    f"shard {i} has dim {s.dim} and metric {s.metric!r}, shard 0 has dim "
                    f"{first.dim} and metric {first.metric!r}: scores are not comparable"
                )
            if s.model and first.model and s.model != first.model:
                raise ValueError(
                    f"shard {i} was built with model {s.model!r}, shard 0 with "
                    f"{first.model!r}; rebuild one of them"
                )
        self.shards = list(shards)
        self.dim = first.dim

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Merged top-``k``: ``(scores, shard_numbers, positions)`` flattened into
        ``(scores, keys)`` where ``keys[:, j] = shard * 2**40 + position`` (-1: none)."""
        all_s, all_k = [], []
        for n, shard in enumerate(self.shards):
            s, p = shard.search_arrays(queries, k)
            all_s.append(s)
            all_k.append(np.where(p >= 0, (n << 40) + p, -1))
        return merge_top_k(all_s, all_k, k)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` :class:`~vistrieve.types.Hit` lists over all shards, best first."""
        scores, keys = self.search_arrays(queries, k)
        ids = [s.ids for s in self.shards]
        return [
            [
                Hit(ids[key >> 40][key & ((1 << 40) - 1)], sc)
                for sc, key in zip(srow, krow, strict=True)
                if key >= 0
            ]
            for srow, krow in zip(scores.tolist(), keys.tolist(), strict=True)
        ]
