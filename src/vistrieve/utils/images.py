"""Image loading with errors that name the bad input, under a pixel-count limit.

A PNG of a few hundred bytes can declare 20000 x 20000 pixels (a decompression bomb):
decoding it takes gigabytes. :func:`load_image` and :func:`check_image_pixels` read the
header first and refuse an image over ``max_pixels`` with
:class:`~vistrieve.errors.ImageTooLargeError` before anything is decoded; Pillow's own bomb
check (``DecompressionBombError``) is reported the same way, so callers that skip unreadable
images (corpus builds) skip bombs too instead of aborting.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image, UnidentifiedImageError

from vistrieve.errors import ImageLoadError, ImageTooLargeError

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Pixel limit when none is given: Pillow's own ``Image.MAX_IMAGE_PIXELS`` default (about
9459 x 9459, a 256 MiB RGBA image)."""


def describe_image(image: Any) -> str:
    """A short description of an image input for messages and reports."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, Image.Image):
        return f"<in-memory {image.mode} image {image.size[0]}x{image.size[1]}>"
    return f"<{type(image).__name__}>"


def _too_large(source: str, width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image {source} is {width}x{height} = {width * height} pixels, over the limit of "
        f"{max_pixels}; it was not decoded (raise the limit, e.g. --max-image-pixels, if "
        "the image is genuine)"
    )


def check_image_pixels(image: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Raise when ``image`` (a path: only its header is read; or a PIL image) has more than
    ``max_pixels`` pixels.

    Raises:
        ImageTooLargeError: the image is over the limit.
        ImageLoadError: the file is missing or not an image.
    """
    if max_pixels is None:
        return
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > max_pixels:
            raise _too_large(describe_image(image), w, h, max_pixels)
        return
    if not isinstance(image, (str, os.PathLike)):
        return
    path = os.fspath(image)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image {path} is a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc
    if w * h > max_pixels:
        raise _too_large(path, w, h, max_pixels)


def load_image(image: Any, mode: str = "RGB", *, max_pixels: int | None = None) -> Image.Image:
    """Return ``image`` as a fully decoded PIL image in ``mode``.

    Args:
        image: A ``PIL.Image.Image`` or a path to an image file.
        mode: PIL mode to convert to.
        max_pixels: Largest width x height decoded from a file (checked on the header,
            before decoding); None leaves only Pillow's own bomb check (twice
            ``PIL.Image.MAX_IMAGE_PIXELS``). In-memory images are already decoded and are
            not checked.

    Raises:
        ImageTooLargeError: the file declares more than ``max_pixels`` pixels, or Pillow
            finds it a decompression bomb.
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
            w, h = im.size  # the header only: nothing decoded yet
            if max_pixels is not None and w * h > max_pixels:
                raise _too_large(path, w, h, max_pixels)
            im.load()
            return im.convert(mode)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image {path} is a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageLoadError",
    "ImageTooLargeError",
    "check_image_pixels",
    "describe_image",
    "load_image",
]
