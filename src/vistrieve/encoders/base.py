"""Shared machinery for image-text encoders: batched image loading with failure capture.

Images are decoded and preprocessed inside ``torch.utils.data.DataLoader`` workers (as
open_clip_train and clip-retrieval do), while the model runs in the main process. A file
that cannot be decoded is not an exception that aborts a long build: the worker returns a
failure record, and the caller decides whether to raise (single queries) or skip and report
(corpus builds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vistrieve.utils.images import ImageLoadError, describe_image, load_image

logger = logging.getLogger(__name__)

Preprocess = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be decoded: its position in the input and the reason."""

    index: int
    source: str
    error: str


class _ImageDataset(Dataset[tuple[int, torch.Tensor | None, str | None]]):
    def __init__(self, images: Sequence[Any], preprocess: Preprocess) -> None:
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = load_image(self.images[i])
            return i, self.preprocess(img), None
        except (ImageLoadError, OSError, ValueError, TypeError) as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(
    batch: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    ok = [(i, t) for i, t, err in batch if t is not None and err is None]
    failed = [(i, err or "unknown error") for i, t, err in batch if t is None or err is not None]
    tensor = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensor, failed


def default_num_workers() -> int:
    """Decode workers to use by default: none on tiny machines, else up to 4."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 1 else min(4, cpus)


def iter_image_batches(
    images: Sequence[Any],
    preprocess: Preprocess,
    *,
    batch_size: int,
    num_workers: int,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[ImageFailure]]]:
    """Yield ``(indices, pixel_batch, failures)`` over ``images`` in input order.

    ``pixel_batch`` is the stacked preprocessed tensor (len(indices), C, H, W) of the images
    that decoded, ``None`` when none in the batch did.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dataset = _ImageDataset(images, preprocess)
    # Workers only pay off when there is enough work to amortise their start-up.
    workers = num_workers if len(images) > batch_size else 0
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    for indices, tensor, failed in loader:
        failures = [ImageFailure(i, describe_image(images[i]), err) for i, err in failed]
        yield indices, tensor, failures


def raise_on_failures(failures: Sequence[ImageFailure]) -> None:
    """Raise an :class:`ImageLoadError` naming the first failed image, if any."""
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ImageLoadError(f"cannot read image {first.source}: {first.error}{more}")


def to_numpy_normalized(features: torch.Tensor) -> np.ndarray:
    """L2-normalise rows in float32 and return a contiguous numpy array."""
    feats = features.detach().float()
    feats = torch.nn.functional.normalize(feats, dim=-1)
    return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate a batch of texts: a sequence of non-blank strings."""
    if isinstance(texts, str):
        raise TypeError("encode_text expects a sequence of strings, not one string; wrap it")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text #{i} is {type(t).__name__}, expected str")
        if not t.strip():
            raise ValueError(f"text #{i} is empty; give a non-blank query")
    return out


def show_progress(n: int, batch_size: int, flag: bool | None) -> bool:
    """Whether to show a progress bar: explicit flag, else only for multi-batch work."""
    return flag if flag is not None else n > 4 * batch_size


class TorchEncoder:
    """Base class for torch encoders: batching, progress, failure handling, normalisation.

    Subclasses set ``name``, ``dim``, ``preprocess`` and implement
    :meth:`_image_features` (pixel batch -> features) and :meth:`_text_features`
    (list of texts -> features). Embeddings come back L2-normalised float32.
    """

    name: str
    dim: int
    preprocess: Preprocess

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.progress = progress
        self.image_passes = 0
        self.text_passes = 0

    # -- subclass hooks --------------------------------------------------------------
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: Non-blank strings.

        Returns:
            float32 array (len(texts), dim), rows L2-normalised.
        """
        from tqdm.auto import tqdm

        items = check_texts(texts)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        starts = range(0, len(items), self.batch_size)
        bar = show_progress(len(items), self.batch_size, self.progress)
        with torch.inference_mode():
            for s in tqdm(starts, desc="encode text", disable=not bar, unit="batch"):
                batch = items[s : s + self.batch_size]
                out[s : s + len(batch)] = to_numpy_normalized(self._text_features(batch))
                self.text_passes += len(batch)
        return out

    def encode_image(self, images: Sequence[Any]) -> np.ndarray:
        """Embed images, raising on the first unreadable one.

        Args:
            images: PIL images or paths to image files.

        Returns:
            float32 array (len(images), dim), rows L2-normalised.

        Raises:
            ImageLoadError: an image cannot be read; the message names it.
        """
        emb, ok, failures = self.encode_image_tolerant(images)
        raise_on_failures(failures)
        assert len(ok) == len(images)
        return emb

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed batch (B, C, H, W); returns (B, dim) float32."""
        with torch.inference_mode():
            feats = self._image_features(pixels.to(self.device))
        self.image_passes += pixels.shape[0]
        return to_numpy_normalized(feats)

    def encode_image_tolerant(
        self, images: Sequence[Any], *, desc: str = "encode images"
    ) -> tuple[np.ndarray, list[int], list[ImageFailure]]:
        """Embed images, skipping the ones that cannot be read.

        Returns:
            ``(embeddings, indices, failures)``: float32 (len(indices), dim) embeddings of
            the readable images, their positions in ``images`` (ascending), and one
            :class:`ImageFailure` per unreadable image.
        """
        from tqdm.auto import tqdm

        if isinstance(images, (str, bytes)):
            raise TypeError("encode_image expects a sequence of images, not one path; wrap it")
        chunks: list[np.ndarray] = []
        indices: list[int] = []
        failures: list[ImageFailure] = []
        bar = show_progress(len(images), self.batch_size, self.progress)
        batches = iter_image_batches(
            images, self.preprocess, batch_size=self.batch_size, num_workers=self.num_workers
        )
        total = (len(images) + self.batch_size - 1) // self.batch_size
        for idx, pixels, failed in tqdm(
            batches, total=total, desc=desc, disable=not bar, unit="batch"
        ):
            for f in failed:
                logger.warning("skipping unreadable image %s: %s", f.source, f.error)
            failures.extend(failed)
            if pixels is not None:
                chunks.append(self.encode_pixels(pixels))
                indices.extend(idx)
        emb = np.concatenate(chunks) if chunks else np.empty((0, self.dim), dtype=np.float32)
        return emb, indices, failures
