"""Loaders for the evaluation datasets, from their published files into vistrieve containers.

Every loader reads the files as their authors distribute them and returns a container from
:mod:`vistrieve.data.tasks` (or a :class:`~vistrieve.types.Corpus`). Images are never opened
here: :attr:`Item.image` holds the path and encoders decode it later. Malformed input raises
:class:`DatasetFormatError` naming the file and the problem.

File layouts follow the reference implementations: Karpathy's ``dataset_*.json`` splits
(neuraltalk2), the Flickr8k ``captions.txt`` of the Kaggle release, the Wikipedia
cross-modal ``wikiData.mat`` (Rasiwasia et al., 2010), CIRR (Cuberick-Orion/CIRR), CIRCO
(miccunifi/CIRCO), FashionIQ (XiaoxiaoGuo/fashion-iq, read as in CLIP4Cir / SEARLE /
CIReVL), and ChatIR (levymsn/ChatIR) with VisDial 1.0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from vistrieve.data.tasks import (
    ComposedDataset,
    ComposedExample,
    DialogDataset,
    DialogExample,
    HashingDataset,
    PairedEmbeddings,
)
from vistrieve.types import Corpus, DialogTurn, Item
from vistrieve.utils.io import load_npy, read_json

logger = logging.getLogger(__name__)

PathLike: TypeAlias = "str | os.PathLike[str]"

KarpathySplit = Literal["train", "val", "test", "restval", "all"]
FASHIONIQ_CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
VISDIAL_VAL_PATTERN = "VisualDialog_val2018_{image_id:012d}.jpg"
"""File names of the VisDial 1.0 validation images."""

UNIT_NORM_TOLERANCE = 1e-3


class DatasetFormatError(ValueError):
    """A dataset file does not have the expected layout; the message names file and problem.

    Attributes:
        path: The offending file.
        problem: What is wrong, without the file prefix.
    """

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def _read_json(path: PathLike) -> Any:
    """Read JSON, turning a parse failure into :class:`DatasetFormatError`."""
    p = Path(path)
    try:
        return read_json(p)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise DatasetFormatError(
            p, f"not valid JSON ({cause}); the download may be truncated"
        ) from exc


def _require(path: Path, obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]``, checked to exist and have type ``kind``."""
    if not isinstance(obj, dict):
        raise DatasetFormatError(path, f"{where} should be an object, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetFormatError(path, f"{where} has no {key!r} field (keys: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DatasetFormatError(
            path, f"{where}: {key!r} should be {names}, got {type(value).__name__} {value!r:.60}"
        )
    return value


def _check_images(items: Iterable[Item], source: Path, root: PathLike, check: bool) -> None:
    """Fail early, naming missing image files, instead of deep inside an encoder."""
    if not check:
        return
    missing = [str(it.image) for it in items if not os.path.isfile(str(it.image))]
    if missing:
        shown = ", ".join(missing[:3])
        raise FileNotFoundError(
            f"{len(missing)} image file(s) listed in {source} are missing under {root} "
            f"(e.g. {shown}); check the image folder, or pass check_images=False to load the "
            "annotations alone"
        )


def _split_name(path: Path, prefix: str) -> str:
    """``cap.rc2.val.json`` -> ``"<prefix>-val"``; the prefix alone when no split shows."""
    parts = path.name.split(".")
    return f"{prefix}-{parts[-2]}" if len(parts) >= 3 else prefix


def _make_corpus(items: Sequence[Item], source: Path) -> Corpus:
    try:
        return Corpus(items)
    except ValueError as exc:
        raise DatasetFormatError(source, str(exc)) from exc


def _join(root: PathLike, *parts: str) -> str:
    return os.path.normpath(os.path.join(os.fspath(root), *parts))


# ---------------------------------------------------------------------------------------
# Image-text retrieval: Karpathy splits and Flickr8k
# ---------------------------------------------------------------------------------------


def load_karpathy(
    json_path: PathLike,
    image_root: PathLike,
    split: KarpathySplit = "test",
    *,
    max_captions: int | None = None,
    check_images: bool = True,
) -> Corpus:
    """Load one split of a Karpathy ``dataset_{coco,flickr8k,flickr30k}.json`` file.

    Format (only the fields read are shown)::

        {"dataset": "coco",
         "images": [{"filepath": "val2014",
                     "filename": "COCO_val2014_000000391895.jpg",
                     "split": "test", "imgid": 0, "cocoid": 391895,
                     "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...]}]}]}

    The image path is ``image_root/filepath/filename`` when ``filepath`` is present (COCO)
    and ``image_root/filename`` otherwise (Flickr8k/30k). The item id is ``filename``.

    COCO's Karpathy file has a fourth split, ``restval`` (30,504 images of the original
    val2014 that are neither Karpathy val nor test). Following neuraltalk2 and every method
    trained on the "113k" COCO training set, ``split="train"`` returns ``train`` plus
    ``restval``; ask for ``"restval"`` alone to get only those images, or ``"all"`` for
    every image.

    Args:
        json_path: The Karpathy JSON file.
        image_root: Folder holding the images (COCO: the folder above ``val2014/``).
        split: Which split to return.
        max_captions: Keep only the first this many captions of each image; None keeps all
            (a few COCO images have 6 or 7; ALBEF, BLIP and LAVIS keep them all, pass 5 for a
            strict 5-captions-per-image protocol).
        check_images: Fail when an image file of the split is missing.

    Returns:
        A corpus in file order; metadata holds ``split``, ``imgid`` and, for COCO,
        ``cocoid``.

    Raises:
        DatasetFormatError: the file is not a Karpathy split file, or the split is empty.
        FileNotFoundError: the file, or with ``check_images``, an image is missing.

    Example:
        >>> corpus = load_karpathy("dataset_flickr30k.json", "flickr30k-images")  # doctest: +SKIP
        >>> len(corpus), sum(len(it.captions) for it in corpus.values())  # doctest: +SKIP
        (1000, 5000)
    """
    if split not in ("train", "val", "test", "restval", "all"):
        raise ValueError(f"split must be 'train', 'val', 'test', 'restval' or 'all', got {split!r}")
    if max_captions is not None and max_captions < 1:
        raise ValueError(f"max_captions must be >= 1 or None, got {max_captions}")
    src = Path(json_path)
    data = _read_json(src)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(
            src,
            'not a Karpathy split file: expected {"images": [...]} at the top level '
            "(dataset_coco.json / dataset_flickr30k.json layout)",
        )
    wanted = {"train": {"train", "restval"}, "all": None}.get(split, {split})
    seen_splits: set[str] = set()
    items: list[Item] = []
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        filename = _require(src, img, "filename", str, where)
        img_split = _require(src, img, "split", str, where)
        seen_splits.add(img_split)
        if wanted is not None and img_split not in wanted:
            continue
        sentences = _require(src, img, "sentences", list, where)
        captions: list[str] = []
        for j, sent in enumerate(sentences):
            raw = _require(src, sent, "raw", str, f"{where}.sentences[{j}]")
            if raw.strip():
                captions.append(raw.strip())
        if max_captions is not None:
            captions = captions[:max_captions]
        filepath = img.get("filepath")
        parts = [filepath, filename] if isinstance(filepath, str) and filepath else [filename]
        meta: dict[str, Any] = {"split": img_split}
        for key in ("imgid", "cocoid"):
            if key in img:
                meta[key] = img[key]
        items.append(
            Item(
                id=filename,
                image=_join(image_root, *parts),
                captions=tuple(captions),
                metadata=meta,
            )
        )
    if not items:
        raise DatasetFormatError(
            src, f"split {split!r} holds no images; the file has splits {sorted(seen_splits)}"
        )
    corpus = _make_corpus(items, src)
    _check_images(corpus.values(), src, image_root, check_images)
    return corpus


def _flickr8k_paths(source: PathLike, image_dir: PathLike | None) -> tuple[Path, Path]:
    src = Path(source)
    if src.is_dir():
        candidates = [src / "captions.txt", src / "Flickr8k.token.txt"]
        captions = next((c for c in candidates if c.is_file()), None)
        if captions is None:
            raise FileNotFoundError(
                f"{src} holds neither captions.txt nor Flickr8k.token.txt; pass the captions "
                "file itself"
            )
        folder = src
    elif src.is_file():
        captions, folder = src, src.parent
    else:
        raise FileNotFoundError(f"Flickr8k captions file or folder {src} does not exist")
    if image_dir is not None:
        return captions, Path(image_dir)
    for name in ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset"):
        if (folder / name).is_dir():
            return captions, folder / name
    return captions, folder


def load_flickr8k(
    directory_or_captions_txt: PathLike,
    *,
    image_dir: PathLike | None = None,
    check_images: bool = True,
) -> Corpus:
    """Load Flickr8k captions: the ``captions.txt`` CSV or the original ``Flickr8k.token.txt``.

    ``captions.txt`` (Kaggle release) has a header and one image-caption pair per line::

        image,caption
        1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs .
        1012212859_01547e3f17.jpg,"A dog shakes its head near the shore , a red ball next to it ."

    Captions that contain commas are quoted in some releases and not in others, so each line
    is split on its *first* comma only, and a caption wrapped in double quotes is unquoted
    (``""`` inside becomes ``"``). ``Flickr8k.token.txt`` lines read
    ``<image>#<n>\\t<caption>``.

    Args:
        directory_or_captions_txt: The captions file, or a folder holding ``captions.txt``
            (or ``Flickr8k.token.txt``).
        image_dir: Folder of the images; defaults to ``images/``, ``Images/`` or
            ``Flicker8k_Dataset/`` beside the captions file, else the captions' folder.
        check_images: Fail when an image file is missing.

    Returns:
        One item per image, in order of first appearance, id = file name, with all its
        captions.

    Raises:
        DatasetFormatError: no header / a line without a comma, an empty image or caption.
        FileNotFoundError: the captions file, or with ``check_images``, an image is missing.

    Example:
        >>> corpus = load_flickr8k("/data/flickr8k-1k")  # doctest: +SKIP
        >>> len(corpus), len(corpus.ids and corpus[corpus.ids[0]].captions)  # doctest: +SKIP
        (1000, 5)
    """
    captions_path, images = _flickr8k_paths(directory_or_captions_txt, image_dir)
    text = captions_path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise DatasetFormatError(captions_path, "the file is empty")
    head = lines[first].strip()
    token_format = "\t" in head and "#" in head.split("\t", 1)[0]
    if not token_format and head.replace(" ", "").lower() != "image,caption":
        raise DatasetFormatError(
            captions_path,
            f"line {first + 1}: expected the header 'image,caption' (or Flickr8k.token.txt "
            f"lines '<image>#<n><TAB><caption>'), got {head[:80]!r}",
        )
    captions: dict[str, list[str]] = {}
    start = first if token_format else first + 1
    for n, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        sep = "\t" if token_format else ","
        if sep not in line:
            what = "a tab" if token_format else "a comma"
            raise DatasetFormatError(
                captions_path, f"line {n}: no {what} between image and caption: {line[:80]!r}"
            )
        name, caption = line.split(sep, 1)
        name = name.strip()
        if token_format:
            name = name.split("#", 1)[0]
        caption = caption.strip()
        if len(caption) >= 2 and caption[0] == '"' and caption[-1] == '"':
            caption = caption[1:-1].replace('""', '"').strip()
        if not name or not caption:
            raise DatasetFormatError(
                captions_path, f"line {n}: empty {'image' if not name else 'caption'}"
            )
        captions.setdefault(name, []).append(caption)
    if not captions:
        raise DatasetFormatError(captions_path, "no captions after the header")
    corpus = Corpus(
        [
            Item(id=name, image=_join(images, name), captions=tuple(caps))
            for name, caps in captions.items()
        ]
    )
    _check_images(corpus.values(), captions_path, images, check_images)
    return corpus


def load_coco_captions(
    captions_json: PathLike,
    image_dir: PathLike,
    *,
    max_captions: int | None = None,
    check_images: bool = True,
) -> Corpus:
    """Load an MS-COCO captions file (``captions_val2017.json``, ``captions_train2014.json``).

    Format (only the fields read are shown)::

        {"images": [{"id": 397133, "file_name": "000000397133.jpg"}],
         "annotations": [{"image_id": 397133, "caption": "A man is in a kitchen ..."}]}

    Args:
        captions_json: The captions file.
        image_dir: Folder holding the images (``val2017/``).
        max_captions: Keep only the first this many captions of each image (COCO images
            have 5 to 7); None keeps all.
        check_images: Fail when an image file is missing.

    Returns:
        One item per image with at least one caption, in the file's image order; id =
        ``file_name``, metadata ``coco_id``.

    Raises:
        DatasetFormatError: not a COCO captions file (e.g. a Karpathy split file), or a
            caption names an image id the file does not list.
        FileNotFoundError: the file, or with ``check_images``, an image is missing.

    Example:
        >>> c = load_coco_captions("captions_val2017.json", "val2017")  # doctest: +SKIP
        >>> len(c)  # doctest: +SKIP
        5000
    """
    if max_captions is not None and max_captions < 1:
        raise ValueError(f"max_captions must be >= 1 or None, got {max_captions}")
    src = Path(captions_json)
    data = _read_json(src)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        hint = (
            " (this looks like a Karpathy split file: use --dataset karpathy)"
            if isinstance(data, dict) and "dataset" in data
            else ""
        )
        raise DatasetFormatError(
            src,
            'not a COCO captions file: expected {"images": [...], "annotations": [...]} at the '
            "top level" + hint,
        )
    names: dict[Any, str] = {}
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        names[_require(src, img, "id", (int, str), where)] = _require(
            src, img, "file_name", str, where
        )
    captions: dict[Any, list[str]] = {}
    for j, ann in enumerate(data["annotations"]):
        where = f"annotations[{j}]"
        image_id = _require(src, ann, "image_id", (int, str), where)
        caption = _require(src, ann, "caption", str, where).strip()
        if image_id not in names:
            raise DatasetFormatError(src, f"{where}: image_id {image_id!r} is not in 'images'")
        if caption:
            captions.setdefault(image_id, []).append(caption)
    items = []
    for image_id, file_name in names.items():
        caps = captions.get(image_id)
        if not caps:
            continue
        if max_captions is not None:
            caps = caps[:max_captions]
        items.append(
            Item(
                id=file_name,
                image=_join(image_dir, file_name),
                captions=tuple(caps),
                metadata={"coco_id": image_id},
            )
        )
    if not items:
        raise DatasetFormatError(src, "no image has a caption")
    corpus = _make_corpus(items, src)
    _check_images(corpus.values(), src, image_dir, check_images)
    return corpus


CSV_IMAGE_COLUMNS = ("image", "file_name", "filename", "path")
CSV_CAPTION_COLUMNS = ("caption", "text", "sentence")


def load_captions_csv(
    csv_path: PathLike, image_dir: PathLike | None = None, *, check_images: bool = True
) -> Corpus:
    """Load a folder of images described by a captions CSV: one ``image,caption`` row per
    caption (quoted as the ``csv`` module writes), several rows per image allowed.

    The image column may be called ``image``, ``file_name``, ``filename`` or ``path``; the
    caption column ``caption``, ``text`` or ``sentence``. Relative image paths resolve
    against ``image_dir``, by default the CSV's folder.

    Raises:
        DatasetFormatError: no header with those columns, or an empty image or caption.
        FileNotFoundError: the file, or with ``check_images``, an image is missing.
    """
    import csv

    src = Path(csv_path)
    if not src.is_file():
        raise FileNotFoundError(f"captions CSV {src} does not exist")
    root = Path(image_dir) if image_dir is not None else src.parent
    with src.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        img_col = next((c for c in CSV_IMAGE_COLUMNS if c in fields), None)
        cap_col = next((c for c in CSV_CAPTION_COLUMNS if c in fields), None)
        if img_col is None or cap_col is None:
            raise DatasetFormatError(
                src,
                f"expected a header with an image column ({', '.join(CSV_IMAGE_COLUMNS)}) and "
                f"a caption column ({', '.join(CSV_CAPTION_COLUMNS)}), got {fields}",
            )
        captions: dict[str, list[str]] = {}
        for n, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "") for k, v in row.items()}
            name, caption = row.get(img_col, "").strip(), row.get(cap_col, "").strip()
            if not name and not caption:
                continue
            if not name or not caption:
                raise DatasetFormatError(
                    src, f"line {n}: empty {'image' if not name else 'caption'}"
                )
            captions.setdefault(name, []).append(caption)
    if not captions:
        raise DatasetFormatError(src, "no captions after the header")
    corpus = _make_corpus(
        [
            Item(id=name, image=_join(root, name), captions=tuple(caps))
            for name, caps in captions.items()
        ],
        src,
    )
    _check_images(corpus.values(), src, root, check_images)
    return corpus


