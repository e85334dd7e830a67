"""Build a :class:`~vistrieve.types.Corpus` from a folder of images or a manifest file.

A manifest lists images with their captions and labels, one record per row:

* CSV / TSV with a header row. An ``image`` column (aliases ``image_path``, ``path``,
  ``filepath``) is required; ``id``, ``caption``, ``captions`` and ``labels`` are optional;
  any other column goes to the item's metadata. Rows that share an image are merged, so a
  file of ``image,caption`` pairs (the Flickr8k ``captions.txt`` layout) gives one item per
  image with all its captions.
* JSONL (one object per line) or a ``.json`` list of objects with the same keys.

The layouts follow the CSV/parquet "url + caption" inputs of clip-retrieval and img2dataset,
and open_clip's ``CsvDataset`` (one image-text pair per row). Images are not opened here:
:attr:`Item.image` holds the resolved path and encoders decode it later.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vistrieve.errors import VistrieveError
from vistrieve.types import Corpus, Item
from vistrieve.utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
"""File extensions :func:`corpus_from_folder` treats as images by default."""

IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_path", "path", "filepath")
"""Accepted names of the image column of a CSV manifest, in order of preference."""

_RESERVED_KEYS = frozenset({"id", "caption", "captions", "labels", "metadata"})
_CSV_FIELDS = frozenset({"id", "caption", "captions", "labels"})


class ManifestError(VistrieveError, ValueError):
    """A manifest file is malformed or not in the expected encoding; the message names the
    file and the line.

    Attributes:
        path: The manifest file.
        line: 1-based line (JSONL/CSV) or entry (``.json`` list) number, or None when the
            problem concerns the whole file.
        problem: The message without the file and line prefix.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        problem: str,
        *,
        unit: Literal["line", "entry"] = "line",
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}" if line is None else f"{self.path}, {unit} {line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class SkippedRow:
    """A manifest row that was left out because its image file does not exist.

    Args:
        line: 1-based line (or entry) number in the manifest.
        image: The image path as written in the manifest.
        resolved: The path that was looked up.
    """

    line: int
    image: str
    resolved: str


@dataclass(frozen=True)
class SkippedFile:
    """A file that :func:`scan_folder` left out, and why.

    Args:
        path: The path as the file system gave it (a name that is not valid UTF-8 keeps
            its undecodable bytes as surrogate escapes; ``repr`` shows them).
        reason: Why it was left out.
    """

    path: str
    reason: str


@dataclass(frozen=True)
class FolderResult:
    """What :func:`scan_folder` returns: the corpus and the files it left out."""

    corpus: Corpus
    skipped: tuple[SkippedFile, ...] = ()


@dataclass(frozen=True)
class ManifestResult:
    """What :func:`corpus_from_manifest` returns.

    Args:
        corpus: The items read from the manifest, in order of first appearance.
        skipped: Rows left out because their image is missing (only with
            ``on_missing="skip"``; empty otherwise).
        path: The manifest file that was read.
    """

    corpus: Corpus
    skipped: tuple[SkippedRow, ...] = ()
    path: Path | None = None


@dataclass
class _Record:
    """One parsed row before merging."""

    line: int
    image: str
    id: str | None
    captions: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Folder
# ---------------------------------------------------------------------------------------


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def corpus_from_folder(
    directory: str | os.PathLike[str],
    *,
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> Corpus:
    """A corpus of every image file in a folder, without captions (see :func:`scan_folder`,
    which also reports the files it left out; here they are logged).

    Example:
        >>> corpus = corpus_from_folder("photos/")  # doctest: +SKIP
        >>> corpus.ids[:2]  # doctest: +SKIP
        ['beach/001.jpg', 'beach/002.png']
    """
    return scan_folder(directory, recursive=recursive, extensions=extensions).corpus


def scan_folder(
    directory: str | os.PathLike[str],
    *,
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> FolderResult:
    """A corpus of every image file in a folder, without captions, and the files left out.

    Item ids are the paths relative to ``directory`` with ``/`` separators
    (``"cats/001.jpg"``); :attr:`Item.image` is the absolute path. Hidden files and folders
    (names starting with ``.``) are ignored. Items are sorted by id. An image whose path is
    not valid UTF-8 (a name written under another locale) cannot be an id, a JSON line or a
    URL: it is left out, logged and listed in :attr:`FolderResult.skipped`.

    Args:
        directory: The folder to scan.
        recursive: Also scan sub-folders.
        extensions: File extensions to keep, matched case-insensitively (``".jpg"`` also
            matches ``photo.JPG``).

    Returns:
        The corpus (one item per image file) and the image files left out.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        NotADirectoryError: ``directory`` is a file.
        ValueError: no image file was found.
    """
    root = Path(directory)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(
            f"{root} is a file, not a folder; use corpus_from_manifest() for manifest files"
        )
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    if not exts:
        raise ValueError("extensions is empty: give at least one, e.g. ('.jpg', '.png')")
    root_abs = root.resolve()
    if not _utf8(str(root_abs)):
        raise ValueError(
            f"the folder path {str(root_abs)!r} is not valid UTF-8; rename it (or move the "
            "images to a folder with a UTF-8 name)"
        )
    pattern = root_abs.rglob("*") if recursive else root_abs.glob("*")
    ids: list[tuple[str, Path]] = []
    skipped: list[SkippedFile] = []
    for p in pattern:
        rel = p.relative_to(root_abs)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in exts and p.is_file():
            if not _utf8(str(rel)):
                skipped.append(
                    SkippedFile(
                        str(p),
                        "the file name is not valid UTF-8 (written under another locale?); "
                        "rename it to index it",
                    )
                )
                continue
            ids.append((rel.as_posix(), p))
    for f in skipped:
        logger.warning("skipping %r: %s", f.path, f.reason)
    if not ids:
        hint = "" if recursive else " (sub-folders were not scanned: pass recursive=True)"
        raise ValueError(f"no image files with extensions {sorted(exts)} found in {root}{hint}")
    ids.sort(key=lambda t: t[0])
    return FolderResult(
        Corpus([Item(id=i, image=str(p)) for i, p in ids]),
        tuple(sorted(skipped, key=lambda f: f.path)),
    )


# ---------------------------------------------------------------------------------------
# Manifest reading
# ---------------------------------------------------------------------------------------


def corpus_from_manifest(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    on_missing: Literal["error", "skip"] = "error",
    encoding: str = "utf-8",
) -> ManifestResult:
    """Read a CSV/TSV/JSONL/JSON manifest into a corpus.

    The format is chosen by extension: ``.csv`` or ``.txt`` (comma-separated), ``.tsv``
    (tab), ``.jsonl`` (one object per line) or ``.json`` (a list of objects; errors then
    name the entry number instead of the line). Each record has:

    * ``image`` (required; CSV also accepts ``image_path``, ``path``, ``filepath``): the
      image file. Relative paths resolve against ``image_root``, or the manifest's folder
      when ``image_root`` is None.
    * ``id`` (optional): the item id; defaults to the image path as written.
    * ``caption``: one caption; ``captions``: several (a list in JSON; in CSV a JSON list
      such as ``["a", "b"]`` or ``|``-separated text).
    * ``labels``: a list (JSON) or ``|``- / ``;``-separated text (CSV).
    * anything else goes to :attr:`Item.metadata` (JSON records may also carry a
      ``metadata`` object, which is merged in).

    Records with the same id (or, without ids, the same image) describe one item and are
    merged: their captions are concatenated, their labels united and the first record's
    metadata wins. This makes ``image,caption`` pair files load with several captions per
    image. A CSV row with more fields than the header whose last column is ``caption`` is
    read as a caption containing unquoted commas (some Flickr8k ``captions.txt`` releases).

    Args:
        path: The manifest file.
        image_root: Folder that relative image paths are relative to.
        on_missing: What to do with a record whose image file does not exist: ``"error"``
            raises, ``"skip"`` leaves it out, logs a warning and lists it in
            :attr:`ManifestResult.skipped`.
        encoding: The file's text encoding (``"utf-8"``; a byte-order mark is skipped), e.g.
            ``"latin-1"`` or ``"cp1252"`` for files exported by older spreadsheet programs.

    Returns:
        The corpus and the skipped records.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ManifestError: the file is empty or malformed, is not in ``encoding``, a record has
            no image, two records give one id to different images, or an image is missing
            with ``on_missing="error"``. The message names the file and the line.

    Example:
        A CSV manifest ``shapes.csv``::

            image,caption,labels
            img/red.png,a red circle,red|circle
            img/red.png,a circle in red,red|circle
            img/blue.png,a blue square,blue|square

        >>> result = corpus_from_manifest("shapes.csv")  # doctest: +SKIP
        >>> result.corpus["img/red.png"].captions  # doctest: +SKIP
        ('a red circle', 'a circle in red')
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"manifest file {src} does not exist")
    suffix = src.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        delimiter = "\t" if suffix == ".tsv" else ","
        records = list(_read_csv(src, delimiter, _read_text(src, encoding)))
    elif suffix == ".jsonl":
        records = list(_read_jsonl(src, _read_text(src, encoding)))
    elif suffix == ".json":
        records = list(_read_json_list(src, _read_text(src, encoding)))
    else:
        raise ManifestError(
            src,
            None,
            f"unknown manifest extension {src.suffix!r}: use .csv, .tsv, .jsonl or .json",
        )
    if not records:
        raise ManifestError(
            src, None, "the manifest has no records (the file is empty or holds only a header)"
        )

    base = Path(os.path.abspath(image_root if image_root is not None else src.parent))
    unit: Literal["line", "entry"] = "entry" if suffix == ".json" else "line"
    items, skipped = _merge(src, records, base, on_missing, unit)
    if skipped:
        shown = ", ".join(f"{unit} {s.line}: {s.resolved}" for s in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        logger.warning(
            "%s: skipped %d record(s) whose image file is missing (%s%s)",
            src,
            len(skipped),
            shown,
            more,
        )
    if not items:
        raise ManifestError(
            src,
            None,
            f"every record points to a missing image (relative paths resolve against {base}); "
            "check the paths or pass image_root=...",
        )
    return ManifestResult(corpus=Corpus(items), skipped=tuple(skipped), path=src)


def _merge(
    src: Path,
    records: list[_Record],
    base: Path,
    on_missing: str,
    unit: Literal["line", "entry"],
) -> tuple[list[Item], list[SkippedRow]]:
    """Merge records that describe one item, resolve and check their image paths."""
    merged: dict[str, _Record] = {}
    owner: dict[str, tuple[str, int]] = {}
    skipped: list[SkippedRow] = []
    resolved_cache: dict[str, tuple[str, bool]] = {}
    for rec in records:
        key = rec.id if rec.id is not None else _default_id(rec.image)
        if rec.image not in resolved_cache:
            resolved = _resolve(rec.image, base)
            resolved_cache[rec.image] = (resolved, os.path.isfile(resolved))
        resolved, exists = resolved_cache[rec.image]
        first_image, first_line = owner.setdefault(key, (rec.image, rec.line))
        if first_image != rec.image:
            raise ManifestError(
                src,
                rec.line,
                f"duplicate id {key!r}: {unit} {first_line} gives it to image "
                f"{first_image!r} and {unit} {rec.line} to image {rec.image!r}; "
                "ids must be unique",
                unit=unit,
            )
        if not exists:
            if on_missing == "error":
                raise ManifestError(
                    src,
                    rec.line,
                    f"image file not found: {resolved} (written as {rec.image!r}; relative "
                    f"paths resolve against {base}). Fix the path, pass image_root=..., or "
                    "pass on_missing='skip' to leave such records out",
                    unit=unit,
                )
            skipped.append(SkippedRow(line=rec.line, image=rec.image, resolved=resolved))
            continue
        prev = merged.get(key)
        if prev is None:
            merged[key] = _Record(
                line=rec.line,
                image=rec.image,
                id=key,
                captions=list(rec.captions),
                labels=list(rec.labels),
                metadata=dict(rec.metadata),
            )
        else:
            prev.captions.extend(rec.captions)
            for label in rec.labels:
                if label not in prev.labels:
                    prev.labels.append(label)
            for k, v in rec.metadata.items():
                prev.metadata.setdefault(k, v)
    items = [
        Item(
            id=key,
            image=resolved_cache[r.image][0],
            captions=tuple(r.captions),
            labels=tuple(r.labels),
            metadata=r.metadata,
        )
        for key, r in merged.items()
    ]
    return items, skipped


def _default_id(image: str) -> str:
    return image.replace("\\", "/")


def _resolve(image: str, base: Path) -> str:
    p = Path(os.path.expanduser(image))
    if not p.is_absolute():
        p = base / p
    return os.path.normpath(p)


def _split_list(text: str, seps: Sequence[str]) -> list[str]:
    """Split on the first separator of ``seps`` present in ``text``; drop blank parts."""
    for sep in seps:
        if sep in text:
            return [part.strip() for part in text.split(sep) if part.strip()]
    return [text.strip()] if text.strip() else []


def _read_text(src: Path, encoding: str) -> str:
    """The whole manifest as text; a decoding error names the file, the line and the fix."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(
            f"unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)"
        ) from None
    raw = src.read_bytes()
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # skip a byte-order mark
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 4]
        raise ManifestError(
            src,
            line,
            f"the file is not valid {encoding.removesuffix('-sig')} (byte(s) {bad!r} at offset "
            f"{exc.start}); it was probably written in another encoding: give it with "
            "--encoding (CLI) or encoding= (e.g. latin-1, cp1252), or convert the file to UTF-8",
        ) from None


def _read_csv(src: Path, delimiter: str, text: str) -> Iterator[_Record]:
    with io.StringIO(text, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ManifestError(src, None, "the file is empty; a header row is required") from None
        except csv.Error as exc:
            raise ManifestError(src, 1, f"cannot parse the header row: {exc}") from exc
        columns = [h.strip().lower() for h in header]
        image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
        if image_col is None:
            looks_like_data = any(h.strip().lower().endswith(IMAGE_EXTENSIONS) for h in header)
            hint = (
                " (the first row looks like data: add a header row such as 'image,caption')"
                if looks_like_data
                else ""
            )
            raise ManifestError(
                src,
                1,
                f"the header has no image column: expected one of {list(IMAGE_COLUMNS)}, "
                f"found {header}{hint}",
            )
        dupes = {c for c in columns if columns.count(c) > 1 and c}
        if dupes:
            raise ManifestError(src, 1, f"the header repeats column(s) {sorted(dupes)}")
        n_cols = len(columns)
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ManifestError(src, line, f"cannot parse the row: {exc}") from exc
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) > n_cols:
                if columns[-1] != "caption":
                    raise ManifestError(
                        src,
                        line,
                        f"the row has {len(row)} fields but the header has {n_cols}; "
                        "quote fields that contain the delimiter",
                    )
                # Unquoted commas inside the final caption column (Flickr8k captions.txt).
                row = row[: n_cols - 1] + [delimiter.join(row[n_cols - 1 :])]
            elif len(row) < n_cols:
                row = row + [""] * (n_cols - len(row))
            values = dict(zip(columns, row, strict=True))
            yield _record_from_csv(src, line, values, image_col)


def _record_from_csv(src: Path, line: int, values: dict[str, str], image_col: str) -> _Record:
    image = values.get(image_col, "").strip()
    if not image:
        raise ManifestError(src, line, f"the {image_col!r} field is empty")
    rid = values.get("id", "").strip() or None
    captions: list[str] = []
    cap = values.get("caption", "").strip()
    if cap:
        captions.append(cap)
    caps = values.get("captions", "").strip()
    if caps:
        if caps.startswith("["):
            try:
                parsed = json.loads(caps)
            except json.JSONDecodeError as exc:
                raise ManifestError(
                    src, line, f"the captions field starts with '[' but is not a JSON list: {exc}"
                ) from exc
            captions.extend(_caption_list(src, line, parsed))
        else:
            captions.extend(_split_list(caps, ("|",)))
    labels: list[Any] = _split_list(values.get("labels", ""), ("|", ";"))
    metadata = {
        k: v
        for k, v in values.items()
        if k and k not in _CSV_FIELDS and k not in IMAGE_COLUMNS and v != ""
    }
    # Alias columns other than the one used for the image are kept as metadata.
    for alias in IMAGE_COLUMNS:
        if alias != image_col and values.get(alias):
            metadata[alias] = values[alias]
    return _Record(
        line=line, image=image, id=rid, captions=captions, labels=labels, metadata=metadata
    )


def _caption_list(src: Path, line: int, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return [c.strip() for c in value if c.strip()]
    raise ManifestError(src, line, f"captions must be a string or a list of strings, got {value!r}")


def _read_jsonl(src: Path, text: str) -> Iterator[_Record]:
    with io.StringIO(text, newline=None) as fh:
        for line_no, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ManifestError(src, line_no, f"invalid JSON: {exc.msg}") from exc
            yield _record_from_obj(src, line_no, obj)


def _read_json_list(src: Path, text: str) -> Iterator[_Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(src, exc.lineno, f"invalid JSON: {exc.msg}") from exc
    if not isinstance(data, list):
        raise ManifestError(
            src, None, f"a .json manifest must be a list of objects, got {type(data).__name__}"
        )
    for i, obj in enumerate(data, start=1):
        yield _record_from_obj(src, i, obj, unit="entry")


def _record_from_obj(
    src: Path, line: int, obj: Any, *, unit: Literal["line", "entry"] = "line"
) -> _Record:
    try:
        return _parse_obj(src, line, obj)
    except ManifestError as exc:
        if unit == "line":
            raise
        raise ManifestError(src, line, exc.problem, unit=unit) from None


def _parse_obj(src: Path, line: int, obj: Any) -> _Record:
    if not isinstance(obj, dict):
        raise ManifestError(src, line, f"expected a JSON object, got {type(obj).__name__}")
    image_key = next((a for a in IMAGE_COLUMNS if a in obj), "image")
    image = obj.get(image_key)
    if not isinstance(image, str) or not image.strip():
        raise ManifestError(src, line, f"the record has no 'image' path (keys: {sorted(obj)})")
    raw_id = obj.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        raise ManifestError(src, line, f"'id' must be a string or an integer, got {raw_id!r}")
    rid = str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else None
    captions: list[str] = []
    if "caption" in obj and obj["caption"] is not None:
        if not isinstance(obj["caption"], str):
            raise ManifestError(src, line, f"'caption' must be a string, got {obj['caption']!r}")
        captions.extend(_caption_list(src, line, obj["caption"]))
    if "captions" in obj and obj["captions"] is not None:
        captions.extend(_caption_list(src, line, obj["captions"]))
    raw_labels = obj.get("labels")
    labels: list[Any]
    if raw_labels is None:
        labels = []
    elif isinstance(raw_labels, list):
        labels = list(raw_labels)
    elif isinstance(raw_labels, (str, int)):
        labels = [raw_labels]
    else:
        raise ManifestError(src, line, f"'labels' must be a list, got {raw_labels!r}")
    metadata: dict[str, Any] = {}
    extra_meta = obj.get("metadata")
    if extra_meta is not None:
        if not isinstance(extra_meta, dict):
            raise ManifestError(
                src, line, f"'metadata' must be an object, got {type(extra_meta).__name__}"
            )
        metadata.update(extra_meta)
    for k, v in obj.items():
        if k not in _RESERVED_KEYS and k != image_key:
            metadata[k] = v
    return _Record(
        line=line, image=image.strip(), id=rid, captions=captions, labels=labels, metadata=metadata
    )


# ---------------------------------------------------------------------------------------
# Manifest writing
# ---------------------------------------------------------------------------------------


def write_manifest(corpus: Mapping[str, Item], path: str | os.PathLike[str]) -> None:
    """Write a corpus as a JSONL manifest that :func:`corpus_from_manifest` reads back.

    Each line holds ``id``, ``image``, ``captions``, ``labels`` and, when present,
    ``metadata``. Image paths inside the manifest's folder are written relative to it (the
    folder can be moved as a whole); other paths are written absolute. The file is written
    atomically.

    Args:
        corpus: The items to write; every item needs an image path.
        path: Destination ``.jsonl`` file.

    Raises:
        ValueError: an item has no image path (in-memory or missing image) or carries
            labels or metadata that JSON cannot represent.

    Example:
        >>> write_manifest(corpus, "photos/manifest.jsonl")  # doctest: +SKIP
        >>> corpus_from_manifest("photos/manifest.jsonl").corpus.ids == corpus.ids  # doctest: +SKIP
        True
    """
    dest = Path(path)
    if dest.suffix.lower() != ".jsonl":
        raise ValueError(f"write_manifest writes JSONL: give a path ending in .jsonl, got {dest}")
    base = Path(os.path.abspath(dest.parent))
    lines: list[str] = []
    for item in corpus.values():
        uri = item.uri
        if uri is None:
            raise ValueError(
                f"item {item.id!r} has no image path (image is {type(item.image).__name__}); "
                "a manifest can only list image files: save in-memory images to files first"
            )
        image_abs = Path(os.path.abspath(uri))
        try:
            written = image_abs.relative_to(base).as_posix()
        except ValueError:
            written = str(image_abs)
        record: dict[str, Any] = {
            "id": item.id,
            "image": written,
            "captions": list(item.captions),
            "labels": list(item.labels),
        }
        if item.metadata:
            record["metadata"] = dict(item.metadata)
        try:
            lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"item {item.id!r} cannot be written as JSON ({exc}); keep labels and "
                "metadata to strings, numbers, lists and dicts"
            ) from exc
    atomic_write_bytes(dest, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))


__all__ = [
    "IMAGE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "FolderResult",
    "ManifestError",
    "ManifestResult",
    "SkippedFile",
    "SkippedRow",
    "corpus_from_folder",
    "corpus_from_manifest",
    "scan_folder",
    "write_manifest",
]
