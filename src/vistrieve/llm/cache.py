"""An on-disk replay cache for LLM answers, keyed by model, prompt and decoding settings.

LLM outputs drift between versions, providers and runs; caching every answer under a hash
of the model name, the messages and the decoding settings makes an experiment replay
exactly (CIReVL caches its captions and rewrites the same way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vistrieve.errors import LLMError, VistrieveError, quote
from vistrieve.llm.base import ChatLLM, Message, check_messages
from vistrieve.utils.io import atomic_write_json, read_json

logger = logging.getLogger(__name__)


def cache_key(model: str, messages: Sequence[Message], decoding: Mapping[str, Any]) -> str:
    """SHA-256 over the model name, the messages and the decoding settings."""
    blob = json.dumps(
        {"model": model, "messages": [dict(m) for m in messages], "decoding": dict(decoding)},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplayCache:
    """LLM answers and captions on disk, one JSON file per key (written atomically).

    Args:
        directory: Where entries live (created on first write).
        mode: ``"readwrite"`` (default), ``"read"`` (never write) or ``"replay"`` (a miss is
            an error: the experiment must replay exactly what was recorded).
    """

    def __init__(self, directory: str | os.PathLike[str], *, mode: str = "readwrite") -> None:
        if mode not in ("readwrite", "read", "replay"):
            raise ValueError(f"cache mode must be readwrite, read or replay, got {mode!r}")
        self.directory = Path(directory)
        self.mode = mode
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry under ``key``, or None (``replay`` mode raises ``KeyError`` instead)."""
        path = self._path(key)
        if path.is_file():
            self.hits += 1
            entry = read_json(path)
            return dict(entry)
        self.misses += 1
        if self.mode == "replay":
            raise KeyError(
                f"replay cache {self.directory} has no entry {key[:12]}...: the experiment "
                "asks for an output that was not recorded (other prompt, model or settings)"
            )
        return None

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store ``entry`` (JSON-serialisable) under ``key`` unless the cache is read-only."""
        if self.mode == "readwrite":
            atomic_write_json(self._path(key), dict(entry))


class CachedLLM:
    """A :class:`ChatLLM` whose answers go through a :class:`ReplayCache`.

    Also counts calls, cache hits and (approximate, whitespace) tokens for cost reports, and
    keeps a log of ``(model, key, answer)`` so that reports can say which LLM produced which
    rewrite.
    """

    def __init__(self, llm: ChatLLM, cache: ReplayCache | None = None) -> None:
        self.llm = llm
        self.cache = cache
        self.name = llm.name
        self.decoding = dict(llm.decoding)
        self.calls = 0
        self.cached = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.failures = 0

    def complete(self, messages: Sequence[Message]) -> str:
        """The model's answer, from the cache when it holds one.

        Raises:
            LLMError: the backend raised (the original error is chained and named) or
                answered with something that is not text (``None``, say).
        """
        msgs = check_messages(messages)
        key = cache_key(self.name, msgs, self.decoding)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.cached += 1
                return str(hit["answer"])
        try:
            answer = self.llm.complete(msgs)
        except VistrieveError:
            self.failures += 1
            raise
        except Exception as exc:
            self.failures += 1
            raise LLMError(
                f"LLM {self.name!r} failed: {type(exc).__name__}: {quote(str(exc))}"
            ) from exc
        if not isinstance(answer, str):
            self.failures += 1
            raise LLMError(
                f"LLM {self.name!r} answered with {type(answer).__name__}, not text: "
                f"{quote(answer)}"
            )
        self.calls += 1
        self.prompt_tokens += sum(len(m["content"].split()) for m in msgs)
        self.completion_tokens += len(answer.split())
        if self.cache is not None:
            self.cache.put(
                key,
                {"model": self.name, "decoding": self.decoding, "messages": msgs, "answer": answer},
            )
        return answer

    def cost(self) -> dict[str, float]:
        """LLM calls made, answers replayed from the cache, and whitespace tokens."""
        return {
            "llm_calls": float(self.calls),
            "llm_cache_hits": float(self.cached),
            "llm_prompt_tokens": float(self.prompt_tokens),
            "llm_completion_tokens": float(self.completion_tokens),
            "llm_failures": float(self.failures),
        }