def split_by_image(corpus: Corpus, n_train: int, seed: int = 0) -> tuple[Corpus, Corpus]:
    """Split a corpus into train and test images, reproducibly.

    The ids are sorted, shuffled with ``numpy.random.default_rng(seed)``; the first
    ``n_train`` go to train and the rest to test. Each part is returned in sorted-id order,
    so the split depends only on the set of ids, ``n_train`` and ``seed``, never on file
    order. All captions of an image stay with it. The Flickr8k-1k baseline uses
    ``split_by_image(corpus, n_train=800, seed=0)``.

    Args:
        corpus: The corpus to split.
        n_train: Number of training images, ``0 < n_train < len(corpus)``.
        seed: Shuffle seed.

    Returns:
        ``(train, test)`` corpora.

    Example:
        >>> c = Corpus([Item(id=str(i), captions=("x",)) for i in range(10)])
        >>> train, test = split_by_image(c, n_train=8, seed=0)
        >>> len(train), len(test), set(train).isdisjoint(test)
        (8, 2, True)
    """
    if not 0 < n_train < len(corpus):
        raise ValueError(
            f"n_train must be between 1 and {len(corpus) - 1} for a corpus of {len(corpus)} "
            f"items, got {n_train}"
        )
    ids = sorted(corpus.ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    train_ids = sorted(ids[i] for i in order[:n_train])
    test_ids = sorted(ids[i] for i in order[n_train:])
    return corpus.subset(train_ids), corpus.subset(test_ids)


# ---------------------------------------------------------------------------------------
# Cross-modal hashing: Wikipedia
# ---------------------------------------------------------------------------------------


def _labels_to_multihot(
    path: Path, train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (n, 1) or (n,) -> multi-hot uint8; 0/1 matrices pass through."""
    tr = np.asarray(train)
    te = np.asarray(test)
    index_form = (tr.ndim == 1 or tr.shape[1] == 1) and (te.ndim == 1 or te.shape[1] == 1)
    if index_form:
        both = np.concatenate([tr.ravel(), te.ravel()]).astype(np.float64)
        if not np.all(np.isfinite(both)) or not np.all(both == np.round(both)) or both.min() < 0:
            raise DatasetFormatError(path, "labels must be non-negative integer class indices")
        # MATLAB files number classes from 1; a 0 means the file uses 0-based indices.
        offset = 0 if both.min() == 0 else 1
        n_classes = int(both.max()) - offset + 1

        def onehot(v: np.ndarray) -> np.ndarray:
            idx = v.ravel().astype(np.int64) - offset
            out = np.zeros((idx.shape[0], n_classes), dtype=np.uint8)
            out[np.arange(idx.shape[0]), idx] = 1
            return out

        return onehot(tr), onehot(te)
    if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
        raise DatasetFormatError(
            path, f"label matrices have incompatible shapes {tr.shape} and {te.shape}"
        )
    if not (np.isin(tr, (0, 1)).all() and np.isin(te, (0, 1)).all()):
        raise DatasetFormatError(path, "label matrices must hold only 0 and 1 (multi-hot)")
    return tr.astype(np.uint8), te.astype(np.uint8)


def load_wiki_xmodal(mat_path: PathLike) -> HashingDataset:
    """Load the Wikipedia cross-modal benchmark (``wikiData.mat``, Rasiwasia et al. 2010).

    Format: a MATLAB (v5/v7) file with ``I_tr`` (2173, 128) SIFT bag-of-visual-words image
    features, ``T_tr`` (2173, 10) LDA topic proportions of the texts, ``L_tr`` (2173, 1)
    class indices 1..10, and ``I_te`` / ``T_te`` / ``L_te`` for the 693 test pairs. Class
    indices are converted to multi-hot ``uint8`` rows (0-based indices and ready multi-hot
    matrices are accepted too).

    Protocol (as in the cross-modal hashing literature, e.g. DCMH, DCHMT): the test pairs
    are the queries; the training pairs are both the retrieval database and what a model
    learns from; two items are relevant when they share a label. The returned
    :attr:`HashingDataset.protocol` states this with the actual sizes.

    Args:
        mat_path: Path to ``wikiData.mat``.

    Returns:
        Features as float32, labels as multi-hot uint8 ``(n, n_classes)``.

    Raises:
        DatasetFormatError: not a readable v5/v7 .mat file, a key is missing, or row counts
            disagree.
        FileNotFoundError: the file is missing.

    Example:
        >>> ds = load_wiki_xmodal("wiki-xmodal/wikiData.mat")  # doctest: +SKIP
        >>> ds.query_image.shape, ds.db_text.shape, ds.db_labels.shape  # doctest: +SKIP
        ((693, 128), (2173, 10), (2173, 10))
    """
    import scipy.io  # deferred: only this loader needs scipy

    src = Path(mat_path)
    if not src.is_file():
        raise FileNotFoundError(f"Wikipedia .mat file {src} does not exist")
    try:
        mat = scipy.io.loadmat(src)
    except NotImplementedError as exc:
        raise DatasetFormatError(
            src, "MATLAB v7.3 (HDF5) files are not supported; re-save it with save(..., '-v7')"
        ) from exc
    except (ValueError, TypeError, OSError) as exc:
        raise DatasetFormatError(src, f"not a readable MATLAB .mat file ({exc})") from exc
    keys = ("I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te")
    missing = [k for k in keys if k not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(src, f"missing variable(s) {missing}; the file has {present}")
    arrays = {k: np.asarray(mat[k]) for k in keys}
    for k in ("I_tr", "T_tr", "I_te", "T_te"):
        if arrays[k].ndim != 2 or not np.issubdtype(arrays[k].dtype, np.number):
            raise DatasetFormatError(
                src, f"{k} should be a 2-D numeric matrix, got shape {arrays[k].shape}"
            )
    for part in ("tr", "te"):
        rows = {k: arrays[f"{k}_{part}"].shape[0] for k in ("I", "T", "L")}
        if len(set(rows.values())) != 1:
            raise DatasetFormatError(src, f"row counts of the {part} variables differ: {rows}")
    if arrays["I_tr"].shape[1] != arrays["I_te"].shape[1] or (
        arrays["T_tr"].shape[1] != arrays["T_te"].shape[1]
    ):
        raise DatasetFormatError(src, "train and test features have different dimensions")
    l_tr, l_te = _labels_to_multihot(src, arrays["L_tr"], arrays["L_te"])
    i_tr = arrays["I_tr"].astype(np.float32)
    t_tr = arrays["T_tr"].astype(np.float32)
    n_tr, n_te = i_tr.shape[0], arrays["I_te"].shape[0]
    protocol = (
        f"Wikipedia cross-modal (Rasiwasia et al. 2010): queries = the {n_te} test pairs; "
        f"database = the {n_tr} training pairs, which are also the training set; image = "
        f"{i_tr.shape[1]}-d SIFT bag of visual words, text = {t_tr.shape[1]}-d LDA topics; "
        f"{l_tr.shape[1]} classes, relevant = shares at least one label"
    )
    return HashingDataset(
        name="wiki",
        train_image=i_tr,
        train_text=t_tr,
        train_labels=l_tr,
        query_image=arrays["I_te"].astype(np.float32),
        query_text=arrays["T_te"].astype(np.float32),
        query_labels=l_te,
        db_image=i_tr,
        db_text=t_tr,
        db_labels=l_tr,
        protocol=protocol,
    )


# ---------------------------------------------------------------------------------------
# Precomputed embeddings
# ---------------------------------------------------------------------------------------


def _find_npy(directory: Path, words: Sequence[str], what: str) -> Path:
    found = sorted(p for p in directory.glob("*.npy") if any(w in p.stem.lower() for w in words))
    found = [p for p in found if "text_to_image" not in p.stem.lower()]
    if len(found) != 1:
        listing = sorted(p.name for p in directory.glob("*.npy"))
        raise DatasetFormatError(
            directory,
            f"expected exactly one {what} .npy file (name containing one of {list(words)}), "
            f"found {[p.name for p in found]} among {listing}; pass (image_npy, text_npy) "
            "explicitly",
        )
    return found[0]


def _check_embedding(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] == 0:
        raise DatasetFormatError(
            path, f"{what} embeddings must be a non-empty 2-D array, got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetFormatError(
            path, f"{what} embeddings must be floating point, got {array.dtype}"
        )
    out = array.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise DatasetFormatError(path, f"{what} embeddings contain NaN or infinite values")
    return out


def load_paired_embeddings(
    source: PathLike | tuple[PathLike, PathLike],
    *,
    text_to_image: np.ndarray | PathLike | None = None,
    normalize: bool = False,
    name: str | None = None,
) -> PairedEmbeddings:
    """Load precomputed image and text embeddings (``.npy``, float, shape ``(n, d)``).

    Format: a folder with one ``*image*.npy`` (or ``*img*``) file and one ``*text*.npy``
    (or ``*txt*``, ``*caption*``) file, or the two paths as a tuple. Row ``j`` of the text
    matrix describes row ``text_to_image[j]`` of the image matrix. Without an explicit
    mapping, a ``text_to_image.npy`` in the folder is used, else the rows pair one to one
    (``text_to_image = arange(n)``), which needs as many texts as images::

        flickr30k-clip-vitl14-1k/
            flickr30k_image_embeddings.npy   # (1000, 768) float32
            flickr30k_text_embeddings.npy    # (1000, 768) float32

    Args:
        source: The folder, or ``(image_npy, text_npy)``.
        text_to_image: Image row of each text row, an int array ``(n_texts,)`` or a path to
            one (e.g. ``np.repeat(np.arange(n_images), 5)`` for 5 captions per image stored
            image by image).
        normalize: L2-normalise the rows. Otherwise rows whose norm is not 1 (within
            1e-3) only log a warning, since cosine-similarity search expects unit vectors.
        name: Dataset name; defaults to the folder name.

    Returns:
        The embeddings as float32.

    Raises:
        DatasetFormatError: files cannot be found unambiguously, are not 2-D float arrays,
            contain NaN/inf, disagree in dimension, or the mapping is invalid.
        FileNotFoundError: a file is missing.

    Example:
        >>> emb = load_paired_embeddings("flickr30k-clip-vitl14-1k")  # doctest: +SKIP
        >>> emb.image.shape, emb.text_to_image[:3]  # doctest: +SKIP
        ((1000, 768), array([0, 1, 2]))
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError("source must be a folder or a tuple (image_npy, text_npy)")
        image_path, text_path = Path(source[0]), Path(source[1])
        folder = image_path.parent
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"embedding folder {folder} does not exist; pass a folder or (image_npy, text_npy)"
            )
        image_path = _find_npy(folder, ("image", "img"), "image")
        text_path = _find_npy(folder, ("text", "txt", "caption"), "text")
        if text_to_image is None and (folder / "text_to_image.npy").is_file():
            text_to_image = folder / "text_to_image.npy"
    try:
        raw_image = load_npy(image_path)
        raw_text = load_npy(text_path)
    except ValueError as exc:
        raise DatasetFormatError(image_path.parent, str(exc)) from exc
    image = _check_embedding(image_path, raw_image, "image")
    text = _check_embedding(text_path, raw_text, "text")
    if image.shape[1] != text.shape[1]:
        raise DatasetFormatError(
            text_path,
            f"text dimension {text.shape[1]} differs from image dimension {image.shape[1]} "
            f"({image_path.name}); were they made by different models?",
        )
    mapping_src: Path = text_path
    if text_to_image is None:
        if text.shape[0] != image.shape[0]:
            hint = ""
            if text.shape[0] % image.shape[0] == 0:
                k = text.shape[0] // image.shape[0]
                hint = (
                    f" (for {k} captions per image stored image by image pass "
                    f"text_to_image=np.repeat(np.arange({image.shape[0]}), {k}))"
                )
            raise DatasetFormatError(
                text_path,
                f"{text.shape[0]} texts for {image.shape[0]} images: rows cannot pair one to "
                f"one; give text_to_image{hint}",
            )
        mapping = np.arange(text.shape[0], dtype=np.int64)
    else:
        if isinstance(text_to_image, (str, os.PathLike)):
            mapping_src = Path(text_to_image)
            try:
                mapping = load_npy(mapping_src)
            except ValueError as exc:
                raise DatasetFormatError(mapping_src, str(exc)) from exc
        else:
            mapping = np.asarray(text_to_image)
        if not np.issubdtype(mapping.dtype, np.integer):
            raise DatasetFormatError(
                mapping_src, f"text_to_image must be integers, got {mapping.dtype}"
            )
        if mapping.shape != (text.shape[0],):
            raise DatasetFormatError(
                mapping_src,
                f"text_to_image must have shape ({text.shape[0]},), got {mapping.shape}",
            )
        if mapping.size and (mapping.min() < 0 or mapping.max() >= image.shape[0]):
            raise DatasetFormatError(
                mapping_src, f"text_to_image values must lie in [0, {image.shape[0]})"
            )
        mapping = mapping.astype(np.int64)
    for arr, path, what in ((image, image_path, "image"), (text, text_path, "text")):
        norms = np.linalg.norm(arr, axis=1)
        if normalize:
            if (norms == 0).any():
                raise DatasetFormatError(path, f"{what} embeddings have all-zero rows")
            arr /= norms[:, None]
        elif np.abs(norms - 1.0).max() > UNIT_NORM_TOLERANCE:
            logger.warning(
                "%s: %s embeddings are not unit-norm (norms %.4g..%.4g); cosine search "
                "expects unit vectors: pass normalize=True",
                path,
                what,
                float(norms.min()),
                float(norms.max()),
            )
    return PairedEmbeddings(
        image=image, text=text, text_to_image=mapping, name=name or folder.name or "embeddings"
    )


# ---------------------------------------------------------------------------------------
# Composed image retrieval: CIRR, CIRCO, FashionIQ
# ---------------------------------------------------------------------------------------


def load_cirr(
    captions_json: PathLike,
    split_json: PathLike,
    image_root: PathLike,
    *,
    check_images: bool = True,
) -> ComposedDataset:
    """Load a CIRR split: ``cap.rc2.{split}.json`` with ``split.rc2.{split}.json``.

    Caption file, a list of::

        {"pairid": 12063, "reference": "dev-147-1-img1", "target_hard": "dev-83-0-img1",
         "target_soft": {"dev-83-0-img1": 1.0},
         "caption": "remove all but one dog and add a woman hugging it",
         "img_set": {"id": 1, "members": ["dev-147-1-img1", "dev-83-0-img1", ...]}}

    Split file, image name -> path relative to ``image_root`` (the folder that holds
    ``train/``, ``dev/``, ``test1/``)::

        {"dev-147-1-img1": "./dev/dev-147-1-img1.png", ...}

    The corpus is every image of the split file, id = image name. ``subset_ids`` are the
    ``img_set`` members as given: they include the reference image, which CIRR's metrics
    remove from every ranking. The ``test1`` split has no ``target_hard`` (its ground truth
    stays on the CIRR evaluation server) and is rejected.

    Args:
        captions_json: ``cap.rc2.{split}.json``.
        split_json: ``split.rc2.{split}.json``.
        image_root: Folder the split file's relative paths start from.
        check_images: Fail when an image file is missing.

    Returns:
        The corpus and one :class:`ComposedExample` per pair (id = ``str(pairid)``).

    Raises:
        DatasetFormatError: malformed files, the test split, or names missing from the
            split file.
        FileNotFoundError: a file, or with ``check_images``, an image is missing.

    Example:
        >>> ds = load_cirr("cirr/captions/cap.rc2.val.json",
        ...                "cirr/image_splits/split.rc2.val.json", "cirr/img_raw")  # doctest: +SKIP
        >>> len(ds.examples)  # doctest: +SKIP
        4181
    """
    cap_src, split_src = Path(captions_json), Path(split_json)
    captions = _read_json(cap_src)
    names = _read_json(split_src)
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in names.items()
    ):
        raise DatasetFormatError(
            split_src,
            "a CIRR split file maps image names to relative paths: "
            '{"dev-147-1-img1": "./dev/dev-147-1-img1.png", ...}',
        )
    if not isinstance(captions, list) or not captions:
        raise DatasetFormatError(cap_src, "a CIRR caption file is a non-empty list of pairs")
    if all(isinstance(c, dict) and "target_hard" not in c for c in captions):
        raise DatasetFormatError(
            cap_src,
            "no entry has 'target_hard': this is the CIRR test1 split, whose ground truth is "
            "held by the CIRR evaluation server; evaluate locally on the val split",
        )
    examples: list[ComposedExample] = []
    for i, c in enumerate(captions):
        where = f"entry {i}"
        pairid = _require(cap_src, c, "pairid", (int, str), where)
        where = f"entry {i} (pairid {pairid})"
        reference = _require(cap_src, c, "reference", str, where)
        target = _require(cap_src, c, "target_hard", str, where)
        caption = _require(cap_src, c, "caption", str, where)
        members: list[str] = []
        img_set = c.get("img_set")
        if img_set is not None:
            members = _require(cap_src, img_set, "members", list, f"{where} img_set")
        for name in (reference, target, *members):
            if name not in names:
                raise DatasetFormatError(
                    cap_src,
                    f"{where} names image {name!r}, which {split_src.name} does not list; "
                    "are the caption and split files of the same split?",
                )
        meta: dict[str, Any] = {"pairid": pairid}
        if isinstance(img_set, dict) and "id" in img_set:
            meta["img_set_id"] = img_set["id"]
        if "target_soft" in c:
            meta["target_soft"] = c["target_soft"]
        examples.append(
            ComposedExample(
                id=str(pairid),
                reference_id=reference,
                modification=caption.strip(),
                target_ids=(target,),
                subset_ids=tuple(members),
                metadata=meta,
            )
        )
    corpus = _make_corpus(
        [Item(id=name, image=_join(image_root, rel)) for name, rel in names.items()], split_src
    )
    _check_images(corpus.values(), split_src, image_root, check_images)
    return ComposedDataset(corpus=corpus, examples=examples, name=_split_name(cap_src, "cirr"))


