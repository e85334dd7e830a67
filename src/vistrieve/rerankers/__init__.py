"""Second-stage rerankers and the registry that builds or reopens any of them.

Every reranker re-scores the candidates of an earlier stage given an injected corpus (items
by id, where candidate images come from). :data:`RERANKERS` maps a kind to a factory
``(corpus, **options) -> reranker``; :func:`load_reranker` takes a saved directory (its
kind read from the files it holds), ``"embedded"`` (the Q-Former that ships in the package)
or a spec mapping ``{"kind": ..., **options}``:

* ``{"kind": "qformer", "path": DIR}``: a trained Q-Former cross-encoder;
* ``{"kind": "blip2", "path": DIR, "mode": "itm+itc"}``: BLIP-2 ITM / ITC from a local
  ``Blip2ForImageTextRetrieval`` checkpoint (or a hub name where the hub is reachable);
* ``{"kind": "listwise", "llm": {"name": "hf", "name_or_path": DIR}, "window": 4}``: a
  chat model picks among lettered candidates (their captions), scored from its logits.

To add a reranker, subclass :class:`~vistrieve.rerankers.base.PairwiseReranker` (implement
``score_pairs``) or :class:`~vistrieve.rerankers.base.BaseReranker`, and register a factory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vistrieve.registry import Registry
from vistrieve.rerankers.base import BaseReranker, PairwiseReranker
from vistrieve.rerankers.blip2 import Blip2ItmReranker
from vistrieve.rerankers.listwise import ChatModelLetterScorer, HFLetterScorer, ListwiseReranker
from vistrieve.rerankers.qformer import QFormerReranker, load_qformer_reranker
from vistrieve.types import Item, Reranker

RERANKERS: Registry[Reranker] = Registry("reranker")
"""Reranker kind -> factory ``(corpus, **options) -> reranker``."""


@RERANKERS.register("qformer")
def _qformer(corpus: Mapping[str, Item], path: str = "embedded", **kw: Any) -> Reranker:
    """A trained Q-Former cross-encoder (ITM, optionally + caption likelihood)."""
    from vistrieve.rerankers.qformer import load_qformer_reranker

    return load_qformer_reranker(path, corpus, **kw)


@RERANKERS.register("blip2")
def _blip2(corpus: Mapping[str, Item], path: str, **kw: Any) -> Reranker:
    """BLIP-2 ITM / ITC / ITM+ITC (LAVIS scoring) from a Blip2ForImageTextRetrieval checkpoint."""
    from vistrieve.rerankers.blip2 import Blip2ItmReranker

    return Blip2ItmReranker.from_pretrained(path, corpus, **kw)


@RERANKERS.register("listwise")
def _listwise(
    corpus: Mapping[str, Item],
    llm: Mapping[str, Any] | str = "smollm2",
    **kw: Any,
) -> Reranker:
    """A local chat LM picks among lettered candidate captions; letters scored by logits."""
    from vistrieve.rerankers.listwise import HFLetterScorer, ListwiseReranker

    spec = {"name": llm} if isinstance(llm, str) else dict(llm)
    backend = spec.pop("name")
    if backend == "smollm2":
        from vistrieve.llm import SMOLLM2_GGUF, find_smollm2

        directory = spec.pop("directory", None)
        root = Path(directory) if directory is not None else find_smollm2()
        scorer = HFLetterScorer.from_pretrained(str(root), gguf_file=SMOLLM2_GGUF, **spec)
    elif backend == "hf":
        scorer = HFLetterScorer.from_pretrained(spec.pop("name_or_path"), **spec)
    else:
        raise ValueError(
            f"listwise reranking reads letter logits from a local model: llm name must be "
            f"'smollm2' or 'hf', got {backend!r}"
        )
    return ListwiseReranker(scorer, corpus, **kw)


def reranker_kind(directory: str | os.PathLike[str]) -> str:
    """The kind of reranker saved in ``directory`` (``"embedded"`` is the shipped Q-Former).

    Raises:
        FileNotFoundError: nothing vistrieve can rerank with is saved there.
    """
    root = Path(directory)
    if str(directory) == "embedded" or (root / "qformer_config.json").is_file():
        return "qformer"
    config = root / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{config} is not a JSON model config: {exc}") from exc
        if model_type == "blip-2":
            return "blip2"
    if not root.exists():
        raise FileNotFoundError(f"reranker directory not found: {root}")
    raise FileNotFoundError(
        f"{root} holds no reranker vistrieve knows (a saved Q-Former with qformer_config.json, "
        "or a BLIP-2 checkpoint with config.json)"
    )


def load_reranker(
    source: str | os.PathLike[str] | Mapping[str, Any],
    corpus: Mapping[str, Item],
    **overrides: Any,
) -> Reranker:
    """Build or reopen a reranker from a directory, ``"embedded"``, or a spec mapping.

    Args:
        source: A saved reranker directory (kind detected from its files), ``"embedded"``,
            or ``{"kind": ..., **options}``.
        corpus: Items by id; candidate images and captions come from here.
        **overrides: Options for the kind's factory (``name``, ``batch_size``, ``mode`` ...).

    Raises:
        FileNotFoundError: a directory that holds no reranker.
        KeyError: an unknown kind (close matches are suggested).
        ValueError: a spec without ``kind``.
    """
    if isinstance(source, Mapping):
        if "kind" not in source:
            raise ValueError(f"reranker spec {dict(source)!r} has no 'kind' key")
        opts = {k: v for k, v in source.items() if k != "kind"}
        opts.update(overrides)
        return RERANKERS.create(str(source["kind"]), corpus=corpus, **opts)
    kind = reranker_kind(source)
    return RERANKERS.create(kind, corpus=corpus, path=os.fspath(source), **overrides)


__all__ = [
    "RERANKERS",
    "BaseReranker",
    "Blip2ItmReranker",
    "ChatModelLetterScorer",
    "HFLetterScorer",
    "ListwiseReranker",
    "PairwiseReranker",
    "QFormerReranker",
    "load_qformer_reranker",
    "load_reranker",
    "reranker_kind",
]
