"""Core data types and stage protocols shared by every part of vistrieve.

One :class:`Query` type and one :class:`Hit` type pass between all stages; corpora are
mappings from id to :class:`Item`. The stage contracts are ``typing.Protocol`` classes, so
concrete components never need to inherit from them (the sentence-transformers / faiss
style of duck-typed components). Every call is batch-first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

ImageInput: TypeAlias = "Image.Image | str | os.PathLike[str]"
"""An image given in memory (``PIL.Image.Image``) or as a local file path."""

QueryKind = Literal["text", "image", "composed", "dialog"]

DIALOG_SEPARATOR = ", "
"""ChatIR joins the caption and the question/answer rounds with this separator."""


@dataclass(frozen=True)
class DialogTurn:
    """One question/answer round of a retrieval dialog."""

    question: str
    answer: str

    def as_text(self) -> str:
        """The round as ChatIR writes it into a query: ``"question answer"``."""
        q = self.question.strip()
        a = self.answer.strip()
        return f"{q} {a}".strip()


@dataclass(frozen=True)
class Query:
    """A retrieval query: text, image, composed (reference image + modification) or dialog.

    Exactly one of these forms is meant by a query; :attr:`kind` derives it:

    * ``text`` only: a text query (text -> image search).
    * ``image`` only: an image query (image -> text or image -> image search).
    * ``image`` and ``text``: a composed query, the image being the reference and the text
      the modification ("make the circle green").
    * ``dialog`` (with ``text`` as the initial caption): a dialog query, ChatIR style.

    Args:
        text: Query text; the modification text of a composed query; the first caption of a
            dialog.
        image: A ``PIL.Image.Image`` or a path to an image file (query or reference image).
        dialog: Question/answer rounds following the caption in ``text``.
        id: Optional query id, carried into reports.
        metadata: Free-form extra information (never used for scoring).

    Example:
        >>> Query(text="a red circle").kind
        'text'
        >>> Query(text="a shape", dialog=(DialogTurn("what colour?", "red"),)).as_text()
        'a shape, what colour? red'
    """

    text: str | None = None
    image: Any = None
    dialog: tuple[DialogTurn, ...] = ()
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"Query.text must be a str or None, got {type(self.text).__name__}")
        if not isinstance(self.dialog, tuple):
            object.__setattr__(self, "dialog", tuple(self.dialog))
        for turn in self.dialog:
            if not isinstance(turn, DialogTurn):
                raise TypeError(
                    f"Query.dialog must hold DialogTurn objects, got {type(turn).__name__}"
                )
        if self.image is None and not self.dialog and (self.text is None or not self.text.strip()):
            raise ValueError(
                "empty query: give non-blank text, an image, or a dialog "
                "(e.g. Query(text='a red circle'))"
            )
        if self.dialog and self.image is not None:
            raise ValueError("a dialog query cannot also carry an image; use text as the caption")

    @property
    def kind(self) -> QueryKind:
        """Which form this query takes: ``text``, ``image``, ``composed`` or ``dialog``."""
        if self.dialog:
            return "dialog"
        if self.image is not None:
            return "composed" if self.text else "image"
        return "text"

    @property
    def reference_image(self) -> Any:
        """The reference image of a composed query (``None`` for other kinds)."""
        return self.image if self.kind == "composed" else None

    @property
    def modification(self) -> str | None:
        """The modification text of a composed query (``None`` for other kinds)."""
        return self.text if self.kind == "composed" else None

    def as_text(self, rounds: int | None = None, separator: str = DIALOG_SEPARATOR) -> str:
        """The text a text encoder should see for this query.

        For a dialog this is the caption followed by the first ``rounds`` question/answer
        rounds (all of them when ``rounds`` is None), joined ChatIR style. For text and
        composed queries it is :attr:`text`.

        Raises:
            ValueError: for an image-only query, which has no text.
        """
        if self.kind == "image":
            raise ValueError("an image-only query has no text; encode its image instead")
        if rounds is not None and rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        turns = self.dialog if rounds is None else self.dialog[:rounds]
        parts = [self.text.strip()] if self.text and self.text.strip() else []
        parts.extend(t.as_text() for t in turns)
        return separator.join(parts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Query:
        """A query from its JSON form: ``{"text", "image", "dialog", "id"}`` (any subset),
        dialog rounds as ``[question, answer]`` pairs.

        Raises:
            ValueError: unknown fields, malformed dialog rounds, or an empty query.
            TypeError: ``data`` is not a mapping.

        Example:
            >>> Query.from_dict({"text": "a dog", "dialog": [["colour?", "brown"]]}).kind
            'dialog'
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a query must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"text", "image", "dialog", "id"}
        if unknown:
            raise ValueError(
                f"unknown query fields {sorted(unknown)}; use text, image, dialog (and id)"
            )
        dialog = []
        for turn in data.get("dialog") or []:
            if not isinstance(turn, (list, tuple)) or len(turn) != 2:
                raise ValueError(f"dialog turns are [question, answer] pairs, got {turn!r}")
            dialog.append(DialogTurn(str(turn[0]), str(turn[1])))
        qid = data.get("id")
        return cls(
            text=data.get("text"),
            image=data.get("image"),
            dialog=tuple(dialog),
            id=None if qid is None else str(qid),
        )

    def with_text(self, text: str, **metadata: Any) -> Query:
        """A copy whose text is replaced (a rewrite), keeping the id; extra metadata merges in."""
        merged = {**self.metadata, **metadata}
        return replace(self, text=text, metadata=merged)


