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
from typing import Any, Literal

import numpy as np

from vistrieve.hashing.heads import CMSEH
from vistrieve.indexes import BinaryHashIndex
from vistrieve.indexes.binary import BinaryIndexType
from vistrieve.retrievers.dense import (
    BuildReport,
    _caption_ids,
    _encode_tolerant,
    _read_corpus,
    _write_corpus,
)
from vistrieve.types import Corpus, Encoder, Hit, Item, Query
from vistrieve.utils.io import FORMAT_VERSION, atomic_directory, atomic_write_json, read_json

logger = logging.getLogger(__name__)

RETRIEVER_FILE = "retriever.json"


def _index_model(encoder: Encoder, hash_model: CMSEH) -> str:
    return f"{hash_model.name}@{encoder.name}"


class HashRetriever:
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
        self.encoder = encoder
        self.hash_model = hash_model.eval()
        self.image_index = image_index
        self.text_index = text_index
        self.corpus: Corpus = Corpus(corpus) if corpus is not None else Corpus()
        self.name = name
        self.rescore = rescore
        self.rescore_multiplier = rescore_multiplier
        self.build_report: BuildReport | None = None

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
            directory: Save the retriever there.
            index_kwargs: Options of :class:`BinaryHashIndex` (``nlist``, ``ef_search`` ...).
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
        with_image = [it for it in corpus.values() if it.image is not None]
        if with_image:
            feats, ok, failures = _encode_tolerant(encoder, [it.image for it in with_image])
            report.skipped = [
                {"id": with_image[f.index].id, "source": f.source, "error": f.error}
                for f in failures
            ]
            if ok:
                image_index.add(
                    hash_model.image_codes(feats),
                    [with_image[i].id for i in ok],
                    rescore_vectors=feats if rescore else None,
                )
            report.n_indexed = len(ok)
        text_index = None
        if index_captions:
            texts, _ = corpus.caption_pairs()
            if texts:
                text_index = BinaryHashIndex(
                    hash_model.bits, index_type="flat", model=model_name, **_flat_opts(opts)
                )
                feats = encoder.encode_text(texts)
                text_index.add(
                    hash_model.text_codes(feats),
                    _caption_ids(corpus),
                    rescore_vectors=feats if rescore else None,
                )
                report.n_captions = len(texts)
        r = cls(
            encoder,
            hash_model,
            image_index,
            corpus,
            text_index=text_index,
            rescore=rescore,
            **kwargs,
        )
        report.seconds = time.perf_counter() - t0
        r.build_report = report
        if report.skipped:
            logger.warning("%d images could not be read and were skipped", len(report.skipped))
        if directory is not None:
            r.save(directory)
        return r

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

    def retrieve(
        self,
        queries: Sequence[Query],
        k: int = 10,
        *,
        target: Literal["image", "text"] = "image",
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first.

        Args:
            queries: Text, dialog or image queries.
            k: Hits per query.
            target: ``"image"`` searches the image codes (ids are item ids); ``"text"`` the
                caption codes (ids are ``"{item_id}#{j}"``).

        Returns:
            One list per query. ``scores[name]`` and ``score`` hold ``-hamming`` (or the
            re-scored cosine with ``rescore``); metadata holds ``rank``, ``retriever``,
            ``item_id``, ``hamming``, ``uri`` and ``caption``.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if isinstance(queries, Query):
            raise TypeError("retrieve expects a sequence of queries; wrap a single one in a list")
        if target not in ("image", "text"):
            raise ValueError(f"target must be 'image' or 'text', got {target!r}")
        if not queries:
            return []
        index = self.image_index if target == "image" else self.text_index
        if index is None:
            raise ValueError("no caption index: build with index_captions=True for target='text'")
        codes, feats = self.encode_queries(queries)
        raw = index.search(
            codes,
            k,
            rescore_queries=feats if self.rescore else None,
            rescore_multiplier=self.rescore_multiplier,
        )
        return [[self._decorate(h, r, target) for r, h in enumerate(hits)] for hits in raw]

    def _decorate(self, hit: Hit, rank: int, target: str) -> Hit:
        item_id, caption_no = hit.id, None
        if target == "text":
            item_id, _, j = hit.id.rpartition("#")
            caption_no = int(j)
        meta: dict[str, Any] = {
            "rank": rank,
            "retriever": self.name,
            "item_id": item_id,
            "hamming": hit.metadata.get("hamming"),
        }
        item = self.corpus.get(item_id)
        if item is not None:
            meta["uri"] = item.uri
            if caption_no is not None:
                meta["caption"] = item.captions[caption_no]
            elif item.captions:
                meta["caption"] = item.captions[0]
        return Hit(hit.id, hit.score, scores={self.name: hit.score}, metadata=meta)

    # ------------------------------------------------------------------ updates
    def add(self, items: Sequence[Item]) -> BuildReport:
        """Encode, hash and add new items (images and captions)."""
        t0 = time.perf_counter()
        report = BuildReport(n_items=len(items))
        merged = Corpus([*self.corpus.values(), *items])
        with_image = [it for it in items if it.image is not None]
        if with_image:
            feats, ok, failures = _encode_tolerant(self.encoder, [it.image for it in with_image])
            report.skipped = [
                {"id": with_image[f.index].id, "source": f.source, "error": f.error}
                for f in failures
            ]
            if ok:
                self.image_index.add(
                    self.hash_model.image_codes(feats),
                    [with_image[i].id for i in ok],
                    rescore_vectors=feats if self.image_index.rescore_dim else None,
                )
            report.n_indexed = len(ok)
        if self.text_index is not None:
            new = Corpus(list(items))
            texts, _ = new.caption_pairs()
            if texts:
                feats = self.encoder.encode_text(texts)
                self.text_index.add(
                    self.hash_model.text_codes(feats),
                    _caption_ids(new),
                    rescore_vectors=feats if self.text_index.rescore_dim else None,
                )
                report.n_captions = len(texts)
        self.corpus = merged
        report.seconds = time.perf_counter() - t0
        return report

    def remove(self, ids: Sequence[str]) -> int:
        """Delete items (and their captions) by id; returns how many images were removed."""
        unknown = [i for i in ids if i not in self.corpus]
        if unknown:
            raise KeyError(f"ids not in the retriever's corpus: {unknown[:5]}")
        gone = set(ids)
        removed = self.image_index.remove([i for i in ids if i in self.image_index])
        if self.text_index is not None:
            caps = [c for c in self.text_index.ids if c.rpartition("#")[0] in gone]
            if caps:
                self.text_index.remove(caps)
        self.corpus = Corpus([it for it in self.corpus.values() if it.id not in gone])
        return removed

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save hash model, indexes, corpus and settings into ``directory`` atomically."""
        from vistrieve.encoders import encoder_spec

        with atomic_directory(directory) as tmp:
            self.hash_model.save(tmp / "hash_model")
            self.image_index.save(tmp / "image_index")
            if self.text_index is not None:
                self.text_index.save(tmp / "text_index")
            _write_corpus(self.corpus, tmp / "corpus.jsonl")
            if self.build_report is not None:
                atomic_write_json(tmp / "build_report.json", self.build_report.to_dict())
            atomic_write_json(
                tmp / RETRIEVER_FILE,
                {
                    "format_version": FORMAT_VERSION,
                    "kind": "hash",
                    "name": self.name,
                    "encoder": encoder_spec(self.encoder),
                    "encoder_name": self.encoder.name,
                    "dim": self.encoder.dim,
                    "bits": self.hash_model.bits,
                    "rescore": self.rescore,
                    "rescore_multiplier": self.rescore_multiplier,
                    "text_index": self.text_index is not None,
                },
            )

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], encoder: Encoder | None = None, **overrides: Any
    ) -> HashRetriever:
        """Load a retriever saved by :meth:`save`.

        Args:
            directory: The saved directory.
            encoder: The encoder to use; by default rebuilt from the saved spec.
            **overrides: Encoder runtime options when rebuilding (device, batch_size ...).

        Raises:
            FileNotFoundError: ``directory`` is not a saved hash retriever.
            IndexMismatchError: an index holds codes of another bit count or model.
        """
        from vistrieve.encoders import create_encoder

        root = Path(directory)
        meta_file = root / RETRIEVER_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{root} is not a vistrieve retriever (no {RETRIEVER_FILE})")
        meta = read_json(meta_file)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != "hash":
            raise ValueError(
                f"{root} is not a format-{FORMAT_VERSION} hash retriever (format "
                f"{meta.get('format_version')!r}, kind {meta.get('kind')!r})"
            )
        if encoder is None:
            if not meta.get("encoder"):
                raise ValueError(
                    f"{root} was built with a hand-made encoder {meta.get('encoder_name')!r}; "
                    "pass the same encoder to load()"
                )
            encoder = create_encoder(meta["encoder"], **overrides)
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
        r = cls(
            encoder,
            hash_model,
            image_index,
            _read_corpus(root / "corpus.jsonl"),
            text_index=text_index,
            name=meta.get("name", "hash"),
            rescore=bool(meta.get("rescore", False)),
            rescore_multiplier=meta.get("rescore_multiplier"),
        )
        report_file = root / "build_report.json"
        if report_file.is_file():
            r.build_report = BuildReport(**read_json(report_file))
        return r


def _flat_opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The index options that apply to the flat caption index."""
    return {k: v for k, v in opts.items() if k in ("rescore_multiplier", "rescore_dtype")}


__all__ = ["HashRetriever"]
