"""CIReVL: training-free composed image retrieval by recomposing the query in language.

Caption the reference image, ask an LLM for the description of the image after the
modification ("Image Content: <caption>" / "Instruction: <modification>" ->
"Edited Description: ..."), then search text -> image with that description
(Karthik et al., ICLR 2024).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from vistrieve.llm import CachedLLM, ChatLLM, ReplayCache, cache_key
from vistrieve.llm.prompts import CIREVL, MAX_QUERY_CHARS, PromptTemplate, cap_output, parse_field
from vistrieve.types import Query

logger = logging.getLogger(__name__)


@runtime_checkable
class Captioner(Protocol):
    """Describes images in words."""

    name: str

    def caption(self, images: Sequence[Any]) -> list[str]: ...


def image_digest(image: Any) -> str:
    """A content hash of an image (path or PIL image), for cache keys."""
    from vistrieve.utils.images import load_image

    im = load_image(image)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


class CachedCaptioner:
    """A :class:`Captioner` whose captions go through a :class:`ReplayCache` (keyed by the
    captioner's name and the image content), counting calls for cost reports."""

    def __init__(self, captioner: Captioner, cache: ReplayCache | None = None) -> None:
        self.captioner = captioner
        self.cache = cache
        self.name = captioner.name
        self.images_captioned = 0

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image, from the cache where possible."""
        keys = [
            cache_key(self.name, [{"role": "user", "content": image_digest(im)}], {})
            for im in images
        ]
        out: list[str | None] = [None] * len(images)
        todo = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = str(hit["caption"])
            else:
                todo.append(i)
        if todo:
            fresh = self.captioner.caption([images[i] for i in todo])
            self.images_captioned += len(todo)
            for i, cap in zip(todo, fresh, strict=True):
                out[i] = cap
                if self.cache is not None:
                    self.cache.put(keys[i], {"model": self.name, "caption": cap})
        return [c if c is not None else "" for c in out]

    def cost(self) -> dict[str, float]:
        """Images captioned (cache misses)."""
        return {"images_captioned": float(self.images_captioned)}


class CIReVLRewriter:
    """Turns composed queries into text queries through a captioner and an LLM.

    Text, image and dialog queries pass through unchanged.

    Args:
        captioner: Captions the reference images.
        llm: The chat model that recomposes (wrapped in :class:`CachedLLM` when ``cache``
            is given or when it is not one already).
        prompt: The prompt template (fields ``caption`` and ``modification``).
        cache: Replay cache for captions and LLM answers.

    An answer without the "Edited Description:" field, or an empty one, is logged and
    counted (``cost()["parse_failures"]``); the query then falls back to
    ``"<caption>, <modification>"`` (the caption-plus-text baseline), never to nothing. A
    reference image that cannot be read is logged and counted
    (``cost()["unreadable_references"]``); that query searches with its modification text.
    An edited description longer than :data:`~vistrieve.llm.prompts.MAX_QUERY_CHARS` is cut
    (logged, ``cost()["truncated_outputs"]``); an LLM that raises or answers with no text
    raises :class:`~vistrieve.errors.LLMError`.
    """

    def __init__(
        self,
        captioner: Captioner,
        llm: ChatLLM,
        *,
        prompt: PromptTemplate = CIREVL,
        cache: ReplayCache | None = None,
    ) -> None:
        self.captioner = (
            captioner
            if isinstance(captioner, CachedCaptioner)
            else CachedCaptioner(captioner, cache)
        )
        self.llm = llm if isinstance(llm, CachedLLM) else CachedLLM(llm, cache)
        self.prompt = prompt
        self.parse_failures = 0
        self.unreadable = 0
        self.truncated = 0
        self.log: list[dict[str, str]] = []

    def recompose(self, captions: Sequence[str], modifications: Sequence[str]) -> list[str]:
        """Edited descriptions for (caption, modification) pairs.

        Raises:
            LLMError: the LLM raised or answered with no text.
        """
        out = []
        for cap, mod in zip(captions, modifications, strict=True):
            answer = self.llm.complete(self.prompt.messages(caption=cap, modification=mod))
            edited = parse_field(answer, "Edited Description")
            if not edited:
                self.parse_failures += 1
                logger.warning(
                    "LLM answer has no usable 'Edited Description:' (%r); falling back to "
                    "caption + modification",
                    answer[:120],
                )
                edited = f"{cap}, {mod}"
            edited, cut = cap_output(edited, MAX_QUERY_CHARS, what="edited description")
            self.truncated += cut
            self.log.append(
                {"llm": self.llm.name, "caption": cap, "modification": mod, "rewrite": edited}
            )
            out.append(edited)
        return out

    def rewrite(self, queries: Sequence[Query]) -> list[list[Query]]:
        """One text query per composed query (:class:`~vistrieve.types.QueryRewriter`)."""
        from vistrieve.utils.images import ImageLoadError, describe_image, load_image

        out = [[q] for q in queries]
        composed = []
        for i, q in enumerate(queries):
            if q.kind != "composed":
                continue
            try:
                load_image(q.image)
            except (ImageLoadError, TypeError) as exc:
                # An unreadable reference leaves the modification text: still a search.
                self.unreadable += 1
                logger.warning(
                    "reference image %s cannot be read (%s); searching with the "
                    "modification text alone",
                    describe_image(q.image),
                    exc,
                )
                meta = {**q.metadata, "reference_error": str(exc)}
                out[i] = [Query(text=str(q.text), id=q.id, metadata=meta)]
                continue
            composed.append(i)
        if not composed:
            return out
        captions = self.captioner.caption([queries[i].image for i in composed])
        edited = self.recompose(captions, [str(queries[i].text) for i in composed])
        for i, cap, text in zip(composed, captions, edited, strict=True):
            q = queries[i]
            out[i] = [
                Query(
                    text=text,
                    id=q.id,
                    metadata={**q.metadata, "reference_caption": cap, "rewriter": self.llm.name},
                )
            ]
        return out

    def cost(self) -> dict[str, float]:
        """LLM calls, cache hits, tokens, captions made and parse failures."""
        return {
            **self.llm.cost(),
            **self.captioner.cost(),
            "parse_failures": float(self.parse_failures),
            "unreadable_references": float(self.unreadable),
            "truncated_outputs": float(self.truncated),
        }

    def report_notes(self) -> list[str]:
        """Which LLM and captioner produced the rewrites (for evaluation reports)."""
        return [f"rewrites by LLM {self.llm.name!r} from captions by {self.captioner.name!r}"]