@dataclass(frozen=True)
class Hit:
    """One ranked result.

    Args:
        id: Id of the corpus item.
        score: The final score that ranks this hit (higher is better).
        scores: The score of every stage that touched this hit, keyed by stage name
            (``{"dense": 0.31, "qformer": 4.2}``), so a pipeline's ranking can be audited.
        metadata: Provenance and display information (``rank``, ``retriever``, ``caption``,
            ``uri`` ...).
    """

    id: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def with_stage(self, stage: str, score: float, *, final: bool = True, **metadata: Any) -> Hit:
        """A copy that records ``score`` under ``stage`` (and makes it final when ``final``)."""
        return Hit(
            id=self.id,
            score=float(score) if final else self.score,
            scores={**self.scores, stage: float(score)},
            metadata={**self.metadata, **metadata},
        )


@dataclass(frozen=True)
class Item:
    """One corpus entry: an image with its captions and labels.

    Args:
        id: Unique id within its corpus.
        image: A ``PIL.Image.Image`` or a path to an image file (``None`` for text-only items).
        captions: Captions of the image; every caption is a positive for the image in the
            5-caption retrieval protocol.
        labels: Class labels (strings or ints); two items are relevant to each other in the
            hashing protocol when they share at least one label.
        metadata: Free-form information (scene graph, source row, ...).
    """

    id: str
    image: Any = None
    captions: tuple[str, ...] = ()
    labels: tuple[Any, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Item.id must be a non-empty str, got {self.id!r}")
        if isinstance(self.captions, str):
            raise TypeError(
                f"Item {self.id!r}: captions must be a sequence of str, not one str "
                "(wrap it: captions=(caption,))"
            )
        if not isinstance(self.captions, tuple):
            object.__setattr__(self, "captions", tuple(self.captions))
        if not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def uri(self) -> str | None:
        """The image path as a string, or None for in-memory or missing images."""
        if isinstance(self.image, (str, os.PathLike)):
            return os.fspath(self.image)
        return None


class Corpus(Mapping[str, Item]):
    """An ordered, immutable mapping from item id to :class:`Item`.

    Raises:
        ValueError: when two items share an id.
    """

    def __init__(self, items: Sequence[Item] | Mapping[str, Item] = ()) -> None:
        values = list(items.values()) if isinstance(items, Mapping) else list(items)
        self._items: dict[str, Item] = {}
        for item in values:
            if item.id in self._items:
                raise ValueError(f"duplicate item id {item.id!r} in corpus")
            self._items[item.id] = item

    def __getitem__(self, key: str) -> Item:
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(f"id {key!r} is not in the corpus ({len(self)} items)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Corpus({len(self)} items)"

    @property
    def ids(self) -> list[str]:
        """Item ids in corpus order."""
        return list(self._items)

    def _extend(self, items: Sequence[Item]) -> None:
        """Append items in place (for retrievers' ``add``: every stage that shares this corpus,
        rerankers included, sees the new items).

        Raises:
            ValueError: an id is already present (nothing is added then).
        """
        seen: set[str] = set()
        for item in items:
            if item.id in self._items or item.id in seen:
                raise ValueError(f"duplicate item id {item.id!r} in corpus")
            seen.add(item.id)
        for item in items:
            self._items[item.id] = item

    def _drop(self, ids: Sequence[str]) -> None:
        """Remove ids in place (for retrievers' ``remove``); unknown ids are ignored."""
        for i in ids:
            self._items.pop(i, None)

    def subset(self, ids: Sequence[str]) -> Corpus:
        """A corpus of the given ids, in the given order."""
        return Corpus([self[i] for i in ids])

    def caption_pairs(self) -> tuple[list[str], list[str]]:
        """All captions and the id of the item each belongs to, in corpus order."""
        texts: list[str] = []
        owners: list[str] = []
        for item in self._items.values():
            texts.extend(item.captions)
            owners.extend([item.id] * len(item.captions))
        return texts, owners


# ---------------------------------------------------------------------------------------
# Stage protocols
# ---------------------------------------------------------------------------------------


@runtime_checkable
class Encoder(Protocol):
    """Maps texts and images to L2-normalised float32 embeddings of shape ``(n, dim)``."""

    name: str
    dim: int

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_image(self, images: Sequence[Any]) -> np.ndarray: ...


@runtime_checkable
class Index(Protocol):
    """A vector index over string ids."""

    dim: int

    @property
    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def add(self, embeddings: np.ndarray, ids: Sequence[str]) -> None: ...

    def remove(self, ids: Sequence[str]) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...


@runtime_checkable
class Retriever(Protocol):
    """Returns the top-``k`` hits for each query, best first."""

    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]: ...


@runtime_checkable
class Reranker(Protocol):
    """Re-scores candidate hits; items are looked up in an injected corpus."""

    def rerank(
        self,
        queries: Sequence[Query],
        candidates: Sequence[Sequence[Hit]],
        top_k: int | None = None,
    ) -> list[list[Hit]]: ...


@runtime_checkable
class QueryRewriter(Protocol):
    """Turns each query into one or more rewritten queries (1 -> n expansions)."""

    def rewrite(self, queries: Sequence[Query]) -> list[list[Query]]: ...


@runtime_checkable
class GenerativeRetriever(Retriever, Protocol):
    """A retriever that assigns identifiers to a corpus and decodes them for queries."""

    def index(self, corpus: Mapping[str, Item]) -> None: ...


@runtime_checkable
class Evaluator(Protocol):
    """Measures a retriever; returns metric name -> value."""

    primary_metric: str

    def __call__(self, retriever: Retriever) -> dict[str, float]: ...


__all__ = [
    "DIALOG_SEPARATOR",
    "Corpus",
    "DialogTurn",
    "Encoder",
    "Evaluator",
    "GenerativeRetriever",
    "Hit",
    "ImageInput",
    "Index",
    "Item",
    "Query",
    "QueryKind",
    "QueryRewriter",
    "Reranker",
    "Retriever",
]
