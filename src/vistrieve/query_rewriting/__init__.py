"""Query rewriting: captioners, CIReVL recomposition, dialog summaries, relevance feedback and
the chat session, with registries that build them from specs.

* :data:`CAPTIONERS`: ``{"kind": "prefix", "path": DIR}`` (a saved
  :class:`~vistrieve.query_rewriting.captioner.PrefixCaptioner`, encoder read from its
  directory), ``{"kind": "retrieval", "path": DIR}`` (a saved
  :class:`~vistrieve.query_rewriting.captioner.RetrievalCaptioner`, real photos),
  ``{"kind": "hf", "path": DIR}`` (BLIP / BLIP-2 / GIT), ``"embedded"`` (the shapes
  captioner that ships in the package); a plain directory is loaded by the kind it records;
* :data:`REWRITERS`: ``{"kind": "cirevl", "captioner": ..., "llm": ...}`` and
  ``{"kind": "dialog-summary", "llm": ...}``; LLMs are specs of :func:`vistrieve.llm.create_llm`.

To add a rewriter, implement ``rewrite(queries) -> list[list[Query]]`` and register a factory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vistrieve.query_rewriting.captioner import (
    CAPTIONER_FILE,
    HFCaptioner,
    PrefixCaptioner,
    RetrievalCaptioner,
)
from vistrieve.query_rewriting.chat import (
    ChatSession,
    DialogSummaryRewriter,
    FeedbackLoop,
    LLMQuestioner,
    simulated_feedback,
)
from vistrieve.query_rewriting.cirevl import CachedCaptioner, CIReVLRewriter
from vistrieve.registry import Registry
from vistrieve.types import QueryRewriter

CAPTIONERS: Registry[Any] = Registry("captioner")
"""Captioner kind -> factory (``caption(images) -> list[str]`` objects)."""
REWRITERS: Registry[QueryRewriter] = Registry("rewriter")
"""Rewriter kind -> factory of a :class:`~vistrieve.types.QueryRewriter`."""


def embedded_captioner_dir() -> Path:
    """Directory of the captioner that ships in the package (the shapes world's)."""
    from vistrieve.encoders.embedded import WEIGHTS_DIR

    return WEIGHTS_DIR / "shapes-captioner" / "model"


@CAPTIONERS.register("prefix")
def _prefix(path: str | os.PathLike[str], **kw: Any) -> Any:
    """A saved PrefixCaptioner (small LM over image-encoder features)."""
    from vistrieve.query_rewriting.captioner import PrefixCaptioner

    root = embedded_captioner_dir() if str(path) == "embedded" else Path(path)
    return PrefixCaptioner.load(root, **kw)


@CAPTIONERS.register("retrieval")
def _retrieval(path: str | os.PathLike[str], **kw: Any) -> Any:
    """A saved RetrievalCaptioner (nearest human captions of a bank, consensus-reranked)."""
    return RetrievalCaptioner.load(path, **kw)


@CAPTIONERS.register("hf")
def _hf(path: str | os.PathLike[str], **kw: Any) -> Any:
    """A transformers image-to-text model (BLIP, BLIP-2, GIT) by local path or hub name."""
    from vistrieve.query_rewriting.captioner import HFCaptioner

    return HFCaptioner.from_pretrained(path, **kw)


def load_captioner(spec: str | os.PathLike[str] | Mapping[str, Any] | Any, **kw: Any) -> Any:
    """A captioner from ``"embedded"``, a saved PrefixCaptioner directory, a spec mapping
    ``{"kind": ..., **options}``, or a ready captioner (passed through).

    Raises:
        KeyError: an unknown kind.
        ValueError: a spec without ``kind``.
    """
    if isinstance(spec, Mapping):
        if "kind" not in spec:
            raise ValueError(f"captioner spec {dict(spec)!r} has no 'kind' key")
        opts = {k: v for k, v in spec.items() if k != "kind"}
        opts.update(kw)
        return CAPTIONERS.create(str(spec["kind"]), **opts)
    if isinstance(spec, (str, os.PathLike)):
        meta = Path(spec) / CAPTIONER_FILE
        if str(spec) != "embedded" and meta.is_file():
            from vistrieve.utils.io import read_json

            kind = read_json(meta).get("kind", "prefix")
            return CAPTIONERS.create(str(kind), path=spec, **kw)
        return CAPTIONERS.create("prefix", path=spec, **kw)
    return spec


@REWRITERS.register("cirevl")
def _cirevl(
    captioner: Any = "embedded",
    llm: Any = "smollm2",
    cache: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> QueryRewriter:
    """CIReVL: caption the reference image, an LLM recomposes caption + modification."""
    from vistrieve.llm import ReplayCache, create_llm
    from vistrieve.query_rewriting.cirevl import CIReVLRewriter

    replay = ReplayCache(cache) if cache is not None else None
    return CIReVLRewriter(load_captioner(captioner), create_llm(llm), cache=replay, **kw)


@REWRITERS.register("dialog-summary")
def _dialog_summary(llm: Any = "smollm2", **kw: Any) -> QueryRewriter:
    """An LLM turns a dialog (caption + question/answer rounds) into one description."""
    from vistrieve.llm import create_llm
    from vistrieve.query_rewriting.chat import DialogSummaryRewriter

    return DialogSummaryRewriter(create_llm(llm), **kw)


def create_rewriter(spec: str | Mapping[str, Any] | QueryRewriter, **kw: Any) -> QueryRewriter:
    """A rewriter from a kind, a spec mapping ``{"kind": ..., **options}``, or pass one through.

    Raises:
        KeyError: an unknown kind (close matches are suggested).
        ValueError: a spec without ``kind``.
    """
    if isinstance(spec, str):
        return REWRITERS.create(spec, **kw)
    if isinstance(spec, Mapping):
        if "kind" not in spec:
            raise ValueError(f"rewriter spec {dict(spec)!r} has no 'kind' key")
        opts = {k: v for k, v in spec.items() if k != "kind"}
        opts.update(kw)
        return REWRITERS.create(str(spec["kind"]), **opts)
    return spec


__all__ = [
    "CAPTIONERS",
    "RetrievalCaptioner",
    "REWRITERS",
    "CIReVLRewriter",
    "CachedCaptioner",
    "ChatSession",
    "DialogSummaryRewriter",
    "FeedbackLoop",
    "HFCaptioner",
    "LLMQuestioner",
    "PrefixCaptioner",
    "simulated_feedback",
    "create_rewriter",
    "embedded_captioner_dir",
    "load_captioner",
]
