"""Every prompt of the query-rewriting stage, in one place, and the parsers of the answers.

Prompts are :class:`PromptTemplate` values; pass another template to a rewriter to change
one. Texts that come from outside (captions, user modifications, dialog answers) are put
inside the prompt between markers and stripped of lines that try to issue instructions
("ignore previous instructions ..."), which are logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptTemplate:
    """A system message and a user message with ``{name}`` fields."""

    name: str
    system: str
    user: str

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """The chat messages with ``fields`` filled in (each sanitised)."""
        clean = {k: sanitize(v) for k, v in fields.items()}
        try:
            user = self.user.format(**clean)
        except KeyError as exc:
            raise ValueError(f"prompt {self.name!r} needs the field {exc}") from None
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


_INJECTION = re.compile(
    r"(ignore|disregard|forget)\b.{0,40}\b(instructions?|prompts?|rules|above)"
    r"|\b(system prompt|you are now|new instructions?)\b",
    re.IGNORECASE,
)


def sanitize(text: str, *, max_chars: int = 2000) -> str:
    """Outside text made safe to embed: sentences that look like instructions to the model
    are dropped (and logged), spaces are collapsed within lines (line breaks are kept: a
    dialog or a list keeps its shape), empty lines are removed, and the text is cut to
    ``max_chars``."""
    lines = []
    for line in str(text).splitlines():
        kept = []
        for sentence in re.split(r"(?<=[.!?])\s+", line):
            if _INJECTION.search(sentence):
                logger.warning(
                    "dropped an instruction-like passage from a prompt field: %r", sentence[:80]
                )
                continue
            kept.append(sentence)
        clean = " ".join(" ".join(kept).split())
        if clean:
            lines.append(clean)
    return "\n".join(lines)[:max_chars]


CIREVL = PromptTemplate(
    name="cirevl",
    system=(
        "You edit image descriptions. Given the content of an image and an instruction, "
        "write one short description of the image after the edit. Keep everything the "
        "instruction does not change. Answer with one line that starts with "
        '"Edited Description:".'
    ),
    user="Image Content: {caption}\nInstruction: {modification}\nEdited Description:",
)

FEEDBACK_REWRITE = PromptTemplate(
    name="eiirwqr",
    system=(
        "You help a user search for an image. You get the user's request and descriptions "
        "of images the user marked as relevant; some descriptions contain mistakes. Write "
        "one improved search query that keeps what the request and the relevant images "
        'agree on. Answer with one line that starts with "Query:".'
    ),
    user="Request: {query}\nRelevant images:\n{captions}\nQuery:",
)

QUESTIONER = PromptTemplate(
    name="chatir-question",
    system=(
        "You help find one image in a large collection by asking its owner questions. Ask "
        "one short question whose answer best narrows the search. Do not repeat a question "
        'that was already asked. Answer with one line that starts with "Question:".'
    ),
    user="Description: {caption}\nDialog so far:\n{dialog}\nQuestion:",
)

DIALOG_SUMMARY = PromptTemplate(
    name="dialog-summary",
    system=(
        "You turn a conversation about an image into one short description of that image, "
        "in the style of an image caption, using every fact the answers give. Answer with "
        'one line that starts with "Description:".'
    ),
    user="Caption: {caption}\nDialog:\n{dialog}\nDescription:",
)

PROMPTS: Mapping[str, PromptTemplate] = {
    p.name: p for p in (CIREVL, FEEDBACK_REWRITE, QUESTIONER, DIALOG_SUMMARY)
}


MAX_QUESTION_CHARS = 300
"""Longest question from a model that is shown to a user (longer ones are cut)."""

MAX_QUERY_CHARS = 1000
"""Longest rewritten query or description from a model that is searched with."""

MAX_ANSWER_CHARS = 20_000
"""Characters of a model answer that :func:`parse_field` reads (the rest is ignored)."""


def cap_output(text: str, limit: int, *, what: str = "model output") -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` characters (at a word boundary when one is near
    the end), and whether it was cut; a cut is logged with the original length."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit * 0.8:
        cut = cut[:space]
    logger.warning("%s of %d characters cut to %d", what, len(text), len(cut.rstrip()))
    return cut.rstrip(), True


def parse_field(answer: str, field: str) -> str | None:
    """The text after ``field:`` in an LLM answer, or None when it cannot be found.

    Accepts the field anywhere (case-insensitive, optional markdown bold), takes the rest of
    that line (or the next non-empty line when the field ends its line), strips quotes. An
    answer without the field but with exactly one non-empty line is taken as the value
    (small models often drop the prefix). Only the first :data:`MAX_ANSWER_CHARS`
    characters are read.
    """
    text = answer[:MAX_ANSWER_CHARS].strip()
    if not text:
        return None
    pat = re.compile(rf"\**{re.escape(field)}\**\s*:\s*\**\s*(.*)", re.IGNORECASE)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = pat.search(line)
        if m:
            value = m.group(1).strip()
            if not value:
                value = next((ln.strip() for ln in lines[i + 1 :] if ln.strip()), "")
            value = value.strip().strip('"').strip("'").strip("*").strip()
            return value or None
    nonempty = [ln.strip() for ln in lines if ln.strip()]
    if len(nonempty) == 1 and ":" not in nonempty[0][:20]:
        return nonempty[0].strip('"').strip("'").strip() or None
    return None