def load_circo(
    annotation_json: PathLike,
    image_root: PathLike,
    *,
    image_info_json: PathLike | None = None,
    file_pattern: str = "{id:012d}.jpg",
    check_images: bool = True,
) -> ComposedDataset:
    """Load a CIRCO split (``annotations/val.json``), with COCO 2017 unlabeled images.

    Annotation file, a list of::

        {"id": 0, "reference_img_id": 85932, "target_img_id": 9761,
         "relative_caption": "is held by a little girl on a chair",
         "shared_concept": "a teddy bear",
         "gt_img_ids": [9761, 489535, 57541, 375057, 119881]}

    Images are COCO ids; ``image_root`` is the ``unlabeled2017/`` folder and a file is named
    ``file_pattern.format(id=coco_id)`` (``000000085932.jpg``) unless ``image_info_json``
    gives names. Item ids are the COCO ids as strings; ``target_ids`` are ``gt_img_ids``
    (the first is ``target_img_id``). ``modification`` is the relative caption; the shared
    concept is in the example's metadata.

    The official CIRCO index is the whole COCO 2017 unlabeled set: pass its
    ``image_info_unlabeled2017.json`` as ``image_info_json`` to get it. Without it the
    corpus holds only the images the annotations name, a much easier task whose mAP@K is
    not comparable to published numbers (a warning says so). The test split has no
    ground truth (evaluation server only) and is rejected.

    Args:
        annotation_json: CIRCO ``val.json``.
        image_root: Folder of the COCO unlabeled 2017 images.
        image_info_json: COCO ``image_info_unlabeled2017.json`` (``{"images": [{"id",
            "file_name"}]}``) defining the full corpus.
        file_pattern: File name of an image id when ``image_info_json`` is not given.
        check_images: Fail when an image file is missing.

    Returns:
        The corpus and one :class:`ComposedExample` per query (id = ``str(id)``).

    Raises:
        DatasetFormatError: malformed files, the test split, or ids missing from
            ``image_info_json``.
        FileNotFoundError: a file, or with ``check_images``, an image is missing.

    Example:
        >>> ds = load_circo("CIRCO/annotations/val.json", "CIRCO/COCO2017_unlabeled/unlabeled2017",
        ...     image_info_json="CIRCO/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
        ... )  # doctest: +SKIP
        >>> len(ds.examples)  # doctest: +SKIP
        220
    """
    src = Path(annotation_json)
    annotations = _read_json(src)
    if not isinstance(annotations, list) or not annotations:
        raise DatasetFormatError(src, "a CIRCO annotation file is a non-empty list of queries")
    if all(isinstance(a, dict) and "gt_img_ids" not in a for a in annotations):
        raise DatasetFormatError(
            src,
            "no entry has 'gt_img_ids': this is the CIRCO test split, whose ground truth is "
            "held by the CIRCO evaluation server; evaluate locally on val.json",
        )
    examples: list[ComposedExample] = []
    referenced: dict[str, int] = {}
    for i, a in enumerate(annotations):
        qid = _require(src, a, "id", (int, str), f"entry {i}")
        where = f"entry {i} (id {qid})"
        ref = _require(src, a, "reference_img_id", int, where)
        caption = _require(src, a, "relative_caption", str, where)
        gts = _require(src, a, "gt_img_ids", list, where)
        if not gts or not all(isinstance(g, int) and not isinstance(g, bool) for g in gts):
            raise DatasetFormatError(
                src, f"{where}: gt_img_ids must be a non-empty list of COCO ids, got {gts!r}"
            )
        target = a.get("target_img_id")
        ordered = list(dict.fromkeys(([target] if isinstance(target, int) else []) + gts))
        for cid in (ref, *ordered):
            referenced.setdefault(str(cid), cid)
        meta: dict[str, Any] = {"shared_concept": a.get("shared_concept", "")}
        if isinstance(target, int):
            meta["target_img_id"] = str(target)
        examples.append(
            ComposedExample(
                id=str(qid),
                reference_id=str(ref),
                modification=caption.strip(),
                target_ids=tuple(str(g) for g in ordered),
                metadata=meta,
            )
        )
    if image_info_json is not None:
        info_src = Path(image_info_json)
        info = _read_json(info_src)
        images = info.get("images") if isinstance(info, dict) else None
        if not isinstance(images, list):
            raise DatasetFormatError(
                info_src, 'expected COCO image info {"images": [{"id": ..., "file_name": ...}]}'
            )
        items = []
        for j, im in enumerate(images):
            cid = _require(info_src, im, "id", int, f"images[{j}]")
            fname = _require(info_src, im, "file_name", str, f"images[{j}]")
            items.append(Item(id=str(cid), image=_join(image_root, fname)))
        corpus = _make_corpus(items, info_src)
        absent = [cid for cid in referenced if cid not in corpus]
        if absent:
            raise DatasetFormatError(
                src,
                f"{len(absent)} image id(s) named by the annotations are not in "
                f"{info_src.name} (e.g. {absent[:3]}); is it image_info_unlabeled2017.json?",
            )
    else:
        logger.warning(
            "%s: no image_info_json given, so the corpus is only the %d images the "
            "annotations name; mAP@K on it is not comparable to the official CIRCO index "
            "(all of COCO 2017 unlabeled)",
            src,
            len(referenced),
        )
        try:
            items = [
                Item(id=key, image=_join(image_root, file_pattern.format(id=cid)))
                for key, cid in referenced.items()
            ]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"file_pattern {file_pattern!r} must format an integer 'id', e.g. '{{id:012d}}.jpg'"
            ) from exc
        corpus = Corpus(items)
    _check_images(corpus.values(), src, image_root, check_images)
    return ComposedDataset(corpus=corpus, examples=examples, name=f"circo-{src.stem}")


