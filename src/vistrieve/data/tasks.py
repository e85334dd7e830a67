"""Task containers shared by dataset loaders, the shapes world and the evaluators.

Each evaluation task is a small frozen container: image-text retrieval is a
:class:`~vistrieve.types.Corpus` whose items carry captions; composed retrieval is a corpus
plus :class:`ComposedExample` triplets (CIRR / CIRCO / FashionIQ style); dialog retrieval is a
corpus plus :class:`DialogExample` dialogs (VisDial / ChatIR style); hashing benchmarks and
precomputed embeddings are plain arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vistrieve.types import Corpus, DialogTurn, Item, Query


@dataclass(frozen=True)
class ComposedExample:
    """One composed-retrieval triplet: reference image + modification text -> target images.

    Args:
        id: Example id.
        reference_id: Corpus id of the reference image.
        modification: The modification text ("make the circle green").
        target_ids: Corpus ids of every correct target (one for CIRR/FashionIQ, several for
            CIRCO).
        subset_ids: The CIRR ``img_set`` members for R_subset@K (empty when not defined).
        metadata: Free-form extras (edit type, source row, ...).
    """

    id: str
    reference_id: str
    modification: str
    target_ids: tuple[str, ...]
    subset_ids: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.target_ids:
            raise ValueError(f"composed example {self.id!r} has no target ids")
        if not isinstance(self.target_ids, tuple):
            object.__setattr__(self, "target_ids", tuple(self.target_ids))
        if not isinstance(self.subset_ids, tuple):
            object.__setattr__(self, "subset_ids", tuple(self.subset_ids))

    def query(self, corpus: Mapping[str, Item]) -> Query:
        """The composed :class:`Query` (reference image from ``corpus`` + modification)."""
        ref = corpus[self.reference_id]
        if ref.image is None:
            raise ValueError(f"reference {self.reference_id!r} of {self.id!r} has no image")
        return Query(
            text=self.modification,
            image=ref.image,
            id=self.id,
            metadata={"reference_id": self.reference_id},
        )


@dataclass(frozen=True)
class DialogExample:
    """One retrieval dialog: a first caption plus question/answer rounds about a target image.

    Args:
        id: Dialog id.
        target_id: Corpus id of the image the dialog describes.
        caption: The initial (often vague) caption.
        turns: Question/answer rounds in order.
        metadata: Free-form extras.
    """

    id: str
    target_id: str
    caption: str
    turns: tuple[DialogTurn, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.turns, tuple):
            object.__setattr__(self, "turns", tuple(self.turns))

    def query(self, rounds: int | None = None) -> Query:
        """The dialog :class:`Query` after ``rounds`` rounds (all when None; 0 = caption only)."""
        turns = self.turns if rounds is None else self.turns[:rounds]
        return Query(text=self.caption, dialog=turns, id=self.id)


@dataclass(frozen=True)
class ComposedDataset:
    """A corpus and the composed-retrieval examples whose targets live in it."""

    corpus: Corpus
    examples: Sequence[ComposedExample]
    name: str = "composed"


@dataclass(frozen=True)
class DialogDataset:
    """A corpus and the dialogs whose targets live in it."""

    corpus: Corpus
    examples: Sequence[DialogExample]
    name: str = "dialog"


@dataclass(frozen=True)
class PairedEmbeddings:
    """Precomputed embeddings: ``image`` (n_images, d) and ``text`` (n_texts, d) float32.

    ``text_to_image[j]`` is the row of ``image`` that text ``j`` describes.
    """

    image: np.ndarray
    text: np.ndarray
    text_to_image: np.ndarray
    name: str = "embeddings"

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.text.ndim != 2:
            raise ValueError(
                f"embeddings must be 2-D, got image {self.image.shape} and text {self.text.shape}"
            )
        if self.image.shape[1] != self.text.shape[1]:
            raise ValueError(f"image dim {self.image.shape[1]} != text dim {self.text.shape[1]}")
        if self.text_to_image.shape != (self.text.shape[0],):
            raise ValueError(
                f"text_to_image must have shape ({self.text.shape[0]},), "
                f"got {self.text_to_image.shape}"
            )


@dataclass(frozen=True)
class HashingDataset:
    """A cross-modal hashing benchmark in the standard query/database protocol.

    Arrays are float32 features (n, d_modality) and multi-hot labels (n, n_classes) uint8.
    ``train_*`` is what a hashing model may learn from; ``query_*`` are the queries;
    ``db_*`` the retrieval database. Relevance is "shares at least one label".
    """

    name: str
    train_image: np.ndarray
    train_text: np.ndarray
    train_labels: np.ndarray
    query_image: np.ndarray
    query_text: np.ndarray
    query_labels: np.ndarray
    db_image: np.ndarray
    db_text: np.ndarray
    db_labels: np.ndarray
    protocol: str = ""


def items_with_captions(items: Sequence[Item]) -> Corpus:
    """A corpus of only those items that have at least one caption."""
    return Corpus([it for it in items if it.captions])
