"""The shared base of retrievers that encode a corpus into an image index and a caption index.

:class:`IndexedRetriever` holds everything the dense and the hashing first stages share: the
corpus, resumable chunked encoding of the corpus images (unreadable images skipped and
reported in a :class:`BuildReport`, as clip-retrieval's inference is tolerant), incremental
``add`` and ``remove`` by id, query validation, hit decoration (``rank``, ``item_id``,
``uri``, ``caption``), and atomic ``save`` / ``load`` of a self-describing directory. A
subclass says only how features become index entries, how queries are embedded and
searched, and what it saves beside the indexes.

Layout of a saved retriever directory::

    retriever.json      {"format_version", "kind", "name", "encoder" (spec), "encoder_name",
                         "dim", "text_index", <kind-specific fields>}
    image_index/        the image index (see vistrieve.indexes)
    text_index/         the caption index, ids "{item_id}#{j}" (optional)
    corpus.jsonl        one item per line: id, image path, captions, labels, metadata
    images/             images that were added in memory (e.g. uploaded), as PNG
    build_report.json   what the build did (optional)

``retriever.json`` records the size and SHA-256 of ``corpus.jsonl`` (``"files"``), and a load
checks that the indexes' ids follow the corpus (same items, same order), so a damaged,
truncated or hand-edited directory is refused with the file named instead of answering
with hits that lost their image path and caption.
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
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from vistrieve.errors import IntegrityError
from vistrieve.types import Corpus, Encoder, Hit, Item, Query
from vistrieve.utils.io import (
    FORMAT_VERSION,
    atomic_directory,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    check_files,
    check_replaceable,
    file_record,
    load_npy,
    read_json,
    recover_directory,
)

logger = logging.getLogger(__name__)

RETRIEVER_FILE = "retriever.json"
PARTIAL_DIR = ".partial"
IMAGES_DIR = "images"
"""Where images added in memory (not from a file) are stored with a saved retriever."""
Target = Literal["image", "text"]
_R = TypeVar("_R", bound="IndexedRetriever")


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


def read_retriever_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``retriever.json`` of a saved retriever directory.

    Raises:
        FileNotFoundError: ``directory`` is not a saved retriever.
        ValueError: it was written in another format version.
    """
    root = Path(directory)
    recover_directory(root)
    meta_file = root / RETRIEVER_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{root} is not a vistrieve retriever directory (no {RETRIEVER_FILE}); "
            "build one with `vistrieve index`"
        )
    meta = read_json(meta_file)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(
            f"{root} has format version {version}, this vistrieve reads {FORMAT_VERSION}"
        )
    return meta


def caption_ids(corpus: Mapping[str, Item]) -> list[str]:
    """Caption index ids ``"{item_id}#{j}"`` of every caption, in corpus order."""
    return [f"{it.id}#{j}" for it in corpus.values() for j in range(len(it.captions))]


def encode_tolerant(encoder: Encoder, images: list[Any]) -> tuple[np.ndarray, list[int], list[Any]]:
    """Encode images, skipping unreadable ones: ``(embeddings, ok positions, failures)``."""
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


def encode_items(
    encoder: Encoder, chunk: Sequence[Item], max_image_pixels: int | None = None
) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """Encode the images of ``chunk``: ``(embeddings, ids of the encoded items, skip
    records)``. Images over ``max_image_pixels`` are skipped from their headers, unreadable
    ones by the encoder; each skip record holds ``id``, ``source`` and ``error``, in chunk
    order. This is what every build (local chunks or distributed shards) runs per chunk."""
    from vistrieve.utils.images import ImageLoadError, check_image_pixels, describe_image

    skipped: list[dict[str, str]] = []
    todo: list[Item] = []
    for it in chunk:
        try:
            check_image_pixels(it.image, max_image_pixels)
        except ImageLoadError as exc:
            logger.warning("skipping image %s: %s", describe_image(it.image), exc)
            skipped.append({"id": it.id, "source": describe_image(it.image), "error": str(exc)})
            continue
        todo.append(it)
    emb, ok, failures = encode_tolerant(encoder, [it.image for it in todo])
    skipped += [{"id": todo[f.index].id, "source": f.source, "error": f.error} for f in failures]
    # Report in corpus order whatever the reason.
    order = {it.id: n for n, it in enumerate(chunk)}
    skipped.sort(key=lambda r: order[r["id"]])
    return emb, [todo[i].id for i in ok], skipped