def join_fashioniq_captions(captions: Sequence[str]) -> str:
    """Join the two FashionIQ relative captions into one modification text.

    This is the deterministic join of CLIP4Cir, SEARLE and CIReVL: each caption is
    stripped of surrounding ``.?,`` and spaces, the first is capitalised (Python's
    ``str.capitalize``, which also lowercases the rest) and they are joined with
    ``" and "``. One caption is returned capitalised; more than two are joined in order.

    Example:
        >>> join_fashioniq_captions(["is shiny and silver.", "has no straps"])
        'Is shiny and silver and has no straps'
    """
    parts = [c.strip(".?, ") for c in captions if c.strip(".?, ")]
    if not parts:
        raise ValueError(f"no non-empty caption in {list(captions)!r}")
    return " and ".join([parts[0].capitalize(), *parts[1:]])


def load_fashioniq(
    captions_json: PathLike,
    split_json: PathLike,
    image_root: PathLike,
    category: str,
    *,
    extension: str = ".png",
    check_images: bool = True,
) -> ComposedDataset:
    """Load one FashionIQ category: ``captions/cap.{category}.{split}.json`` + image split.

    Caption file, a list of::

        {"candidate": "B008MTHLHQ", "target": "B005X4PL1G",
         "captions": ["is sexier and shorter", "is black with a lower neckline"]}

    Split file ``image_splits/split.{category}.{split}.json``: the list of image names of
    the split (``["B005X4PL1G", ...]``), which is the corpus. An image file is
    ``image_root/{name}{extension}``. The two captions become one modification text with
    :func:`join_fashioniq_captions` (``"Is sexier and shorter and is black with a lower
    neckline"``); the raw captions stay in the example's metadata. Test-split caption
    files without ``target`` are rejected.

    Args:
        captions_json: ``cap.{category}.{split}.json``.
        split_json: ``split.{category}.{split}.json``.
        image_root: Folder of the images.
        category: ``"dress"``, ``"shirt"`` or ``"toptee"``.
        extension: Image file extension (CLIP4Cir-style downloads use ``.png``).
        check_images: Fail when an image file is missing.

    Returns:
        The corpus and one example per caption entry (id ``"{category}-{index}"``).

    Raises:
        DatasetFormatError: malformed files, missing targets, or names missing from the
            split file.
        FileNotFoundError: a file, or with ``check_images``, an image is missing.

    Example:
        >>> ds = load_fashioniq("fashionIQ/captions/cap.dress.val.json",
        ...     "fashionIQ/image_splits/split.dress.val.json", "fashionIQ/images", "dress",
        ... )  # doctest: +SKIP
        >>> ds.name  # doctest: +SKIP
        'fashioniq-dress-val'
    """
    if category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"category must be one of {FASHIONIQ_CATEGORIES}, got {category!r}")
    cap_src, split_src = Path(captions_json), Path(split_json)
    entries = _read_json(cap_src)
    names = _read_json(split_src)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(split_src, "a FashionIQ split file is a list of image names")
    if not isinstance(entries, list) or not entries:
        raise DatasetFormatError(cap_src, "a FashionIQ caption file is a non-empty list")
    name_set = set(names)
    examples: list[ComposedExample] = []
    for i, e in enumerate(entries):
        where = f"entry {i}"
        candidate = _require(cap_src, e, "candidate", str, where)
        if "target" not in e:
            raise DatasetFormatError(
                cap_src, f"{where} has no 'target': test-split captions have no ground truth"
            )
        target = _require(cap_src, e, "target", str, where)
        caps = _require(cap_src, e, "captions", list, where)
        if not caps or not all(isinstance(c, str) for c in caps):
            raise DatasetFormatError(cap_src, f"{where}: captions must be a list of strings")
        try:
            text = join_fashioniq_captions(caps)
        except ValueError as exc:
            raise DatasetFormatError(cap_src, f"{where}: {exc}") from exc
        for name in (candidate, target):
            if name not in name_set:
                raise DatasetFormatError(
                    cap_src,
                    f"{where} names image {name!r}, which {split_src.name} does not list; are "
                    "the caption and split files of the same category and split?",
                )
        examples.append(
            ComposedExample(
                id=f"{category}-{i}",
                reference_id=candidate,
                modification=text,
                target_ids=(target,),
                metadata={"captions": list(caps), "category": category},
            )
        )
    ext = extension if extension.startswith(".") or not extension else f".{extension}"
    unique = list(dict.fromkeys(names))
    corpus = Corpus([Item(id=n, image=_join(image_root, f"{n}{ext}")) for n in unique])
    _check_images(corpus.values(), split_src, image_root, check_images)
    return ComposedDataset(
        corpus=corpus, examples=examples, name=_split_name(cap_src, f"fashioniq-{category}")
    )


