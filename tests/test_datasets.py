"""Tests for vistrieve.evals.datasets on tiny hand-written files and the shared samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from vistrieve.data.tasks import ComposedDataset, DialogDataset, HashingDataset
from vistrieve.evals.datasets import (
    DatasetFormatError,
    join_fashioniq_captions,
    load_chatir_dialogs,
    load_circo,
    load_cirr,
    load_fashioniq,
    load_flickr8k,
    load_karpathy,
    load_paired_embeddings,
    load_wiki_xmodal,
    split_by_image,
)
from vistrieve.types import Corpus, Item


def touch(path: Path) -> Path:
    """An empty stand-in image file (loaders only check that images exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# Karpathy
# ---------------------------------------------------------------------------------------


def karpathy_coco(tmp_path: Path) -> Path:
    images = []
    for i, split in enumerate(["train", "restval", "val", "test", "test"]):
        fp = "train2014" if split == "train" else "val2014"
        name = f"COCO_{fp}_{i:012d}.jpg"
        touch(tmp_path / "coco" / fp / name)
        images.append(
            {
                "filepath": fp,
                "filename": name,
                "split": split,
                "imgid": i,
                "cocoid": 100 + i,
                "sentences": [{"raw": f" caption {i}.{j} ", "tokens": []} for j in range(6)],
            }
        )
    return write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": images})


def test_karpathy_coco_splits_and_restval(tmp_path: Path) -> None:
    path = karpathy_coco(tmp_path)
    root = tmp_path / "coco"
    test = load_karpathy(path, root)
    assert test.ids == ["COCO_val2014_000000000003.jpg", "COCO_val2014_000000000004.jpg"]
    item = test["COCO_val2014_000000000003.jpg"]
    assert Path(item.image) == root / "val2014" / "COCO_val2014_000000000003.jpg"
    assert item.captions[0] == "caption 3.0" and len(item.captions) == 6
    assert item.metadata == {"split": "test", "imgid": 3, "cocoid": 103}
    train = load_karpathy(path, root, split="train")
    assert [train[i].metadata["split"] for i in train] == ["train", "restval"]
    assert len(load_karpathy(path, root, split="restval")) == 1
    assert len(load_karpathy(path, root, split="all")) == 5
    five = load_karpathy(path, root, split="val", max_captions=5)
    assert all(len(it.captions) == 5 for it in five.values())


def test_karpathy_flickr_layout_without_filepath(tmp_path: Path) -> None:
    touch(tmp_path / "imgs" / "1.jpg")
    path = write_json(
        tmp_path / "dataset_flickr30k.json",
        {
            "images": [
                {"filename": "1.jpg", "split": "test", "imgid": 0, "sentences": [{"raw": "a dog"}]}
            ]
        },
    )
    corpus = load_karpathy(path, tmp_path / "imgs")
    assert Path(corpus["1.jpg"].image) == tmp_path / "imgs" / "1.jpg"
    with pytest.raises(DatasetFormatError, match=r"split 'restval' holds no images.*\['test'\]"):
        load_karpathy(path, tmp_path / "imgs", split="restval")


def test_karpathy_malformed_and_missing(tmp_path: Path) -> None:
    bad = write_json(tmp_path / "bad.json", [{"filename": "x"}])
    with pytest.raises(DatasetFormatError, match=r"bad\.json: not a Karpathy split file"):
        load_karpathy(bad, tmp_path)
    bad = write_json(
        tmp_path / "bad2.json",
        {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"tokens": []}]}]},
    )
    with pytest.raises(DatasetFormatError, match=r"images\[0\]\.sentences\[0\] has no 'raw'"):
        load_karpathy(bad, tmp_path)
    (tmp_path / "trunc.json").write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_karpathy(tmp_path / "trunc.json", tmp_path)
    ok = write_json(
        tmp_path / "ok.json",
        {"images": [{"filename": "gone.jpg", "split": "test", "sentences": [{"raw": "x"}]}]},
    )
    with pytest.raises(FileNotFoundError, match="check_images=False"):
        load_karpathy(ok, tmp_path)
    assert len(load_karpathy(ok, tmp_path, check_images=False)) == 1
    with pytest.raises(ValueError, match="split must be"):
        load_karpathy(ok, tmp_path, split="dev")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Flickr8k
