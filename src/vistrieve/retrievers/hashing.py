"""Hashing first stage: an encoder, a trained CMSEH hash model and binary Hamming indexes.

:class:`HashRetriever` has the interface of :class:`~vistrieve.retrievers.dense.DenseRetriever`
(``retrieve(queries, k, target="image" | "text")``, ``add``, ``remove``, ``save`` /
``load``), so it drops into :class:`~vistrieve.pipeline.RetrievalPipeline` and the evaluation
runner. Corpus images are encoded, hashed with the image head and stored in a
:class:`~vistrieve.indexes.BinaryHashIndex`; captions likewise with the
text head (ids ``"{item_id}#{j}"``). A query is encoded by its own modality (text and dialog
queries by the text head, image queries by the image head) and ranked by Hamming distance;
with ``rescore=True`` the top ``k * rescore_multiplier`` candidates are re-ranked by the
cosine similarity of the encoder's float embeddings (stored next to the codes), as
sentence-transformers' ``semantic_search_faiss`` re-scores binary search results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vistrieve.hashing.heads import CMSEH
from vistrieve.indexes.binary import BinaryHashIndex, BinaryIndexType
from vistrieve.retrievers.base import BuildReport, IndexedRetriever
from vistrieve.types import Corpus, Encoder, Hit, Item, Query

logger = logging.getLogger(__name__)


def _index_model(encoder: Encoder, hash_model: CMSEH) -> str:
    return f"{hash_model.name}@{encoder.name}"


class HashRetriever(IndexedRetriever):
    """Binary-code retrieval over an image index (and optionally a caption index).

    Args:
        encoder: The dual encoder whose features the hash model was trained on.
        hash_model: A trained :class:`~vistrieve.hashing.heads.CMSEH` with hash heads.
        image_index: Binary index of the corpus images' codes (ids = item ids).
        corpus: The items, for hit metadata and later stages.
        text_index: Binary index of the captions' codes (ids ``"{item_id}#{j}"``).
        name: Stage name recorded in every hit's ``scores``.
        rescore: Re-rank the Hamming candidates by float cosine similarity; needs indexes
            built with re-scoring vectors.
        rescore_multiplier: Candidates per result for re-scoring (default: the index's).

    Example:
        >>> from vistrieve.data.shapes import ShapesWorld
        >>> from vistrieve.encoders import create_encoder
        >>> from vistrieve.hashing.heads import CMSEHConfig
        >>> enc = create_encoder("clip-tiny-test")
        >>> model = CMSEH(CMSEHConfig(image_dim=enc.dim, text_dim=enc.dim, bits=16, d_model=32))
        >>> corpus = ShapesWorld(n_train=0, n_val=0, n_test=20).corpus("test")
        >>> r = HashRetriever.build(enc, model, corpus)
        >>> len(r.retrieve([Query(text="a red circle")], k=3)[0])
        3
    """

    kind: ClassVar[str] = "hash"

    def __init__(
        self,
        encoder: Encoder,
        hash_model: CMSEH,
        image_index: BinaryHashIndex,
        corpus: Mapping[str, Item] | None = None,
        *,
        text_index: BinaryHashIndex | None = None,
        name: str = "hash",
        rescore: bool = False,
        rescore_multiplier: int | None = None,
    ) -> None:
        if not hash_model.config.hashing:
            raise ValueError(
                "the hash model has no hash heads (hashing=False); train one with bits"
            )
        dims = (hash_model.config.image_dim, hash_model.config.text_dim)
        if dims != (encoder.dim, encoder.dim):
            raise ValueError(
                f"hash model expects image/text features of dims {dims} but encoder "
                f"{encoder.name!r} makes dim {encoder.dim}"
            )
        for label, index in (("image", image_index), ("text", text_index)):
            if index is not None and index.bits != hash_model.bits:
                raise ValueError(
                    f"{label} index holds {index.bits}-bit codes but the hash model makes "
                    f"{hash_model.bits}-bit codes"
                )
            if rescore and index is not None and len(index) and index.rescore_dim is None:
                raise ValueError(
                    f"rescore=True needs re-scoring vectors in the {label} index; build with "
                    "rescore=True"
                )
        super().__init__(encoder, image_index, corpus, text_index=text_index, name=name)
        self.hash_model = hash_model.eval()
        self.rescore = rescore
        self.rescore_multiplier = rescore_multiplier

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        encoder: Encoder,
        hash_model: CMSEH,
        corpus: Mapping[str, Item],
        *,
        index_type: BinaryIndexType = "flat",
        index_captions: bool = True,
        rescore: bool = False,
        directory: str | os.PathLike[str] | None = None,
        index_kwargs: Mapping[str, Any] | None = None,
        resume: bool = True,
        chunk_size: int = 2048,
        max_image_pixels: int | None = None,
        **kwargs: Any,
    ) -> HashRetriever:
        """Encode a corpus, hash it and index the codes.

        Args:
            encoder: The dual encoder.
            hash_model: Trained hash model for the encoder's features.
            corpus: Items to index; unreadable images are skipped and reported.
            index_type: ``"flat"``, ``"hnsw"`` or ``"ivf"``.
            index_captions: Also index the captions (for ``target="text"``).
            rescore: Store the float embeddings and re-rank Hamming candidates with them.
            directory: Save the retriever there; also holds resumable partial results.
            index_kwargs: Options of :class:`BinaryHashIndex` (``nlist``, ``ef_search`` ...).
            resume: Reuse chunks already encoded in ``directory`` by an interrupted build.
            chunk_size: Images per saved chunk.
            max_image_pixels: Images declaring more pixels (width x height, read from the
                file header) are skipped and reported without being decoded; None leaves
                only Pillow's own decompression-bomb check (images it refuses are skipped
                and reported too).
            **kwargs: Constructor options (``name``, ``rescore_multiplier``).

        Returns:
            The retriever, with ``build_report`` set.
        """
        t0 = time.perf_counter()
        corpus = Corpus(corpus)
        if len(corpus) == 0:
            raise ValueError("cannot build a retriever over an empty corpus")
        model_name = _index_model(encoder, hash_model)
        opts = dict(index_kwargs or {})
        report = BuildReport(n_items=len(corpus))
        image_index = BinaryHashIndex(
            hash_model.bits, index_type=index_type, model=model_name, **opts
        )
        text_index = BinaryHashIndex(
            hash_model.bits, index_type="flat", model=model_name, **_flat_opts(opts)
        )
        r = cls(
            encoder,
            hash_model,
            image_index,
            corpus,
            text_index=text_index if index_captions else None,
            rescore=rescore,
            **kwargs,
        )
        r._fill(
            corpus,
            report,
            t0,
            directory=directory,
            resume=resume,
            chunk_size=chunk_size,
            max_image_pixels=max_image_pixels,
            index_captions=index_captions,
        )
        return r

    # ------------------------------------------------------------------ hooks
    def _add_features(self, index: Any, features: np.ndarray, ids: Sequence[str]) -> None:
        codes = (
            self.hash_model.image_codes(features)
            if index is self.image_index
            else self.hash_model.text_codes(features)
        )
        index.add(codes, ids, rescore_vectors=features if self._stores_floats(index) else None)

    def _stores_floats(self, index: BinaryHashIndex) -> bool:
        # A fresh index stores float vectors when the retriever re-scores; a filled one
        # keeps doing what it was built to do.
        return bool(index.rescore_dim) if len(index) else self.rescore

    def _search(self, index: Any, queries: Sequence[Query], k: int) -> list[list[Hit]]:
        codes, feats = self.encode_queries(queries)
        return index.search(
            codes,
            k,
            rescore_queries=feats if self.rescore else None,
            rescore_multiplier=self.rescore_multiplier,
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "bits": self.hash_model.bits,
            "rescore": self.rescore,
            "rescore_multiplier": self.rescore_multiplier,
        }

    def _save_parts(self, directory: Path) -> None:
        self.hash_model.save(directory / "hash_model")

    @classmethod
    def _load_parts(
        cls, root: Path, meta: dict[str, Any], encoder: Encoder
    ) -> tuple[Any, Any, dict[str, Any]]:
        hash_model = CMSEH.load(root / "hash_model")
        model_name = _index_model(encoder, hash_model)
        image_index = BinaryHashIndex.load(
            root / "image_index", expected_model=model_name, expected_bits=hash_model.bits
        )
        text_index = None
        if meta.get("text_index"):
            text_index = BinaryHashIndex.load(
                root / "text_index", expected_model=model_name, expected_bits=hash_model.bits
            )
        kwargs = {
            "hash_model": hash_model,
            "rescore": bool(meta.get("rescore", False)),
            "rescore_multiplier": meta.get("rescore_multiplier"),
        }
        return image_index, text_index, kwargs

    # ------------------------------------------------------------------ querying
    def encode_queries(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        """Codes and float features of queries, each encoded by its own modality.

        Returns:
            ``(codes, features)``: int8 ``(n, bits)`` in {-1, +1} and float32 ``(n, dim)``.

        Raises:
            ValueError: a composed query (reference image + text), which has two modalities.
        """
        n = len(queries)
        codes = np.empty((n, self.hash_model.bits), dtype=np.int8)
        feats = np.empty((n, self.encoder.dim), dtype=np.float32)
        composed = [i for i, q in enumerate(queries) if q.kind == "composed"]
        if composed:
            raise ValueError(
                f"query {composed[0]} is composed (image + text); the hash retriever hashes one "
                "modality per query: rewrite it into text first (a query rewriter) or use the "
                "dense retriever"
            )
        text_rows = [i for i, q in enumerate(queries) if q.kind in ("text", "dialog")]
        image_rows = [i for i, q in enumerate(queries) if q.kind == "image"]
        if text_rows:
            f = self.encoder.encode_text([queries[i].as_text() for i in text_rows])
            feats[text_rows] = f
            codes[text_rows] = self.hash_model.text_codes(f)
        if image_rows:
            f = self.encoder.encode_image([queries[i].image for i in image_rows])
            feats[image_rows] = f
            codes[image_rows] = self.hash_model.image_codes(f)
        return codes, feats


def _flat_opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The index options that apply to the flat caption index."""
    return {k: v for k, v in opts.items() if k in ("rescore_multiplier", "rescore_dtype")}


__all__ = ["HashRetriever"]
