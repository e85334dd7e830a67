"""Dense first stage: a dual encoder (CLIP-style) over a vector index.

Text -> image, image -> text and image -> image retrieval over a corpus, plus the two
baselines the later stages are measured against: composed queries by late fusion of the
reference-image and modification-text embeddings, and dialog queries by encoding the
ChatIR-style concatenation of the caption and the rounds.

Building, updates and persistence come from :class:`~vistrieve.retrievers.base.IndexedRetriever`:
unreadable images are skipped and reported, and when a ``directory`` is given the
embeddings are written in chunks so that an interrupted build resumes without re-encoding.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from vistrieve.indexes import create_index, load_index
from vistrieve.retrievers.base import BuildReport, IndexedRetriever
from vistrieve.types import Corpus, Encoder, Hit, Index, Item, Query

logger = logging.getLogger(__name__)

ComposedMode = Literal["sum", "image", "text"]


class DenseRetriever(IndexedRetriever):
    """Dual-encoder retrieval over an image index (and optionally a caption index).

    Args:
        encoder: Maps texts and images to normalised embeddings.
        image_index: Index over the corpus images' embeddings (ids = item ids).
        corpus: The items, used for hit metadata (captions, uri) and by later stages.
        text_index: Index over caption embeddings for image -> text retrieval; its ids are
            ``"{item_id}#{j}"`` for the j-th caption of an item.
        name: Stage name recorded in every hit's ``scores``.
        composed_mode: How composed queries are embedded without a rewriter: ``"sum"`` of
            the normalised reference-image and text embeddings (the usual late-fusion
            baseline), ``"image"`` only or ``"text"`` only.

    Example:
        >>> from vistrieve.data.shapes import ShapesWorld
        >>> from vistrieve.encoders import create_encoder
        >>> corpus = ShapesWorld(n_train=0, n_val=0, n_test=50).corpus("test")
        >>> r = DenseRetriever.build(create_encoder("clip-tiny-test"), corpus)
        >>> len(r.retrieve([Query(text="a red circle")], k=3)[0])
        3
    """

    kind: ClassVar[str] = "dense"

    def __init__(
        self,
        encoder: Encoder,
        image_index: Index,
        corpus: Mapping[str, Item] | None = None,
        *,
        text_index: Index | None = None,
        name: str = "dense",
        composed_mode: ComposedMode = "sum",
    ) -> None:
        if image_index.dim != encoder.dim:
            raise ValueError(
                f"index dim {image_index.dim} does not match encoder {encoder.name!r} "
                f"dim {encoder.dim}"
            )
        if composed_mode not in ("sum", "image", "text"):
            raise ValueError(
                f"composed_mode must be 'sum', 'image' or 'text', got {composed_mode!r}"
            )
        super().__init__(encoder, image_index, corpus, text_index=text_index, name=name)
        self.composed_mode = composed_mode

    @classmethod
    def build(
        cls,
        encoder: Encoder,
        corpus: Mapping[str, Item],
        *,
        index: str | Index = "exact",
        directory: str | os.PathLike[str] | None = None,
        resume: bool = True,
        chunk_size: int = 2048,
        index_captions: bool = True,
        max_image_pixels: int | None = None,
        **kwargs: Any,
    ) -> DenseRetriever:
        """Encode a corpus and index it.

        Args:
            encoder: The dual encoder.
            corpus: Items to index; items without an image are indexed by caption only.
            index: Index spec for the images (``"exact"``, ``"exact:float16"``,
                ``"faiss:HNSW32"``, ``"faiss:IVF256,PQ16"`` ...) or an empty index.
            directory: Where to save the retriever; also holds resumable partial results.
            resume: Reuse chunks already encoded in ``directory`` by an interrupted build.
            chunk_size: Images per saved chunk.
            max_image_pixels: Images declaring more pixels (width x height, read from the
                file header) are skipped and reported without being decoded; None leaves
                only Pillow's own decompression-bomb check (images it refuses are skipped
                and reported too).
            index_captions: Also build a caption index for image -> text retrieval.
            **kwargs: Passed to the constructor (``name``, ``composed_mode``).

        Returns:
            The retriever, with ``build_report`` set (also saved as ``build_report.json``).
        """
        t0 = time.perf_counter()
        corpus = Corpus(corpus)
        if len(corpus) == 0:
            raise ValueError("cannot build a retriever over an empty corpus")
        report = BuildReport(n_items=len(corpus))
        retriever = cls._empty(encoder, corpus, index, index_captions, **kwargs)
        retriever._fill(
            corpus,
            report,
            t0,
            directory=directory,
            resume=resume,
            chunk_size=chunk_size,
            max_image_pixels=max_image_pixels,
            index_captions=index_captions,
        )
        return retriever

    @classmethod
    def from_embeddings(
        cls,
        encoder: Encoder,
        corpus: Mapping[str, Item],
        embeddings: np.ndarray,
        ids: Sequence[str],
        *,
        skipped: Sequence[Mapping[str, str]] = (),
        index: str | Index = "exact",
        directory: str | os.PathLike[str] | None = None,
        index_captions: bool = True,
        **kwargs: Any,
    ) -> DenseRetriever:
        """Index image embeddings computed elsewhere (e.g. by a distributed encoding run),
        then the captions as :meth:`build` does, and save the same directory it saves.

        Args:
            encoder: The dual encoder the embeddings came from (its spec is saved, and it
                encodes the captions and later the queries).
            corpus: All items; ``ids`` name those whose image was encoded.
            embeddings: float32 ``(len(ids), encoder.dim)``, one row per id.
            ids: Item ids of the rows, in corpus order.
            skipped: Records (``id``, ``source``, ``error``) of images that could not be
                read, kept in the build report.
            index: Index spec for the images, as in :meth:`build`.
            directory: Where to save the retriever (None: keep it in memory).
            index_captions: Also build a caption index for image -> text retrieval.
            **kwargs: Passed to the constructor (``name``, ``composed_mode``).

        Raises:
            ValueError: the corpus is empty, the shape does not match ``ids`` and the
                encoder, values are not finite, or an id is unknown, repeated or out of
                corpus order.
        """
        t0 = time.perf_counter()
        corpus = Corpus(corpus)
        if len(corpus) == 0:
            raise ValueError("cannot build a retriever over an empty corpus")
        ids = list(ids)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(ids), encoder.dim):
            raise ValueError(
                f"embeddings have shape {embeddings.shape}, expected ({len(ids)}, {encoder.dim}) "
                f"for {len(ids)} ids and encoder {encoder.name!r}"
            )
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings hold NaN or infinite values; encode them again")
        position = {item_id: n for n, item_id in enumerate(corpus.keys())}
        last = -1
        for item_id in ids:
            n = position.get(item_id)
            if n is None:
                raise ValueError(f"embedding id {item_id!r} is not an item of the corpus")
            if n <= last:
                raise ValueError(
                    f"embedding id {item_id!r} is repeated or out of corpus order; give the "
                    "rows in corpus order"
                )
            last = n
        report = BuildReport(
            n_items=len(corpus), n_indexed=len(ids), skipped=[dict(r) for r in skipped]
        )
        retriever = cls._empty(encoder, corpus, index, index_captions, **kwargs)
        if ids:
            retriever._add_features(retriever.image_index, embeddings, ids)
        if index_captions:
            retriever._index_captions(corpus, report)
            if retriever.text_index is not None and not len(retriever.text_index):
                retriever.text_index = None
        retriever._finish_build(report, t0, directory)
        return retriever

    @classmethod
    def _empty(
        cls, encoder: Encoder, corpus: Corpus, index: Any, index_captions: bool, **kwargs: Any
    ) -> DenseRetriever:
        """A retriever over ``corpus`` with empty image (and caption) indexes."""
        text_index = create_index("exact", encoder.dim, model=encoder.name)
        return cls(
            encoder,
            create_index(index, encoder.dim, model=encoder.name),
            corpus,
            text_index=text_index if index_captions else None,
            **kwargs,
        )

    # ------------------------------------------------------------------ hooks
    def _add_features(self, index: Any, features: np.ndarray, ids: Sequence[str]) -> None:
        index.add(features, ids)

    def _search(self, index: Any, queries: Sequence[Query], k: int) -> list[list[Hit]]:
        return index.search(self.embed_queries(queries), k)

    def _meta(self) -> dict[str, Any]:
        return {"composed_mode": self.composed_mode}

    @classmethod
    def _load_parts(
        cls, root: Path, meta: dict[str, Any], encoder: Encoder
    ) -> tuple[Any, Any, dict[str, Any]]:
        image_index = load_index(
            root / "image_index", expected_model=encoder.name, expected_dim=encoder.dim
        )
        text_index = None
        if meta.get("text_index"):
            text_index = load_index(
                root / "text_index", expected_model=encoder.name, expected_dim=encoder.dim
            )
        return image_index, text_index, {"composed_mode": meta.get("composed_mode", "sum")}

    # ------------------------------------------------------------------ querying
    def embed_queries(self, queries: Sequence[Query]) -> np.ndarray:
        """Embed queries of any kind into the index space: float32 (len(queries), dim)."""
        out = np.empty((len(queries), self.encoder.dim), dtype=np.float32)
        text_rows = [i for i, q in enumerate(queries) if q.kind in ("text", "dialog")]
        image_rows = [i for i, q in enumerate(queries) if q.kind == "image"]
        composed_rows = [i for i, q in enumerate(queries) if q.kind == "composed"]
        if text_rows:
            out[text_rows] = self.encoder.encode_text([queries[i].as_text() for i in text_rows])
        if image_rows:
            out[image_rows] = self.encoder.encode_image([queries[i].image for i in image_rows])
        if composed_rows:
            mode = self.composed_mode
            img = (
                self.encoder.encode_image([queries[i].image for i in composed_rows])
                if mode != "text"
                else None
            )
            txt = (
                self.encoder.encode_text([queries[i].text or "" for i in composed_rows])
                if mode != "image"
                else None
            )
            if img is not None and txt is not None:
                fused = img + txt
                fused /= np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)
                out[composed_rows] = fused
            else:
                out[composed_rows] = img if img is not None else txt
        return out