# ---------------------------------------------------------------------------------------
# Dialog retrieval: ChatIR and VisDial 1.0
# ---------------------------------------------------------------------------------------


def _parse_round(text: str) -> DialogTurn:
    """``"is it sunny? yes"`` -> ``DialogTurn("is it sunny?", "yes")``.

    The split is at the first ``?``; a round without one is kept whole as the question,
    so :meth:`DialogTurn.as_text` gives the round back as written (up to spacing).
    """
    pos = text.find("?")
    if pos < 0:
        return DialogTurn(question=text.strip(), answer="")
    return DialogTurn(question=text[: pos + 1].strip(), answer=text[pos + 1 :].strip())


def load_chatir_dialogs(
    json_path: PathLike,
    image_root: PathLike,
    *,
    search_space: PathLike | None = None,
    image_pattern: str | Callable[[int], str] = VISDIAL_VAL_PATTERN,
    check_images: bool = True,
) -> DialogDataset:
    """Load retrieval dialogs in the ChatIR format or the VisDial 1.0 format.

    ChatIR (``dialogues/*.json``): a list of dialogs, each a target image path (``img``, or
    ``image``) relative to ``image_root`` and the caption followed by ``"question? answer"``
    rounds::

        [{"img": "unlabeled2017/000000185565.jpg",
          "dialog": ["a bedroom is filled with posters and a computer desk",
                     "is the photo in color? yes", "is it daytime? i don't see windows"]}]

    Each round is split at its first ``?`` into a :class:`DialogTurn`, so
    ``example.query(r).as_text()`` rebuilds ChatIR's round-``r`` query text.

    VisDial 1.0 (``visdial_1.0_val.json``): questions and answers are stored once and
    referenced by index::

        {"data": {"questions": ["is the photo in color", ...], "answers": ["yes", ...],
                  "dialogs": [{"image_id": 185565, "caption": "a bedroom ...",
                               "dialog": [{"question": 0, "answer": 0}, ...]}]}}

    A ``?`` is appended to VisDial questions that lack one, as ChatIR's derived files do.
    Rounds without an answer (the last round of VisDial test dialogs) keep an empty answer.
    The image path is ``image_pattern.format(image_id=...)`` (default: the VisDial val2018
    names) or ``image_pattern(image_id)`` when it is callable (train mixes COCO train2014
    and val2014 names).

    The corpus is the ChatIR ``search_space`` when given (``ChatIR_Protocol/
    Search_Space_val_50k.json``, a list of image paths relative to ``image_root``, the
    official 50k-image protocol), else only the dialog targets (a warning says Hits@K is
    then not comparable to published numbers). Item ids are the relative paths.

    Args:
        json_path: The dialog file.
        image_root: Folder image paths are relative to.
        search_space: JSON list of the corpus image paths.
        image_pattern: VisDial image id -> path, as a format string or a callable.
        check_images: Fail when an image file is missing.

    Returns:
        The corpus and one :class:`DialogExample` per dialog (id = position in the file for
        ChatIR, ``str(image_id)`` for VisDial).

    Raises:
        DatasetFormatError: neither layout, a malformed dialog, a bad question/answer index,
            or a target missing from the search space.
        FileNotFoundError: a file, or with ``check_images``, an image is missing.

    Example:
        >>> ds = load_chatir_dialogs("ChatIR/dialogues/VisDial_v1.0_queries_val.json", "coco",
        ...     search_space="ChatIR/ChatIR_Protocol/Search_Space_val_50k.json")  # doctest: +SKIP
        >>> ds.examples[0].query(rounds=1).as_text()  # doctest: +SKIP
        'a bedroom is filled with lots of posters ..., is the photo in color? yes'
    """
    src = Path(json_path)
    data = _read_json(src)
    if isinstance(data, list):
        examples = _chatir_examples(src, data)
        kind = "chatir"
    elif isinstance(data, dict) and isinstance(data.get("data"), dict):
        examples = _visdial_examples(src, data["data"], image_pattern)
        kind = "visdial"
    else:
        raise DatasetFormatError(
            src,
            'expected a ChatIR dialog list [{"img": ..., "dialog": [...]}] or a VisDial '
            '1.0 file {"data": {"questions", "answers", "dialogs"}}',
        )
    if not examples:
        raise DatasetFormatError(src, "the file holds no dialogs")
    targets = list(dict.fromkeys(e.target_id for e in examples))
    if search_space is not None:
        space_src = Path(search_space)
        space = _read_json(space_src)
        if not isinstance(space, list) or not all(isinstance(p, str) for p in space):
            raise DatasetFormatError(space_src, "a search space file is a list of image paths")
        corpus = _make_corpus(
            [Item(id=p.replace("\\", "/"), image=_join(image_root, p)) for p in space],
            space_src,
        )
        absent = [t for t in targets if t not in corpus]
        if absent:
            raise DatasetFormatError(
                space_src,
                f"{len(absent)} dialog target(s) of {src.name} are not in the search space "
                f"(e.g. {absent[:3]}); are the dialogs and the search space of the same split?",
            )
    else:
        logger.warning(
            "%s: no search_space given, so the corpus is only the %d dialog targets; "
            "Hits@K on it is not comparable to the 50k-image ChatIR protocol",
            src,
            len(targets),
        )
        corpus = Corpus([Item(id=t, image=_join(image_root, t)) for t in targets])
    _check_images(corpus.values(), src, image_root, check_images)
    return DialogDataset(corpus=corpus, examples=examples, name=f"{kind}-{src.stem}")