# ---------------------------------------------------------------------------------------


def test_flickr8k_commas_quotes_and_image_folder(tmp_path: Path) -> None:
    touch(tmp_path / "Images" / "a.jpg")
    touch(tmp_path / "Images" / "b.jpg")
    (tmp_path / "captions.txt").write_text(
        "image,caption\n"
        "a.jpg,A dog , wet , on the shore .\n"
        'a.jpg,"A cat , sleeping ."\n'
        'b.jpg,"He said ""hi"" , then left"\n'
        "\n",
        encoding="utf-8",
    )
    corpus = load_flickr8k(tmp_path)
    assert corpus.ids == ["a.jpg", "b.jpg"]
    assert corpus["a.jpg"].captions == ("A dog , wet , on the shore .", "A cat , sleeping .")
    assert corpus["b.jpg"].captions == ('He said "hi" , then left',)
    assert Path(corpus["a.jpg"].image) == tmp_path / "Images" / "a.jpg"


def test_flickr8k_token_format_and_explicit_image_dir(tmp_path: Path) -> None:
    touch(tmp_path / "pics" / "a.jpg")
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\tA dog , running .\na.jpg#1\tA brown dog .\n", encoding="utf-8")
    corpus = load_flickr8k(token, image_dir=tmp_path / "pics")
    assert corpus["a.jpg"].captions == ("A dog , running .", "A brown dog .")


