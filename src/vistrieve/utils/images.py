"""Image loading with errors that name the bad input."""

from __future__ import annotations

import os
from typing import Any

from PIL import Image, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An image could not be read; the message names the source."""


def describe_image(image: Any) -> str:
    """A short description of an image input for messages and reports."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, Image.Image):
        return f"<in-memory {image.mode} image {image.size[0]}x{image.size[1]}>"
    return f"<{type(image).__name__}>"


def load_image(image: Any, mode: str = "RGB") -> Image.Image:
    """Return ``image`` as a fully decoded PIL image in ``mode``.

    Args:
        image: A ``PIL.Image.Image`` or a path to an image file.
        mode: PIL mode to convert to.

    Raises:
        ImageLoadError: the path does not exist or is not a readable image.
        TypeError: ``image`` is neither a PIL image nor a path.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == mode else image.convert(mode)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"expected a PIL image or a file path, got {type(image).__name__}")
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc
