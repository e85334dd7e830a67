"""Dense first stage: a dual encoder (CLIP-style) over a vector index.

Text -> image, image -> text and image -> image retrieval over a corpus, plus the two
baselines the later stages are measured against: composed queries by late fusion of the
reference-image and modification-text embeddings, and dialog queries by encoding the
ChatIR-style concatenation of the caption and the rounds.

Building an index is robust to bad data and to interruption, as clip-retrieval's inference
is: unreadable images are skipped with a warning and listed in the :class:`BuildReport`, and
when a ``directory`` is given the embeddings are written in chunks so that a build that was
interrupted resumes without re-encoding what it had already saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vistrieve.indexes import create_index
from vistrieve.types import Corpus, Encoder, Hit, Index, Item, Query
from vistrieve.utils.io import (
    FORMAT_VERSION,
    atomic_directory,
    atomic_save_npy,
    atomic_write_json,
    load_npy,
    read_json,
)

logger = logging.getLogger(__name__)

RETRIEVER_FILE = "retriever.json"
PARTIAL_DIR = ".partial"
ComposedMode = Literal["sum", "image", "text"]


@dataclass
class BuildReport:
    """What a build did: counts, skipped images with reasons, time, resumed chunks."""

    n_items: int = 0
    n_indexed: int = 0
    n_captions: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed_chunks: int = 0
    encoded_chunks: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


def _fingerprint(encoder_name: str, ids: Sequence[str], sources: Sequence[str]) -> str:
    h = hashlib.sha256(encoder_name.encode())
    for i, s in zip(ids, sources, strict=True):
        h.update(b"\0" + i.encode() + b"\1" + s.encode())
    return h.hexdigest()


def _source(item: Item) -> str:
    return item.uri or f"<memory:{item.id}>"


class DenseRetriever:
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
        self.encoder = encoder
        self.image_index = image_index
        self.text_index = text_index
        self.corpus: Corpus = Corpus(corpus) if corpus is not None else Corpus()
        self.name = name
        self.composed_mode = composed_mode
        self.build_report: BuildReport | None = None

    # ------------------------------------------------------------------ building
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
            index_captions: Also build a caption index for image -> text retrieval.
            **kwargs: Passed to the constructor (``name``, ``composed_mode``).

        Returns:
            The retriever, with ``build_report`` set (also saved as ``build_report.json``).
        """
        t0 = time.perf_counter()
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        corpus = Corpus(corpus)
        if len(corpus) == 0:
            raise ValueError("cannot build a retriever over an empty corpus")
        report = BuildReport(n_items=len(corpus))
        with_image = [it for it in corpus.values() if it.image is not None]
        ids = [it.id for it in with_image]
        sources = [_source(it) for it in with_image]
        partial: Path | None = None
        if directory is not None:
            partial = Path(directory) / PARTIAL_DIR
            fp = _fingerprint(encoder.name, ids, sources)
            meta = {"fingerprint": fp, "chunk_size": chunk_size, "encoder": encoder.name}
            meta_file = partial / "meta.json"
            if partial.exists() and (
                not resume or not meta_file.is_file() or read_json(meta_file) != meta
            ):
                if resume:
                    logger.info(
                        "partial build in %s is for other data or settings; restarting", partial
                    )
                shutil.rmtree(partial)
            partial.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta_file, meta)

        emb_chunks: list[np.ndarray] = []
        id_chunks: list[list[str]] = []
        from tqdm.auto import tqdm

        n_chunks = (len(with_image) + chunk_size - 1) // chunk_size
        for c in tqdm(range(n_chunks), desc="index images", disable=n_chunks < 2, unit="chunk"):
            chunk = with_image[c * chunk_size : (c + 1) * chunk_size]
            emb_file = partial / f"chunk-{c:06d}.npy" if partial else None
            info_file = partial / f"chunk-{c:06d}.json" if partial else None
            if emb_file and info_file and emb_file.is_file() and info_file.is_file():
                try:
                    info = read_json(info_file)
                    emb = load_npy(emb_file)
                    if emb.shape != (len(info["ids"]), encoder.dim):
                        raise ValueError(f"chunk {c} has shape {emb.shape}")
                except (ValueError, KeyError) as exc:
                    logger.warning("re-encoding damaged chunk %s: %s", emb_file, exc)
                else:
                    emb_chunks.append(emb)
                    id_chunks.append(list(info["ids"]))
                    report.skipped.extend(info["skipped"])
                    report.resumed_chunks += 1
                    continue
            emb, ok, failures = _encode_tolerant(encoder, [it.image for it in chunk])
            skipped = [
                {"id": chunk[f.index].id, "source": f.source, "error": f.error} for f in failures
            ]
            chunk_ids = [chunk[i].id for i in ok]
            if emb_file and info_file:
                atomic_save_npy(emb_file, emb)
                # The info file is written last: its presence marks the chunk complete.
                atomic_write_json(info_file, {"ids": chunk_ids, "skipped": skipped})
            emb_chunks.append(emb)
            id_chunks.append(chunk_ids)
            report.skipped.extend(skipped)
            report.encoded_chunks += 1

        image_index = create_index(index, encoder.dim, model=encoder.name)
        all_ids = [i for chunk_ids in id_chunks for i in chunk_ids]
        if all_ids:
            image_index.add(np.concatenate(emb_chunks), all_ids)
        report.n_indexed = len(all_ids)
        if report.skipped:
            logger.warning(
                "%d of %d images could not be read and were skipped (see the build report)",
                len(report.skipped),
                len(with_image),
            )

        text_index = None
        if index_captions:
            texts, owners = corpus.caption_pairs()
            if texts:
                cap_ids = _caption_ids(corpus)
                text_index = create_index("exact", encoder.dim, model=encoder.name)
                text_index.add(encoder.encode_text(texts), cap_ids)
                report.n_captions = len(texts)
        retriever = cls(encoder, image_index, corpus, text_index=text_index, **kwargs)
        report.seconds = time.perf_counter() - t0
        retriever.build_report = report
        if directory is not None:
            retriever.save(directory)
        return retriever

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

    def retrieve(
        self,
        queries: Sequence[Query],
        k: int = 10,
        *,
        target: Literal["image", "text"] = "image",
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first.

        Args:
            queries: Queries of any kind (text, image, composed, dialog).
            k: Hits per query.
            target: ``"image"`` searches the image index (ids are item ids); ``"text"``
                searches the caption index (ids are ``"{item_id}#{j}"``).

        Returns:
            One list per query; each hit's ``scores[name]`` holds the cosine similarity and
            its metadata the ``rank``, the ``retriever`` name, ``item_id``, ``uri`` and
            ``caption``.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if isinstance(queries, Query):
            raise TypeError("retrieve expects a sequence of queries; wrap a single one in a list")
        if not queries:
            return []
        index = self.image_index if target == "image" else self.text_index
        if index is None:
            raise ValueError("no caption index: build with index_captions=True for target='text'")
        emb = self.embed_queries(queries)
        raw = index.search(emb, k)
        return [[self._decorate(h, r, target) for r, h in enumerate(hits)] for hits in raw]

    def _decorate(self, hit: Hit, rank: int, target: str) -> Hit:
        item_id, caption_no = hit.id, None
        if target == "text":
            item_id, _, j = hit.id.rpartition("#")
            caption_no = int(j)
        meta: dict[str, Any] = {"rank": rank, "retriever": self.name, "item_id": item_id}
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
        """Encode and add new items (images and captions); unreadable images are skipped."""
        t0 = time.perf_counter()
        report = BuildReport(n_items=len(items))
        merged = Corpus([*self.corpus.values(), *items])
        with_image = [it for it in items if it.image is not None]
        if with_image:
            emb, ok, failures = _encode_tolerant(self.encoder, [it.image for it in with_image])
            report.skipped = [
                {"id": with_image[f.index].id, "source": f.source, "error": f.error}
                for f in failures
            ]
            if ok:
                self.image_index.add(emb, [with_image[i].id for i in ok])
            report.n_indexed = len(ok)
        if self.text_index is not None:
            new = Corpus(list(items))
            texts, _ = new.caption_pairs()
            if texts:
                self.text_index.add(self.encoder.encode_text(texts), _caption_ids(new))
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
        indexed = set(self.image_index.ids)
        removed = self.image_index.remove([i for i in ids if i in indexed])
        if self.text_index is not None:
            caps = [c for c in self.text_index.ids if c.rpartition("#")[0] in gone]
            if caps:
                self.text_index.remove(caps)
        self.corpus = Corpus([it for it in self.corpus.values() if it.id not in gone])
        return removed

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save indexes, corpus manifest and settings into ``directory`` atomically."""
        from vistrieve.encoders import encoder_spec

        with atomic_directory(directory) as tmp:
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
                    "kind": "dense",
                    "name": self.name,
                    "encoder": encoder_spec(self.encoder),
                    "encoder_name": self.encoder.name,
                    "dim": self.encoder.dim,
                    "composed_mode": self.composed_mode,
                    "text_index": self.text_index is not None,
                },
            )

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], encoder: Encoder | None = None, **overrides: Any
    ) -> DenseRetriever:
        """Load a retriever saved by :meth:`save`.

        Args:
            directory: The saved directory.
            encoder: The encoder to use; by default it is rebuilt from the saved spec.
            **overrides: Encoder runtime options when rebuilding (device, batch_size ...).

        Raises:
            FileNotFoundError: ``directory`` is not a saved retriever.
            IndexMismatchError: ``encoder`` is not the model the index was built with.
        """
        from vistrieve.encoders import create_encoder
        from vistrieve.indexes import load_index

        root = Path(directory)
        meta_file = root / RETRIEVER_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{root} is not a vistrieve retriever directory (no {RETRIEVER_FILE}); "
                "build one with `vistrieve index`"
            )
        meta = read_json(meta_file)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{root} has format version {meta.get('format_version')}, "
                f"this vistrieve reads {FORMAT_VERSION}"
            )
        if encoder is None:
            if not meta.get("encoder"):
                raise ValueError(
                    f"{root} was built with a hand-made encoder {meta.get('encoder_name')!r}; "
                    "pass the same encoder to load()"
                )
            encoder = create_encoder(meta["encoder"], **overrides)
        image_index = load_index(
            root / "image_index", expected_model=encoder.name, expected_dim=encoder.dim
        )
        text_index = None
        if meta.get("text_index"):
            text_index = load_index(
                root / "text_index", expected_model=encoder.name, expected_dim=encoder.dim
            )
        corpus = _read_corpus(root / "corpus.jsonl")
        r = cls(
            encoder,
            image_index,
            corpus,
            text_index=text_index,
            name=meta.get("name", "dense"),
            composed_mode=meta.get("composed_mode", "sum"),
        )
        report_file = root / "build_report.json"
        if report_file.is_file():
            r.build_report = BuildReport(**read_json(report_file))
        return r


def _encode_tolerant(
    encoder: Encoder, images: list[Any]
) -> tuple[np.ndarray, list[int], list[Any]]:
    tolerant = getattr(encoder, "encode_image_tolerant", None)
    if tolerant is not None:
        return tolerant(images)
    # Encoders without tolerant decoding: encode one by one so a bad file is skipped alone.
    from vistrieve.encoders.base import ImageFailure
    from vistrieve.utils.images import ImageLoadError, describe_image

    rows: list[np.ndarray] = []
    ok: list[int] = []
    failures: list[ImageFailure] = []
    for i, img in enumerate(images):
        try:
            rows.append(encoder.encode_image([img]))
            ok.append(i)
        except (ImageLoadError, OSError) as exc:
            failures.append(ImageFailure(i, describe_image(img), str(exc)))
    emb = np.concatenate(rows) if rows else np.empty((0, encoder.dim), dtype=np.float32)
    return emb, ok, failures


def _caption_ids(corpus: Corpus) -> list[str]:
    return [f"{it.id}#{j}" for it in corpus.values() for j in range(len(it.captions))]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return None


def _write_corpus(corpus: Corpus, path: Path) -> None:
    from vistrieve.utils.io import atomic_write_bytes

    lines = []
    for it in corpus.values():
        meta = {k: v for k, v in it.metadata.items() if _jsonable(v) is not None}
        lines.append(
            json.dumps(
                {
                    "id": it.id,
                    "image": it.uri,
                    "captions": list(it.captions),
                    "labels": list(it.labels),
                    "metadata": meta,
                },
                ensure_ascii=False,
            )
        )
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _read_corpus(path: Path) -> Corpus:
    if not path.is_file():
        raise FileNotFoundError(f"missing corpus file {path}")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: invalid JSON ({exc}); the file is corrupt") from exc
        items.append(
            Item(
                row["id"],
                image=row.get("image"),
                captions=tuple(row.get("captions", ())),
                labels=tuple(row.get("labels", ())),
                metadata=row.get("metadata", {}),
            )
        )
    return Corpus(items)