def test_flickr8k_malformed(tmp_path: Path) -> None:
    f = tmp_path / "captions.txt"
    f.write_text("a.jpg,no header\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"line 1: expected the header 'image,caption'"):
        load_flickr8k(f, check_images=False)
    f.write_text("image,caption\na.jpg,fine\nbroken line\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"captions\.txt: line 3: no a comma"):
        load_flickr8k(f, check_images=False)
    f.write_text("image,caption\na.jpg,\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"line 2: empty caption"):
        load_flickr8k(f, check_images=False)
    f.write_text("", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="empty"):
        load_flickr8k(f, check_images=False)
    f.write_text("image,caption\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="1 image file"):
        load_flickr8k(f)
    with pytest.raises(FileNotFoundError):
        load_flickr8k(tmp_path / "absent")


def test_flickr8k_real_sample(shared_data: Path) -> None:
    corpus = load_flickr8k(shared_data / "flickr8k-1k")
    assert len(corpus) == 1000
    assert all(len(item.captions) == 5 for item in corpus.values())
    assert all(Path(item.image).is_file() for item in corpus.values())
    train, test = split_by_image(corpus, n_train=800, seed=0)
    assert (len(train), len(test)) == (800, 200)


# ---------------------------------------------------------------------------------------
# split_by_image
# ---------------------------------------------------------------------------------------


def test_split_by_image_is_seeded_disjoint_and_order_independent() -> None:
    items = [Item(id=f"{i:03d}", captions=(f"c{i}",)) for i in range(50)]
    corpus = Corpus(items)
    train, test = split_by_image(corpus, n_train=40, seed=3)
    assert (len(train), len(test)) == (40, 10)
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(corpus)
    assert train.ids == sorted(train.ids)
    shuffled = Corpus(list(reversed(items)))
    assert split_by_image(shuffled, n_train=40, seed=3)[1].ids == test.ids
    assert split_by_image(corpus, n_train=40, seed=4)[1].ids != test.ids
    assert train[train.ids[0]].captions == corpus[train.ids[0]].captions
    for bad in (0, 50):
        with pytest.raises(ValueError, match="n_train"):
            split_by_image(corpus, n_train=bad)


# ---------------------------------------------------------------------------------------
# Wikipedia .mat
# ---------------------------------------------------------------------------------------


def wiki_mat(path: Path, l_tr: np.ndarray, l_te: np.ndarray, **drop: bool) -> Path:
    rng = np.random.default_rng(0)
    n_tr, n_te = l_tr.shape[0], l_te.shape[0]
    mat = {
        "I_tr": rng.random((n_tr, 4)),
        "T_tr": rng.random((n_tr, 3)),
        "L_tr": l_tr,
        "I_te": rng.random((n_te, 4)),
        "T_te": rng.random((n_te, 3)),
        "L_te": l_te,
    }
    for key in drop:
        mat.pop(key)
    scipy.io.savemat(path, mat)
    return path


def test_wiki_index_labels_become_multi_hot(tmp_path: Path) -> None:
    path = wiki_mat(
        tmp_path / "w.mat",
        np.array([[1], [3], [2], [3]], dtype=np.uint8),
        np.array([[2], [1]], dtype=np.uint8),
    )
    ds = load_wiki_xmodal(path)
    assert isinstance(ds, HashingDataset)
    assert ds.train_labels.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_labels, [[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(ds.query_labels, [[0, 1, 0], [1, 0, 0]])
    assert ds.query_image.shape == (2, 4) and ds.query_image.dtype == np.float32
    assert ds.db_text.shape == (4, 3)
    np.testing.assert_array_equal(ds.db_image, ds.train_image)
    assert "queries = the 2 test pairs" in ds.protocol
    assert "database = the 4 training pairs" in ds.protocol


def test_wiki_zero_based_and_multi_hot_labels(tmp_path: Path) -> None:
    ds = load_wiki_xmodal(wiki_mat(tmp_path / "z.mat", np.array([[0], [1]]), np.array([[1]])))
    np.testing.assert_array_equal(ds.train_labels, [[1, 0], [0, 1]])
    multi = np.array([[1, 1, 0], [0, 0, 1]])
    ds = load_wiki_xmodal(wiki_mat(tmp_path / "m.mat", multi, multi[:1]))
    np.testing.assert_array_equal(ds.train_labels, multi)


def test_wiki_malformed(tmp_path: Path) -> None:
    labels = np.array([[1], [2]])
    path = wiki_mat(tmp_path / "k.mat", labels, labels, T_te=True)
    with pytest.raises(DatasetFormatError, match=r"k\.mat: missing variable\(s\) \['T_te'\]"):
        load_wiki_xmodal(path)
    rng = np.random.default_rng(0)
    scipy.io.savemat(
        tmp_path / "r.mat",
        {
            "I_tr": rng.random((3, 4)),
            "T_tr": rng.random((2, 3)),
            "L_tr": np.ones((3, 1)),
            "I_te": rng.random((1, 4)),
            "T_te": rng.random((1, 3)),
            "L_te": np.ones((1, 1)),
        },
    )
    with pytest.raises(DatasetFormatError, match="row counts of the tr variables differ"):
        load_wiki_xmodal(tmp_path / "r.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DatasetFormatError, match=r"junk\.mat"):
        load_wiki_xmodal(tmp_path / "junk.mat")
    with pytest.raises(FileNotFoundError):
        load_wiki_xmodal(tmp_path / "absent.mat")


def test_wiki_real_file(shared_data: Path) -> None:
    ds = load_wiki_xmodal(shared_data / "wiki-xmodal" / "wikiData.mat")
    assert ds.train_image.shape == (2173, 128) and ds.train_text.shape == (2173, 10)
    assert ds.query_image.shape == (693, 128) and ds.query_text.shape == (693, 10)
    assert ds.db_labels.shape == (2173, 10) and ds.query_labels.shape == (693, 10)
    assert (ds.db_labels.sum(axis=1) == 1).all() and (ds.query_labels.sum(axis=1) == 1).all()
    assert (ds.db_labels.sum(axis=0) > 0).all()


# ---------------------------------------------------------------------------------------
# Paired embeddings
# ---------------------------------------------------------------------------------------


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_paired_embeddings_from_folder_and_tuple(tmp_path: Path) -> None:
    np.save(tmp_path / "x_image_embeddings.npy", unit(4, 8))
    np.save(tmp_path / "x_text_embeddings.npy", unit(4, 8, seed=1).astype(np.float64))
    emb = load_paired_embeddings(tmp_path)
    assert emb.image.shape == (4, 8) and emb.text.dtype == np.float32
    np.testing.assert_array_equal(emb.text_to_image, np.arange(4))
    assert emb.name == tmp_path.name
    emb2 = load_paired_embeddings(
        (tmp_path / "x_image_embeddings.npy", tmp_path / "x_text_embeddings.npy"), name="t"
    )
    np.testing.assert_allclose(emb2.text, emb.text)
    assert emb2.name == "t"


def test_paired_embeddings_mapping(tmp_path: Path) -> None:
    np.save(tmp_path / "image.npy", unit(2, 4))
    np.save(tmp_path / "text.npy", unit(6, 4))
    with pytest.raises(DatasetFormatError, match=r"np\.repeat\(np\.arange\(2\), 3\)"):
        load_paired_embeddings(tmp_path)
    mapping = np.repeat(np.arange(2), 3)
    emb = load_paired_embeddings(tmp_path, text_to_image=mapping)
    np.testing.assert_array_equal(emb.text_to_image, mapping)
    np.save(tmp_path / "text_to_image.npy", mapping)
    np.testing.assert_array_equal(load_paired_embeddings(tmp_path).text_to_image, mapping)
    with pytest.raises(DatasetFormatError, match=r"values must lie in \[0, 2\)"):
        load_paired_embeddings(tmp_path, text_to_image=np.full(6, 2))
    with pytest.raises(DatasetFormatError, match="shape"):
        load_paired_embeddings(tmp_path, text_to_image=np.arange(5))


def test_paired_embeddings_validation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "image.npy", tmp_path / "text.npy"
    np.save(a, unit(3, 4))
    np.save(b, unit(3, 5))
    with pytest.raises(DatasetFormatError, match="text dimension 5 differs"):
        load_paired_embeddings((a, b))
    np.save(b, np.ones((3, 4), dtype=np.int32))
    with pytest.raises(DatasetFormatError, match="floating point"):
        load_paired_embeddings((a, b))
    bad = unit(3, 4)
    bad[1, 2] = np.nan
    np.save(b, bad)
    with pytest.raises(DatasetFormatError, match="NaN"):
        load_paired_embeddings((a, b))
    np.save(b, 2 * unit(3, 4))
    with caplog.at_level(logging.WARNING, logger="vistrieve.evals.datasets"):
        emb = load_paired_embeddings((a, b))
    assert "not unit-norm" in caplog.text
    np.testing.assert_allclose(np.linalg.norm(emb.text, axis=1), 2.0, rtol=1e-5)
    fixed = load_paired_embeddings((a, b), normalize=True)
    np.testing.assert_allclose(np.linalg.norm(fixed.text, axis=1), 1.0, rtol=1e-5)
    b.write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(DatasetFormatError, match="truncated or corrupt"):
        load_paired_embeddings((a, b))
    with pytest.raises(FileNotFoundError):
        load_paired_embeddings((a, tmp_path / "absent.npy"))
    np.save(tmp_path / "other_image.npy", unit(3, 4))
    with pytest.raises(DatasetFormatError, match="exactly one image"):
        load_paired_embeddings(tmp_path)


def test_paired_embeddings_real(shared_data: Path) -> None:
    emb = load_paired_embeddings(shared_data / "flickr30k-clip-vitl14-1k")
    assert emb.image.shape == (1000, 768) and emb.text.shape == (1000, 768)
    assert emb.image.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.image, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(emb.text, axis=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(emb.text_to_image, np.arange(1000))


# ---------------------------------------------------------------------------------------
# CIRR
# ---------------------------------------------------------------------------------------


def cirr_files(tmp_path: Path, *, test: bool = False) -> tuple[Path, Path, Path]:
    root = tmp_path / "img_raw"
    names = {f"dev-{i}-0-img0": f"./dev/dev-{i}-0-img0.png" for i in range(4)}
    for rel in names.values():
        touch(root / rel)
    entry: dict[str, Any] = {
        "pairid": 7,
        "reference": "dev-0-0-img0",
        "caption": " make it two dogs ",
        "img_set": {"id": 1, "members": ["dev-0-0-img0", "dev-1-0-img0", "dev-2-0-img0"]},
    }
    if not test:
        entry["target_hard"] = "dev-2-0-img0"
        entry["target_soft"] = {"dev-2-0-img0": 1.0}
    split = "test1" if test else "val"
    caps = write_json(tmp_path / "captions" / f"cap.rc2.{split}.json", [entry])
    splits = write_json(tmp_path / "image_splits" / f"split.rc2.{split}.json", names)
    return caps, splits, root


def test_cirr(tmp_path: Path) -> None:
    caps, splits, root = cirr_files(tmp_path)
    ds = load_cirr(caps, splits, root)
    assert isinstance(ds, ComposedDataset)
    assert ds.name == "cirr-val"
    assert ds.corpus.ids == [f"dev-{i}-0-img0" for i in range(4)]
    assert Path(ds.corpus["dev-1-0-img0"].image) == root / "dev" / "dev-1-0-img0.png"
    (ex,) = ds.examples
    assert ex.id == "7" and ex.reference_id == "dev-0-0-img0"
    assert ex.modification == "make it two dogs"
    assert ex.target_ids == ("dev-2-0-img0",)
    assert ex.subset_ids == ("dev-0-0-img0", "dev-1-0-img0", "dev-2-0-img0")
    assert ex.metadata["img_set_id"] == 1
    query = ex.query(ds.corpus)
    assert query.kind == "composed" and query.image == ds.corpus["dev-0-0-img0"].image


def test_cirr_errors(tmp_path: Path) -> None:
    caps, splits, root = cirr_files(tmp_path / "t", test=True)
    with pytest.raises(DatasetFormatError, match="test1 split"):
        load_cirr(caps, splits, root)
    caps, splits, root = cirr_files(tmp_path / "v")
    entries = json.loads(caps.read_text())
    entries[0]["target_hard"] = "dev-9-0-img0"
    write_json(caps, entries)
    with pytest.raises(DatasetFormatError, match=r"pairid 7\) names image 'dev-9-0-img0'"):
        load_cirr(caps, splits, root)
    entries[0].pop("caption")
    entries[0]["target_hard"] = "dev-2-0-img0"
    write_json(caps, entries)
    with pytest.raises(DatasetFormatError, match=r"cap\.rc2\.val\.json: entry 0 .* no 'caption'"):
        load_cirr(caps, splits, root)
    write_json(splits, ["not", "a", "mapping"])
    with pytest.raises(DatasetFormatError, match="maps image names to relative paths"):
        load_cirr(caps, splits, root)


# ---------------------------------------------------------------------------------------
# CIRCO
# ---------------------------------------------------------------------------------------


CIRCO_ENTRY = {
    "id": 0,
    "reference_img_id": 85932,
    "target_img_id": 9761,
    "relative_caption": "is held by a little girl on a chair",
    "shared_concept": "a teddy bear",
    "gt_img_ids": [9761, 489535],
}


def test_circo_without_image_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "unlabeled2017"
    for cid in (85932, 9761, 489535):
        touch(root / f"{cid:012d}.jpg")
    ann = write_json(tmp_path / "annotations" / "val.json", [CIRCO_ENTRY])
    with caplog.at_level(logging.WARNING, logger="vistrieve.evals.datasets"):
        ds = load_circo(ann, root)
    assert "not comparable" in caplog.text
    assert ds.name == "circo-val"
    assert ds.corpus.ids == ["85932", "9761", "489535"]
    assert Path(ds.corpus["9761"].image) == root / "000000009761.jpg"
    (ex,) = ds.examples
    assert ex.reference_id == "85932" and ex.target_ids == ("9761", "489535")
    assert ex.modification == "is held by a little girl on a chair"
    assert ex.metadata["shared_concept"] == "a teddy bear"


def test_circo_with_image_info_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "unlabeled2017"
    ids = [85932, 9761, 489535, 5]
    for cid in ids:
        touch(root / f"{cid:012d}.jpg")
    info = write_json(
        tmp_path / "info.json", {"images": [{"id": c, "file_name": f"{c:012d}.jpg"} for c in ids]}
    )
    ann = write_json(tmp_path / "val.json", [CIRCO_ENTRY])
    ds = load_circo(ann, root, image_info_json=info)
    assert ds.corpus.ids == [str(c) for c in ids]
    small = write_json(tmp_path / "small.json", {"images": [{"id": 5, "file_name": "x.jpg"}]})
    with pytest.raises(DatasetFormatError, match=r"3 image id\(s\) .* not in small\.json"):
        load_circo(ann, root, image_info_json=small, check_images=False)
    test = write_json(
        tmp_path / "test.json",
        [{k: v for k, v in CIRCO_ENTRY.items() if k not in ("gt_img_ids", "target_img_id")}],
    )
    with pytest.raises(DatasetFormatError, match="CIRCO test split"):
        load_circo(test, root)
    bad = write_json(tmp_path / "bad.json", [{**CIRCO_ENTRY, "gt_img_ids": []}])
    with pytest.raises(DatasetFormatError, match=r"entry 0 \(id 0\): gt_img_ids must be"):
        load_circo(bad, root)


# ---------------------------------------------------------------------------------------
# FashionIQ
# ---------------------------------------------------------------------------------------


def test_join_fashioniq_captions() -> None:
    assert join_fashioniq_captions(["is shiny and silver.", "has no straps"]) == (
        "Is shiny and silver and has no straps"
    )
    assert join_fashioniq_captions(["Is Red?"]) == "Is red"
    with pytest.raises(ValueError, match="no non-empty caption"):
        join_fashioniq_captions([" . ", ""])


def test_fashioniq(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in ("B1", "B2", "B3"):
        touch(root / f"{name}.png")
    caps = write_json(
        tmp_path / "captions" / "cap.dress.val.json",
        [{"candidate": "B1", "target": "B2", "captions": ["is longer", "is blue."]}],
    )
    split = write_json(tmp_path / "image_splits" / "split.dress.val.json", ["B1", "B2", "B3", "B1"])
    ds = load_fashioniq(caps, split, root, "dress")
    assert ds.name == "fashioniq-dress-val"
    assert ds.corpus.ids == ["B1", "B2", "B3"]
    assert Path(ds.corpus["B3"].image) == root / "B3.png"
    (ex,) = ds.examples
    assert ex.id == "dress-0" and ex.reference_id == "B1" and ex.target_ids == ("B2",)
    assert ex.modification == "Is longer and is blue"
    assert ex.metadata["captions"] == ["is longer", "is blue."]
    with pytest.raises(FileNotFoundError, match="3 image file"):
        load_fashioniq(caps, split, root, "dress", extension="jpg")


def test_fashioniq_errors(tmp_path: Path) -> None:
    split = write_json(tmp_path / "split.json", ["B1", "B2"])
    caps = write_json(tmp_path / "cap.json", [{"candidate": "B1", "captions": ["x", "y"]}])
    with pytest.raises(DatasetFormatError, match="entry 0 has no 'target'"):
        load_fashioniq(caps, split, tmp_path, "shirt", check_images=False)
    caps = write_json(
        tmp_path / "cap.json", [{"candidate": "B1", "target": "B9", "captions": ["x", "y"]}]
    )
    with pytest.raises(DatasetFormatError, match="names image 'B9'"):
        load_fashioniq(caps, split, tmp_path, "shirt", check_images=False)
    with pytest.raises(ValueError, match="category must be one of"):
        load_fashioniq(caps, split, tmp_path, "shoes")


# ---------------------------------------------------------------------------------------
# ChatIR / VisDial
# ---------------------------------------------------------------------------------------

CHATIR: list[dict[str, Any]] = [
    {
        "img": "unlabeled2017/000000000001.jpg",
        "dialog": [
            "a bedroom with posters",
            "is the photo in color? yes",
            "is it daytime? i don't see windows, maybe?",
            "Is the desk well no",
        ],
    },
    {"img": "unlabeled2017/000000000002.jpg", "dialog": ["a woman with a guitar"]},
]


def test_chatir_dialogs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for d in CHATIR:
        touch(tmp_path / "coco" / d["img"])
    path = write_json(tmp_path / "dialogs.json", CHATIR)
    with caplog.at_level(logging.WARNING, logger="vistrieve.evals.datasets"):
        ds = load_chatir_dialogs(path, tmp_path / "coco")
    assert "not comparable" in caplog.text
    assert isinstance(ds, DialogDataset)
    assert ds.corpus.ids == [d["img"] for d in CHATIR]
    first = ds.examples[0]
    assert first.target_id == "unlabeled2017/000000000001.jpg"
    assert first.turns[0].question == "is the photo in color?" and first.turns[0].answer == "yes"
    assert first.turns[1].answer == "i don't see windows, maybe?"
    assert first.turns[2].question == "Is the desk well no" and first.turns[2].answer == ""
    for rounds in range(4):
        expected = ", ".join(CHATIR[0]["dialog"][: rounds + 1])
        assert first.query(rounds).as_text() == expected
    assert ds.examples[1].turns == ()


def test_chatir_search_space(tmp_path: Path) -> None:
    space = [d["img"] for d in CHATIR] + ["unlabeled2017/000000000003.jpg"]
    path = write_json(tmp_path / "dialogs.json", CHATIR)
    sp = write_json(tmp_path / "space.json", space)
    ds = load_chatir_dialogs(path, tmp_path, search_space=sp, check_images=False)
    assert ds.corpus.ids == space
    write_json(sp, space[1:])
    with pytest.raises(DatasetFormatError, match="not in the search space"):
        load_chatir_dialogs(path, tmp_path, search_space=sp, check_images=False)


def visdial(tmp_path: Path) -> Path:
    return write_json(
        tmp_path / "visdial_1.0_val.json",
        {
            "version": "1.0",
            "split": "val2018",
            "data": {
                "questions": ["is the photo in color", "is it daytime?"],
                "answers": ["yes", "no"],
                "dialogs": [
                    {
                        "image_id": 185565,
                        "caption": "a bedroom with posters",
                        "dialog": [{"question": 0, "answer": 0}, {"question": 1}],
                    }
                ],
            },
        },
    )


def test_visdial_format(tmp_path: Path) -> None:
    path = visdial(tmp_path)
    ds = load_chatir_dialogs(path, tmp_path, check_images=False)
    (ex,) = ds.examples
    assert ex.id == "185565"
    assert ex.target_id == "VisualDialog_val2018_000000185565.jpg"
    assert ex.query(1).as_text() == "a bedroom with posters, is the photo in color? yes"
    assert ex.turns[1].question == "is it daytime?" and ex.turns[1].answer == ""
    ds = load_chatir_dialogs(
        path, tmp_path, image_pattern=lambda i: f"val2014/{i}.jpg", check_images=False
    )
    assert ds.corpus.ids == ["val2014/185565.jpg"]


def test_dialog_errors(tmp_path: Path) -> None:
    path = visdial(tmp_path)
    data = json.loads(path.read_text())
    data["data"]["dialogs"][0]["dialog"][0]["answer"] = 5
    write_json(path, data)
    with pytest.raises(DatasetFormatError, match=r"dialogs\[0\]\.dialog\[0\]: answer index 5"):
        load_chatir_dialogs(path, tmp_path, check_images=False)
    other = write_json(tmp_path / "other.json", {"dialogs": []})
    with pytest.raises(DatasetFormatError, match="expected a ChatIR dialog list"):
        load_chatir_dialogs(other, tmp_path)
    empty = write_json(tmp_path / "empty.json", [{"img": "a.jpg", "dialog": []}])
    with pytest.raises(DatasetFormatError, match=r"dialog 0: 'dialog' must be a non-empty list"):
        load_chatir_dialogs(empty, tmp_path)
    no_img = write_json(tmp_path / "noimg.json", [{"dialog": ["x"]}])
    with pytest.raises(DatasetFormatError, match=r"dialog 0 has no 'image' field"):
        load_chatir_dialogs(no_img, tmp_path)
    with pytest.raises(FileNotFoundError, match="check_images=False"):
        load_chatir_dialogs(write_json(tmp_path / "c.json", CHATIR), tmp_path)


# ----------------------------------------------------------------------------- COCO, CSV
def _coco(tmp_path: Path) -> Path:
    for name in ("000000000001.jpg", "000000000002.jpg", "000000000003.jpg"):
        touch(tmp_path / "val2017" / name)
    return write_json(
        tmp_path / "captions_val2017.json",
        {
            "info": {},
            "images": [
                {"id": 2, "file_name": "000000000002.jpg", "width": 1, "height": 1},
                {"id": 1, "file_name": "000000000001.jpg"},
                {"id": 3, "file_name": "000000000003.jpg"},  # no caption: left out
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "caption": " A dog on a sofa. "},
                {"id": 11, "image_id": 2, "caption": "Two bikes."},
                {"id": 12, "image_id": 1, "caption": "A brown dog."},
                {"id": 13, "image_id": 1, "caption": "   "},  # blank: dropped
                {"id": 14, "image_id": 1, "caption": "A dog resting."},
            ],
        },
    )


def test_coco_captions_keep_the_files_image_order_and_strip_captions(tmp_path: Path) -> None:
    from vistrieve.evals.datasets import load_coco_captions

    corpus = load_coco_captions(_coco(tmp_path), tmp_path / "val2017")
    assert list(corpus) == ["000000000002.jpg", "000000000001.jpg"]
    dog = corpus["000000000001.jpg"]
    assert dog.captions == ("A dog on a sofa.", "A brown dog.", "A dog resting.")
    assert dog.metadata["coco_id"] == 1
    assert Path(str(dog.image)) == tmp_path / "val2017" / "000000000001.jpg"
    two = load_coco_captions(_coco(tmp_path), tmp_path / "val2017", max_captions=2)
    assert two["000000000001.jpg"].captions == ("A dog on a sofa.", "A brown dog.")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"dataset": "coco", "images": []}, "Karpathy split file"),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 7, "caption": "x"}],
            },
            "image_id 7 is not in 'images'",
        ),
        ({"images": [{"id": 1}], "annotations": []}, "file_name"),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []},
            "no image has a caption",
        ),
    ],
)
def test_coco_captions_errors_name_the_file_and_the_problem(
    tmp_path: Path, content: Any, message: str
) -> None:
    from vistrieve.evals.datasets import load_coco_captions

    path = write_json(tmp_path / "bad.json", content)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_coco_captions(path, tmp_path, check_images=False)
    assert "bad.json" in str(info.value)