def _fingerprint(encoder_name: str, ids: Sequence[str], sources: Sequence[str]) -> str:
    h = hashlib.sha256(encoder_name.encode())
    for i, s in zip(ids, sources, strict=True):
        h.update(b"\0" + i.encode("utf-8", "surrogateescape"))
        h.update(b"\1" + s.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _source(item: Item) -> str:
    return item.uri or f"<memory:{item.id}>"


def _content_stamp(item: Item) -> str:
    """What identifies the bytes of an item's image: size and mtime of a file, a hash of the
    pixels of an in-memory image. A changed stamp means the chunk must be encoded again."""
    uri = item.uri
    if uri is not None:
        try:
            st = os.stat(uri)
        except OSError:
            return f"{uri}\0missing"
        return f"{uri}\0{st.st_size}\0{st.st_mtime_ns}"
    image = item.image
    tobytes = getattr(image, "tobytes", None)
    if callable(tobytes):
        size = getattr(image, "size", "")
        mode = getattr(image, "mode", "")
        digest = hashlib.sha256(tobytes()).hexdigest()
        return f"<memory:{item.id}>\0{mode}\0{size}\0{digest}"
    return f"<memory:{item.id}>"


def chunk_stamp(items: Sequence[Item]) -> str:
    """A stamp of the images of ``items`` (ids, file sizes and mtimes, or pixel hashes):
    equal stamps mean the same images, so saved embeddings of them can be reused."""
    return _fingerprint("", [it.id for it in items], [_content_stamp(it) for it in items])


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def stored_image_name(item_id: str) -> str:
    """File name under ``images/`` for an item whose image was added in memory."""
    return hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:24] + ".png"


def _store_images(corpus: Mapping[str, Item], directory: Path) -> dict[str, str]:
    """Write in-memory images into ``directory/images`` (and carry over images stored there
    before); returns item id -> path relative to ``directory``."""
    stored: dict[str, str] = {}
    for it in corpus.values():
        if it.image is None:
            continue
        uri = it.uri
        own = stored_image_name(it.id)
        if uri is not None and (Path(uri).name != own or Path(uri).parent.name != IMAGES_DIR):
            continue  # an image file outside the retriever: referenced by its path
        rel = f"{IMAGES_DIR}/{own}"
        dest = directory / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if uri is not None:
            try:
                os.link(uri, dest)  # the same bytes as the previous save: no copy
            except OSError:
                shutil.copyfile(uri, dest)
        else:
            it.image.save(dest, format="PNG")
        stored[it.id] = rel
    return stored


def write_corpus(
    corpus: Mapping[str, Item], path: Path, stored: Mapping[str, str] | None = None
) -> None:
    """Write items as JSON lines (id, image path, captions, labels, JSON-able metadata).

    Image paths are absolute, or relative to the file's folder for images stored with the
    retriever (``stored``: item id -> relative path), never relative to the working
    directory.
    """
    lines = []
    stored = stored or {}
    for it in corpus.values():
        meta = {k: v for k, v in it.metadata.items() if _jsonable(v)}
        image = stored.get(it.id)
        if image is None and it.uri is not None:
            image = str(Path(it.uri).resolve())
        lines.append(
            json.dumps(
                {
                    "id": it.id,
                    "image": image,
                    "captions": list(it.captions),
                    "labels": list(it.labels),
                    "metadata": meta,
                },
                ensure_ascii=False,
            )
        )
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _image_path(value: str | None, root: Path) -> str | None:
    if value is None or Path(value).is_absolute():
        return value
    inside = root / value
    if inside.exists() or not Path(value).exists():
        return str(inside)
    # Written by an older version relative to the working directory it was built in.
    logger.warning("image path %r is relative to the working directory; re-save the index", value)
    return value


