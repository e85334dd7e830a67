"""A prefix tree over token sequences, for constrained decoding of valid identifiers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

_END = -1  # key under which a complete sequence stores its value


class Trie:
    """Token-id sequences with a value at each complete sequence.

    Every inserted sequence should end with the end-of-sequence token, so that a finished
    identifier is a leaf and decoding can stop exactly there.

    Args:
        eos_token_id: Returned by :meth:`allowed` when nothing else is allowed: a beam that
            left the trie (it cannot, when decoding is constrained) or finished one.
    """

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = int(eos_token_id)
        self._root: dict[int, Any] = {}
        self._size = 0
        self._depth = 0

    def __len__(self) -> int:
        return self._size

    @property
    def depth(self) -> int:
        """Length of the longest sequence (EOS included): decoding needs no more steps."""
        return self._depth

    def add(self, sequence: Sequence[int], value: Any = None) -> None:
        """Insert ``sequence``; raises ``ValueError`` for an empty or duplicate sequence."""
        if len(sequence) == 0:
            raise ValueError("cannot add an empty sequence to the trie")
        node = self._root
        for t in sequence:
            node = node.setdefault(int(t), {})
        if _END in node:
            raise ValueError(
                f"sequence {list(sequence)} is already in the trie (value {node[_END]!r})"
            )
        node[_END] = value
        self._size += 1
        self._depth = max(self._depth, len(sequence))

    @classmethod
    def build(cls, sequences: Iterable[tuple[Sequence[int], Any]], eos_token_id: int) -> Trie:
        """A trie of ``(sequence, value)`` pairs."""
        trie = cls(eos_token_id)
        for seq, value in sequences:
            trie.add(seq, value)
        return trie

    def _node(self, prefix: Sequence[int]) -> dict[int, Any] | None:
        node = self._root
        for t in prefix:
            nxt = node.get(int(t))
            if nxt is None:
                return None
            node = nxt
        return node

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that continue ``prefix`` inside the trie (empty when none)."""
        node = self._node(prefix)
        return [] if node is None else sorted(k for k in node if k != _END)

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Like :meth:`next_tokens`, but never empty: ``[eos]`` when nothing continues.

        ``generate`` treats an empty list as "every token allowed", which would let a beam
        wander out of the set of valid identifiers; EOS ends it instead.
        """
        return self.next_tokens(prefix) or [self.eos_token_id]

    def get(self, sequence: Sequence[int]) -> Any:
        """The value of a complete sequence; ``KeyError`` when it is not one."""
        node = self._node(sequence)
        if node is None or _END not in node:
            raise KeyError(f"{list(sequence)} is not a complete sequence of the trie")
        return node[_END]

    def __contains__(self, sequence: object) -> bool:
        if not isinstance(sequence, Sequence):
            return False
        node = self._node(sequence)
        return node is not None and _END in node

    def prefix_allowed_tokens_fn(self, skip: int = 0) -> Callable[[int, torch.Tensor], list[int]]:
        """A ``prefix_allowed_tokens_fn`` for transformers' ``generate``.

        Args:
            skip: Leading tokens of each beam's ``input_ids`` that are not part of the
                identifier (1 for encoder-decoder models: the decoder start token; 0 for a
                decoder-only model fed ``inputs_embeds``, whose ``input_ids`` hold only the
                generated tokens).
        """

        def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            return self.allowed(input_ids[skip:].tolist())

        return fn