def test_coco_captions_missing_image_fails_unless_unchecked(tmp_path: Path) -> None:
    from vistrieve.evals.datasets import load_coco_captions

    path = _coco(tmp_path)
    (tmp_path / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000002.jpg"):
        load_coco_captions(path, tmp_path / "val2017")
    assert len(load_coco_captions(path, tmp_path / "val2017", check_images=False)) == 2


def test_captions_csv_groups_rows_by_image_and_reads_quoted_commas(tmp_path: Path) -> None:
    from vistrieve.evals.datasets import load_captions_csv

    touch(tmp_path / "imgs" / "a.jpg")
    touch(tmp_path / "imgs" / "sub" / "b.png")
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text(
        '\ufeffFile_Name,Text\na.jpg,"a dog, running"\nsub/b.png,a cat\n\na.jpg,"say ""hi"""\n',
        encoding="utf-8",
    )
    corpus = load_captions_csv(csv_path, tmp_path / "imgs")
    assert list(corpus) == ["a.jpg", "sub/b.png"]
    assert corpus["a.jpg"].captions == ("a dog, running", 'say "hi"')
    assert Path(str(corpus["sub/b.png"].image)) == tmp_path / "imgs" / "sub" / "b.png"
    # without image_dir, paths resolve against the CSV's folder
    (tmp_path / "local.csv").write_text("image,caption\nimgs/a.jpg,x\n", encoding="utf-8")
    assert list(load_captions_csv(tmp_path / "local.csv")) == ["imgs/a.jpg"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("picture,words\na.jpg,x\n", "expected a header with an image column"),
        ("image,caption\na.jpg,\n", "line 2: empty caption"),
        ("image,caption\n,a caption\n", "line 2: empty image"),
        ("image,caption\n", "no captions after the header"),
    ],
)
def test_captions_csv_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    from vistrieve.evals.datasets import load_captions_csv

    path = tmp_path / "caps.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=message):
        load_captions_csv(path, check_images=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_captions_csv(tmp_path / "nope.csv")