def _chatir_examples(src: Path, data: list[Any]) -> list[DialogExample]:
    examples: list[DialogExample] = []
    for i, d in enumerate(data):
        where = f"dialog {i}"
        if not isinstance(d, dict):
            raise DatasetFormatError(src, f"{where} should be an object, got {type(d).__name__}")
        key = "img" if "img" in d else "image"
        img = _require(src, d, key, str, where)
        rounds = _require(src, d, "dialog", list, where)
        if not rounds or not all(isinstance(r, str) for r in rounds):
            raise DatasetFormatError(
                src, f"{where}: 'dialog' must be a non-empty list of strings (caption first)"
            )
        examples.append(
            DialogExample(
                id=str(i),
                target_id=img.replace("\\", "/"),
                caption=rounds[0].strip(),
                turns=tuple(_parse_round(r) for r in rounds[1:]),
            )
        )
    return examples


def _visdial_examples(
    src: Path, data: dict[str, Any], image_pattern: str | Callable[[int], str]
) -> list[DialogExample]:
    questions = _require(src, data, "questions", list, "data")
    answers = _require(src, data, "answers", list, "data")
    dialogs = _require(src, data, "dialogs", list, "data")
    examples: list[DialogExample] = []
    for i, d in enumerate(dialogs):
        where = f"data.dialogs[{i}]"
        image_id = _require(src, d, "image_id", int, where)
        caption = _require(src, d, "caption", str, where)
        rounds = _require(src, d, "dialog", list, where)
        turns: list[DialogTurn] = []
        for r, rnd in enumerate(rounds):
            rwhere = f"{where}.dialog[{r}]"
            q_idx = _require(src, rnd, "question", int, rwhere)
            if not 0 <= q_idx < len(questions):
                raise DatasetFormatError(
                    src, f"{rwhere}: question index {q_idx} is outside 0..{len(questions) - 1}"
                )
            question = str(questions[q_idx]).strip()
            if question and not question.endswith("?"):
                question += "?"
            answer = ""
            if "answer" in rnd:
                a_idx = _require(src, rnd, "answer", int, rwhere)
                if not 0 <= a_idx < len(answers):
                    raise DatasetFormatError(
                        src, f"{rwhere}: answer index {a_idx} is outside 0..{len(answers) - 1}"
                    )
                answer = str(answers[a_idx]).strip()
            turns.append(DialogTurn(question=question, answer=answer))
        try:
            path = (
                image_pattern(image_id)
                if callable(image_pattern)
                else image_pattern.format(image_id=image_id)
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"image_pattern {image_pattern!r} must format an integer 'image_id', e.g. "
                f"{VISDIAL_VAL_PATTERN!r}"
            ) from exc
        examples.append(
            DialogExample(
                id=str(image_id),
                target_id=str(path).replace("\\", "/"),
                caption=caption.strip(),
                turns=tuple(turns),
                metadata={"image_id": image_id},
            )
        )
    return examples


__all__ = [
    "FASHIONIQ_CATEGORIES",
    "VISDIAL_VAL_PATTERN",
    "DatasetFormatError",
    "join_fashioniq_captions",
    "load_chatir_dialogs",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_flickr8k",
    "load_karpathy",
    "load_paired_embeddings",
    "load_wiki_xmodal",
    "split_by_image",
]