def read_corpus(path: Path) -> Corpus:
    """Read a corpus written by :func:`write_corpus` (relative image paths are taken from the
    file's folder).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line is not valid JSON.
    """
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
                image=_image_path(row.get("image"), path.parent),
                captions=tuple(row.get("captions", ())),
                labels=tuple(row.get("labels", ())),
                metadata=row.get("metadata", {}),
            )
        )
    return Corpus(items)


def _is_subsequence(part: Sequence[str], whole: Sequence[str]) -> str | None:
    """None when ``part`` appears in ``whole`` in the same order, else the first id of
    ``part`` that breaks it (absent from ``whole``, or out of order)."""
    position = {v: n for n, v in enumerate(whole)}
    last = -1
    for v in part:
        n = position.get(v)
        if n is None or n <= last:
            return v
        last = n
    return None


def check_consistency(root: Path, corpus: Corpus, image_index: Any, text_index: Any) -> None:
    """Check that the indexes hold the corpus's items in corpus order: every image-index id
    is a corpus item (items whose image could not be read are absent), every caption-index
    id names an existing caption, and both follow the order of ``corpus.jsonl``.

    Raises:
        IntegrityError: an id is missing from the corpus (``corpus.jsonl`` truncated or
            replaced) or out of order (``ids.json`` edited); the files are named.
    """
    ids = list(corpus.keys())
    bad = _is_subsequence(list(image_index.ids), ids)
    if bad is not None:
        where = "is not in" if bad not in corpus else "is out of order with"
        raise IntegrityError(
            f"{root}: image index id {bad!r} (image_index/ids.json) {where} the corpus "
            f"({root / 'corpus.jsonl'}, {len(ids)} items): the two files do not belong "
            "together (truncated, edited or mixed from two builds); rebuild the index or "
            "restore it from a backup",
            root,
        )
    if text_index is not None:
        bad = _is_subsequence(list(text_index.ids), caption_ids(corpus))
        if bad is not None:
            raise IntegrityError(
                f"{root}: caption index id {bad!r} (text_index/ids.json) names no caption of "
                f"{root / 'corpus.jsonl'} in corpus order; rebuild the index or restore it "
                "from a backup",
                root,
            )


