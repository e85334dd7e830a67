"""The error types vistrieve raises for bad data, refused writes and failed models.

Each derives from :class:`VistrieveError` and also from the builtin exception that code
written before these types existed catches (``ValueError``, ``RuntimeError`` ...), so
``except ValueError`` keeps working while ``except VistrieveError`` catches every failure
the library reports on purpose. Messages name the bad input and say what to do.
"""

from __future__ import annotations

from typing import Any

QUOTE_LIMIT = 200
"""Characters of model output quoted in an error message (the rest is elided)."""


def quote(text: Any, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as a ``repr`` cut to ``limit`` characters (with the total length noted), so
    that a megabyte of model output never ends up in a log line or an HTTP answer."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}... ({len(s)} characters)"


class VistrieveError(Exception):
    """Base of every error vistrieve raises on purpose."""


class IntegrityError(VistrieveError, ValueError):
    """A saved file is damaged or inconsistent (checksum, shape, ids, non-finite values).

    Attributes:
        path: The file (or directory) that failed the check.
    """

    def __init__(self, message: str, path: Any = None) -> None:
        super().__init__(message)
        self.path = path


class OverwriteRefusedError(VistrieveError, FileExistsError):
    """A write would replace something that is not the writer's own (a folder of other
    files, the input data, an index without an explicit overwrite)."""


class ImageLoadError(VistrieveError, ValueError):
    """An image could not be read; the message names the source."""


class ImageTooLargeError(ImageLoadError):
    """An image declares more pixels than the configured limit (a decompression bomb, or
    just too large to decode safely); it is refused before its pixels are decoded."""


class MissingDependencyError(VistrieveError, ImportError):
    """An optional package a feature needs is not installed; the message names the
    package and the install command."""


class LLMError(VistrieveError, RuntimeError):
    """A language model failed: its backend raised, or it answered with no text."""


class ModelOutputError(VistrieveError, ValueError):
    """A model answered with something that cannot be used.

    Attributes:
        text: The offending output (the message quotes at most :data:`QUOTE_LIMIT`
            characters of it).
    """

    def __init__(self, problem: str, text: Any) -> None:
        self.text = text
        self.problem = problem
        super().__init__(f"{problem}: {quote(text)}")


__all__ = [
    "QUOTE_LIMIT",
    "ImageLoadError",
    "ImageTooLargeError",
    "IntegrityError",
    "LLMError",
    "MissingDependencyError",
    "ModelOutputError",
    "OverwriteRefusedError",
    "VistrieveError",
    "quote",
]
