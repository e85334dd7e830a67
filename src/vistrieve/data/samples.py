"""A handful of permissively licensed real photos, read from the scikit-image wheel.

scikit-image ships sample photos in its package folder (``skimage/data``); vistrieve reads
the files from there without importing scikit-image (``pip install --no-deps
scikit-image`` is enough; ``./run.sh`` installs it so). Each photo's licence is the one
scikit-image's documentation states for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vistrieve.types import Corpus, Item

__all__ = ["SAMPLE_PHOTOS", "SamplePhoto", "sample_photos", "sample_photos_dir"]


@dataclass(frozen=True)
class SamplePhoto:
    """One sample photo: its file in ``skimage/data``, a caption, and its licence."""

    file: str
    caption: str
    licence: str


SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("astronaut.png", "an astronaut in a spacesuit in front of a flag",
                "public domain (NASA)"),
    SamplePhoto("chelsea.png", "a tabby cat", "CC0 (Stefan van der Walt)"),
    SamplePhoto("coffee.png", "a cup of coffee on a saucer", "CC0 (Rachel Michetti)"),
    SamplePhoto("rocket.jpg", "a rocket lifting off from a launch pad",
                "public domain (SpaceX)"),
    SamplePhoto("hubble_deep_field.jpg", "galaxies in deep space", "public domain (NASA)"),
    SamplePhoto("camera.png", "a man with a camera on a tripod, black and white",
                "CC0 (Lav Varshney)"),
    SamplePhoto("brick.png", "a brick wall", "CC0 (CC0Textures)"),
    SamplePhoto("grass.png", "grass", "CC0 (linolafett)"),
    SamplePhoto("gravel.png", "gravel", "CC0 (CC0Textures)"),
)  # fmt: skip


def sample_photos_dir() -> Path:
    """The folder holding scikit-image's sample photos.

    Raises:
        FileNotFoundError: scikit-image is not installed (the message says how to install
            it), or its data folder lacks one of :data:`SAMPLE_PHOTOS`.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the sample photos come from scikit-image's wheel, which is not installed: "
            "pip install --no-deps scikit-image"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [p.file for p in SAMPLE_PHOTOS if not (folder / p.file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"scikit-image's data folder {folder} lacks {', '.join(missing)}; reinstall "
            "scikit-image (pip install --force-reinstall --no-deps scikit-image)"
        )
    return folder


def sample_photos(dest: str | os.PathLike[str]) -> Corpus:
    """Copy the sample photos into ``dest`` and return them as a corpus.

    Args:
        dest: Folder to copy the photos into (created when missing).

    Returns:
        One item per photo: id = file stem, image = the copied file, one caption, and
        ``metadata["licence"]``.

    Raises:
        FileNotFoundError: see :func:`sample_photos_dir`.

    Example:
        >>> corpus = sample_photos("photos")  # doctest: +SKIP
        >>> corpus["chelsea"].captions  # doctest: +SKIP
        ('a tabby cat',)
    """
    src = sample_photos_dir()
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for photo in SAMPLE_PHOTOS:
        target = out / photo.file
        shutil.copyfile(src / photo.file, target)
        items.append(
            Item(
                id=Path(photo.file).stem,
                image=str(target),
                captions=(photo.caption,),
                metadata={"licence": photo.licence},
            )
        )
    return Corpus(items)