class IndexedRetriever:
    """Shared corpus, build, update, query and persistence logic of index-backed retrievers.

    Subclasses set :attr:`kind` and implement :meth:`_new_image_index`,
    :meth:`_new_text_index`, :meth:`_add_features`, :meth:`_search`, and for persistence
    :meth:`_meta` / :meth:`_save_parts` / :meth:`_load_parts`.

    Args:
        encoder: Maps texts and images to normalised embeddings.
        image_index: Index over the corpus images (ids = item ids).
        corpus: The items, used for hit metadata (captions, uri) and by later stages.
        text_index: Index over caption entries for image -> text retrieval; its ids are
            ``"{item_id}#{j}"`` for the j-th caption of an item.
        name: Stage name recorded in every hit's ``scores``.
    """

    kind: ClassVar[str] = "base"

    def __init__(
        self,
        encoder: Encoder,
        image_index: Any,
        corpus: Mapping[str, Item] | None = None,
        *,
        text_index: Any = None,
        name: str,
    ) -> None:
        self.encoder = encoder
        self.image_index = image_index
        self.text_index = text_index
        self.corpus: Corpus = Corpus(corpus) if corpus is not None else Corpus()
        self.name = name
        self.build_report: BuildReport | None = None

    # ------------------------------------------------------------------ subclass hooks
    def _add_features(self, index: Any, features: np.ndarray, ids: Sequence[str]) -> None:
        """Add encoder features of ``ids`` to ``index`` (embed, hash ...)."""
        raise NotImplementedError

    def _search(self, index: Any, queries: Sequence[Query], k: int) -> list[list[Hit]]:
        """Raw index hits of ``queries`` in ``index`` (ids and scores, best first)."""
        raise NotImplementedError

    def _meta(self) -> dict[str, Any]:
        """Kind-specific fields of ``retriever.json``."""
        return {}

    def _save_parts(self, directory: Path) -> None:
        """Write what the retriever needs beside its indexes (e.g. a hash model)."""

    @classmethod
    def _load_parts(
        cls, root: Path, meta: dict[str, Any], encoder: Encoder
    ) -> tuple[Any, Any, dict[str, Any]]:
        """``(image_index, text_index or None, constructor kwargs)`` of a saved directory."""
        raise NotImplementedError

    # ------------------------------------------------------------------ building
    def _encode_corpus(
        self,
        corpus: Corpus,
        report: BuildReport,
        *,
        directory: str | os.PathLike[str] | None,
        resume: bool,
        chunk_size: int,
        max_image_pixels: int | None = None,
    ) -> None:
        """Encode the corpus images in resumable chunks and add them to the image index.

        Each chunk's record holds a stamp of its images (file size and mtime, or a pixel
        hash for in-memory images): a chunk whose images changed since an interrupted build
        is encoded again on resume, never reused. Images over ``max_image_pixels`` (read
        from their headers) are skipped and reported without being decoded.

        Raises:
            OverwriteRefusedError: ``directory`` exists and is not a retriever directory
                (nor empty, nor an interrupted build).
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if max_image_pixels is not None and max_image_pixels <= 0:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        encoder = self.encoder
        with_image = [it for it in corpus.values() if it.image is not None]
        ids = [it.id for it in with_image]
        partial: Path | None = None
        if directory is not None:
            check_replaceable(directory, RETRIEVER_FILE, allow=(PARTIAL_DIR,))
            partial = Path(directory) / PARTIAL_DIR
            fp = _fingerprint(encoder.name, ids, [_source(it) for it in with_image])
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

        from tqdm.auto import tqdm

        emb_chunks: list[np.ndarray] = []
        id_chunks: list[list[str]] = []
        n_chunks = (len(with_image) + chunk_size - 1) // chunk_size
        for c in tqdm(range(n_chunks), desc="index images", disable=n_chunks < 2, unit="chunk"):
            chunk = with_image[c * chunk_size : (c + 1) * chunk_size]
            emb_file = partial / f"chunk-{c:06d}.npy" if partial else None
            info_file = partial / f"chunk-{c:06d}.json" if partial else None
            stamp = chunk_stamp(chunk) if partial else ""
            if emb_file and info_file and emb_file.is_file() and info_file.is_file():
                try:
                    info = read_json(info_file)
                    if info.get("stamp") != stamp:
                        raise ValueError("its images changed since it was encoded")
                    emb = load_npy(emb_file)
                    if emb.shape != (len(info["ids"]), encoder.dim):
                        raise ValueError(f"chunk {c} has shape {emb.shape}")
                    if not np.isfinite(emb).all():
                        raise ValueError(f"chunk {c} holds NaN or infinite values")
                except (ValueError, KeyError, AttributeError) as exc:
                    logger.warning("re-encoding chunk %s: %s", emb_file, exc)
                else:
                    emb_chunks.append(emb)
                    id_chunks.append(list(info["ids"]))
                    report.skipped.extend(info["skipped"])
                    report.resumed_chunks += 1
                    continue
            emb, chunk_ids, skipped = self._encode_chunk(chunk, max_image_pixels)
            if emb_file and info_file:
                atomic_save_npy(emb_file, emb)
                # The info file is written last: its presence marks the chunk complete.
                atomic_write_json(info_file, {"ids": chunk_ids, "skipped": skipped, "stamp": stamp})
            emb_chunks.append(emb)
            id_chunks.append(chunk_ids)
            report.skipped.extend(skipped)
            report.encoded_chunks += 1

        all_ids = [i for chunk_ids in id_chunks for i in chunk_ids]
        if all_ids:
            self._add_features(self.image_index, np.concatenate(emb_chunks), all_ids)
        report.n_indexed = len(all_ids)
        if report.skipped:
            logger.warning(
                "%d of %d images could not be read and were skipped (see the build report)",
                len(report.skipped),
                len(with_image),
            )

    def _encode_chunk(
        self, chunk: Sequence[Item], max_image_pixels: int | None
    ) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
        """Embeddings, ids and skip records of one chunk (see :func:`encode_items`)."""
        return encode_items(self.encoder, chunk, max_image_pixels)

    def _fill(
        self,
        corpus: Corpus,
        report: BuildReport,
        t0: float,
        *,
        directory: str | os.PathLike[str] | None,
        resume: bool,
        chunk_size: int,
        max_image_pixels: int | None,
        index_captions: bool,
    ) -> None:
        """Encode a new retriever's corpus (images, then captions when asked) and save it.

        The shared tail of every ``build``: the images go through :meth:`_encode_corpus`
        (resumable chunks), the captions into the text index, which is dropped when the
        corpus has none; the report's time is set and the retriever saved to ``directory``.
        """
        self._encode_corpus(
            corpus,
            report,
            directory=directory,
            resume=resume,
            chunk_size=chunk_size,
            max_image_pixels=max_image_pixels,
        )
        if index_captions:
            self._index_captions(corpus, report)
            if self.text_index is not None and not len(self.text_index):
                self.text_index = None
        self._finish_build(report, t0, directory)

    def _index_captions(self, corpus: Mapping[str, Item], report: BuildReport) -> None:
        texts, _ = Corpus(corpus).caption_pairs()
        if texts and self.text_index is not None:
            self._add_features(
                self.text_index, self.encoder.encode_text(texts), caption_ids(corpus)
            )
            report.n_captions = len(texts)

    def _finish_build(
        self, report: BuildReport, t0: float, directory: str | os.PathLike[str] | None
    ) -> None:
        report.seconds = time.perf_counter() - t0
        self.build_report = report
        if directory is not None:
            self.save(directory)

    # ------------------------------------------------------------------ querying
    def retrieve(
        self,
        queries: Sequence[Query],
        k: int = 10,
        *,
        target: Target = "image",
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first.

        Args:
            queries: Queries of the kinds the retriever embeds.
            k: Hits per query.
            target: ``"image"`` searches the image index (ids are item ids); ``"text"``
                searches the caption index (ids are ``"{item_id}#{j}"``).

        Returns:
            One list per query; each hit's ``scores[name]`` holds the stage's score and its
            metadata the ``rank``, the ``retriever`` name, ``item_id``, ``uri`` and
            ``caption`` (plus what the index reports, e.g. ``hamming``).
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
        # Never more than the index holds: nothing downstream is sized by a caller's k.
        raw = self._search(index, queries, max(1, min(int(k), len(index))))
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
            **hit.metadata,
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
        """Encode and add new items (images and captions); unreadable images are skipped."""
        t0 = time.perf_counter()
        report = BuildReport(n_items=len(items))
        seen: set[str] = set()
        for it in items:
            if it.id in self.corpus or it.id in seen:
                raise ValueError(f"duplicate item id {it.id!r} in corpus")
            seen.add(it.id)
        with_image = [it for it in items if it.image is not None]
        if with_image:
            emb, ok, failures = encode_tolerant(self.encoder, [it.image for it in with_image])
            report.skipped = [
                {"id": with_image[f.index].id, "source": f.source, "error": f.error}
                for f in failures
            ]
            if ok:
                self._add_features(self.image_index, emb, [with_image[i].id for i in ok])
            report.n_indexed = len(ok)
        if self.text_index is not None:
            self._index_captions(Corpus(list(items)), report)
        # In place: rerankers and sessions that share this corpus see the new items.
        self.corpus._extend(items)
        report.seconds = time.perf_counter() - t0
        return report

    def remove(self, ids: Sequence[str]) -> int:
        """Delete items (and their captions) by id; returns how many images were removed."""
        unknown = [i for i in ids if i not in self.corpus]
        if unknown:
            raise KeyError(f"ids not in the retriever's corpus: {unknown[:5]}")
        gone = set(ids)
        indexed = set(self.image_index.ids)
        removed = int(self.image_index.remove([i for i in ids if i in indexed]))
        if self.text_index is not None:
            caps = [c for c in self.text_index.ids if c.rpartition("#")[0] in gone]
            if caps:
                self.text_index.remove(caps)
        self.corpus._drop(list(gone))
        return removed

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save indexes, corpus, settings and the encoder's spec into ``directory``
        atomically (the directory holds the old or the new retriever, never a mix).

        Raises:
            OverwriteRefusedError: ``directory`` exists and is not a retriever directory
                (nor empty, nor an interrupted build): a folder of other files is never
                replaced.
        """
        from vistrieve.encoders import encoder_spec

        with atomic_directory(directory, marker=RETRIEVER_FILE, allow=(PARTIAL_DIR,)) as tmp:
            self._save_parts(tmp)
            self.image_index.save(tmp / "image_index")
            if self.text_index is not None:
                self.text_index.save(tmp / "text_index")
            write_corpus(self.corpus, tmp / "corpus.jsonl", _store_images(self.corpus, tmp))
            files = [file_record(tmp / "corpus.jsonl")]
            if self.build_report is not None:
                atomic_write_json(tmp / "build_report.json", self.build_report.to_dict())
            atomic_write_json(
                tmp / RETRIEVER_FILE,
                {
                    "format_version": FORMAT_VERSION,
                    "kind": self.kind,
                    "name": self.name,
                    "encoder": encoder_spec(self.encoder),
                    "encoder_name": self.encoder.name,
                    "dim": self.encoder.dim,
                    "text_index": self.text_index is not None,
                    **self._meta(),
                    "files": files,
                },
            )

    @classmethod
    def load(
        cls: type[_R],
        directory: str | os.PathLike[str],
        encoder: Encoder | None = None,
        **overrides: Any,
    ) -> _R:
        """Load a retriever saved by :meth:`save`.

        Args:
            directory: The saved directory.
            encoder: The encoder to use; by default it is rebuilt from the saved spec.
            **overrides: Encoder runtime options when rebuilding (device, batch_size ...).

        Raises:
            FileNotFoundError: ``directory`` is not a saved retriever.
            ValueError: another format version or another kind of retriever.
            IndexMismatchError: ``encoder`` is not the model the index was built with.
        """
        from vistrieve.encoders import create_encoder

        root = Path(directory)
        meta = read_retriever_meta(root)
        kind = meta.get("kind", "dense")
        if kind != cls.kind:
            raise ValueError(
                f"{root} holds a {kind!r} retriever, not a {cls.kind!r} one; open it with "
                "vistrieve.retrievers.load_retriever"
            )
        if encoder is None:
            if not meta.get("encoder"):
                raise ValueError(
                    f"{root} was built with a hand-made encoder {meta.get('encoder_name')!r}; "
                    "pass the same encoder to load()"
                )
            encoder = create_encoder(meta["encoder"], **overrides)
        records = meta.get("files")
        if records is not None:
            if not isinstance(records, list):
                raise IntegrityError(f"{root / RETRIEVER_FILE}: 'files' is not a list", root)
            check_files(root, records)
        image_index, text_index, kwargs = cls._load_parts(root, meta, encoder)
        corpus = read_corpus(root / "corpus.jsonl")
        check_consistency(root, corpus, image_index, text_index)
        r = cls(
            encoder,
            image_index=image_index,
            corpus=corpus,
            text_index=text_index,
            name=meta.get("name", cls.kind),
            **kwargs,
        )
        report_file = root / "build_report.json"
        if report_file.is_file():
            r.build_report = BuildReport(**read_json(report_file))
        return r


__all__ = [
    "PARTIAL_DIR",
    "RETRIEVER_FILE",
    "BuildReport",
    "IndexedRetriever",
    "caption_ids",
    "check_consistency",
    "chunk_stamp",
    "encode_items",
    "encode_tolerant",
    "read_corpus",
    "read_retriever_meta",
    "write_corpus",
]
