"""Tests for vistrieve.data.manifest: folder corpora, CSV/JSONL manifests, round trips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vistrieve.data.manifest import (
    ManifestError,
    ManifestResult,
    corpus_from_folder,
    corpus_from_manifest,
    write_manifest,
)
from vistrieve.types import Corpus, Item


def touch(path: Path) -> Path:
    """An empty stand-in image file (loaders never decode images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------------------------------
# corpus_from_folder
# ---------------------------------------------------------------------------------------


def test_folder_recursive_ids_are_sorted_relative_posix_paths(tmp_path: Path) -> None:
    touch(tmp_path / "b.png")
    touch(tmp_path / "a" / "x.JPG")
    touch(tmp_path / "a" / "deeper" / "y.webp")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / ".cache" / "z.jpg")
    corpus = corpus_from_folder(tmp_path)
    assert corpus.ids == ["a/deeper/y.webp", "a/x.JPG", "b.png"]
    item = corpus["a/x.JPG"]
    assert Path(item.image) == (tmp_path / "a" / "x.JPG").resolve()
    assert item.captions == ()


def test_folder_non_recursive_and_extension_filter(tmp_path: Path) -> None:
    touch(tmp_path / "top.png")
    touch(tmp_path / "top.gif")
    touch(tmp_path / "sub" / "inner.png")
    assert corpus_from_folder(tmp_path, recursive=False).ids == ["top.gif", "top.png"]
    assert corpus_from_folder(tmp_path, extensions=("png",)).ids == ["sub/inner.png", "top.png"]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus_from_folder(tmp_path / "nope")
    f = touch(tmp_path / "file.jpg")
    with pytest.raises(NotADirectoryError, match="corpus_from_manifest"):
        corpus_from_folder(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        corpus_from_folder(empty)
    touch(empty / "sub" / "deep.jpg")
    with pytest.raises(ValueError, match="recursive=True"):
        corpus_from_folder(empty, recursive=False)


# ---------------------------------------------------------------------------------------
# CSV manifests
# ---------------------------------------------------------------------------------------


def test_csv_merges_rows_of_one_image_and_parses_fields(tmp_path: Path) -> None:
    touch(tmp_path / "img" / "red.png")
    touch(tmp_path / "img" / "blue.png")
    (tmp_path / "m.csv").write_text(
        "image,caption,labels,source\n"
        "img/red.png,a red circle,red|circle,web\n"
        'img/red.png,"a circle, red",red;round,\n'
        "img/blue.png,a blue square,blue,scan\n",
        encoding="utf-8",
    )
    result = corpus_from_manifest(tmp_path / "m.csv")
    assert isinstance(result, ManifestResult)
    assert result.skipped == ()
    corpus = result.corpus
    assert corpus.ids == ["img/red.png", "img/blue.png"]
    red = corpus["img/red.png"]
    assert red.captions == ("a red circle", "a circle, red")
    assert red.labels == ("red", "circle", "round")
    assert red.metadata == {"source": "web"}
    assert Path(red.image) == tmp_path / "img" / "red.png"
    assert corpus["img/blue.png"].labels == ("blue",)


def test_csv_id_captions_column_alias_and_image_root(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    touch(root / "1.jpg")
    touch(root / "2.jpg")
    (tmp_path / "m.csv").write_text(
        'ID,FilePath,captions\none,1.jpg,"[""first"", ""second""]"\ntwo,2.jpg,alpha | beta\n',
        encoding="utf-8",
    )
    corpus = corpus_from_manifest(tmp_path / "m.csv", image_root=root).corpus
    assert corpus.ids == ["one", "two"]
    assert corpus["one"].captions == ("first", "second")
    assert corpus["two"].captions == ("alpha", "beta")
    assert Path(corpus["two"].image) == root / "2.jpg"


def test_tsv_and_byte_order_mark(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    (tmp_path / "m.tsv").write_text("\ufeffimage\tcaption\na.jpg\ta, b and c\n", encoding="utf-8")
    corpus = corpus_from_manifest(tmp_path / "m.tsv").corpus
    assert corpus["a.jpg"].captions == ("a, b and c",)


def test_csv_unquoted_commas_in_final_caption_column(tmp_path: Path) -> None:
    touch(tmp_path / "d.jpg")
    (tmp_path / "captions.txt").write_text(
        "image,caption\nd.jpg,A dog , wet , on the shore .\n", encoding="utf-8"
    )
    corpus = corpus_from_manifest(tmp_path / "captions.txt").corpus
    assert corpus["d.jpg"].captions == ("A dog , wet , on the shore .",)


def test_csv_extra_fields_without_caption_last_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "d.jpg")
    (tmp_path / "m.csv").write_text("caption,image\nhello,d.jpg,extra\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.csv, line 2: the row has 3 fields") as ei:
        corpus_from_manifest(tmp_path / "m.csv")
    assert ei.value.line == 2


def test_csv_header_errors_name_file_and_line(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("picture,caption\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.csv, line 1: the header has no image column"):
        corpus_from_manifest(m)
    m.write_text("a.jpg,a caption\nb.jpg,another\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="add a header row"):
        corpus_from_manifest(m)
    m.write_text("", encoding="utf-8")
    with pytest.raises(ManifestError, match="empty"):
        corpus_from_manifest(m)
    m.write_text("image,caption\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="no records"):
        corpus_from_manifest(m)


def test_csv_empty_image_field_and_bad_captions_json(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    m = tmp_path / "m.csv"
    m.write_text("image,caption\na.jpg,ok\n,no image\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 3: the 'image' field is empty"):
        corpus_from_manifest(m)
    m.write_text('image,captions\na.jpg,"[not json"\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 2: the captions field .* not a JSON list"):
        corpus_from_manifest(m)


def test_missing_image_error_names_file_line_path_and_skip_option(tmp_path: Path) -> None:
    touch(tmp_path / "here.jpg")
    m = tmp_path / "m.csv"
    m.write_text("image,caption\nhere.jpg,ok\ngone.jpg,lost\n", encoding="utf-8")
    with pytest.raises(ManifestError) as ei:
        corpus_from_manifest(m)
    msg = str(ei.value)
    assert str(m) in msg and "line 3" in msg
    assert str(tmp_path / "gone.jpg") in msg
    assert "on_missing='skip'" in msg


def test_skip_missing_records_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path / "here.jpg")
    m = tmp_path / "m.jsonl"
    m.write_text(
        '{"image": "here.jpg", "caption": "ok"}\n{"image": "gone.jpg", "caption": "lost"}\n',
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="vistrieve.data.manifest"):
        result = corpus_from_manifest(m, on_missing="skip")
    assert result.corpus.ids == ["here.jpg"]
    assert len(result.skipped) == 1
    skipped = result.skipped[0]
    assert (skipped.line, skipped.image) == (2, "gone.jpg")
    assert skipped.resolved == str(tmp_path / "gone.jpg")
    assert "skipped 1 record" in caplog.text


def test_all_records_missing_is_an_error(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("image\ngone.jpg\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="every record points to a missing image"):
        corpus_from_manifest(m, on_missing="skip")


def test_duplicate_id_names_id_and_both_lines(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    m = tmp_path / "m.csv"
    m.write_text("id,image\nx,a.jpg\ny,b.jpg\nx,b.jpg\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"duplicate id 'x': line 2 .* line 4") as ei:
        corpus_from_manifest(m)
    assert ei.value.line == 4


def test_on_missing_and_extension_validation(tmp_path: Path) -> None:
    m = tmp_path / "m.parquet"
    m.write_text("x", encoding="utf-8")
    with pytest.raises(ManifestError, match="unknown manifest extension"):
        corpus_from_manifest(m)
    with pytest.raises(ValueError, match="on_missing"):
        corpus_from_manifest(m, on_missing="ignore")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        corpus_from_manifest(tmp_path / "none.csv")


# ---------------------------------------------------------------------------------------
# JSONL / JSON manifests
# ---------------------------------------------------------------------------------------


def test_jsonl_fields_and_metadata(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    m = tmp_path / "m.jsonl"
    lines = [
        {"image": "a.jpg", "id": 7, "captions": ["one", "two"], "labels": [1, 2], "year": 2020},
        {
            "image": "b.jpg",
            "caption": "three",
            "captions": "four",
            "labels": "cat",
            "metadata": {"k": "v"},
        },
    ]
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    corpus = corpus_from_manifest(m).corpus
    assert corpus.ids == ["7", "b.jpg"]
    assert corpus["7"].captions == ("one", "two")
    assert corpus["7"].labels == (1, 2)
    assert corpus["7"].metadata == {"year": 2020}
    assert corpus["b.jpg"].captions == ("three", "four")
    assert corpus["b.jpg"].labels == ("cat",)
    assert corpus["b.jpg"].metadata == {"k": "v"}


def test_jsonl_bad_json_and_missing_image_name_the_line(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    m = tmp_path / "m.jsonl"
    m.write_text('{"image": "a.jpg"}\n\n{"image": "a.jpg",\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 3: invalid JSON"):
        corpus_from_manifest(m)
    m.write_text('{"image": "a.jpg"}\n{"caption": "no image"}\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 2: the record has no 'image' path"):
        corpus_from_manifest(m)
    m.write_text('["a.jpg"]\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 1: expected a JSON object"):
        corpus_from_manifest(m)
    m.write_text('{"image": "a.jpg", "captions": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(ManifestError, match="list of strings"):
        corpus_from_manifest(m)


def test_json_list_reports_entries(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    m = tmp_path / "m.json"
    m.write_text(json.dumps([{"image": "a.jpg", "caption": "x"}]), encoding="utf-8")
    assert corpus_from_manifest(m).corpus["a.jpg"].captions == ("x",)
    m.write_text(json.dumps([{"image": "a.jpg"}, {"id": "q"}]), encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.json, entry 2: the record has no 'image'"):
        corpus_from_manifest(m)
    m.write_text(json.dumps({"image": "a.jpg"}), encoding="utf-8")
    with pytest.raises(ManifestError, match="must be a list of objects"):
        corpus_from_manifest(m)


# ---------------------------------------------------------------------------------------
# write_manifest
# ---------------------------------------------------------------------------------------


def test_write_manifest_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    inside = touch(folder / "imgs" / "a.jpg")
    outside = touch(tmp_path / "elsewhere" / "b.jpg")
    corpus = Corpus(
        [
            Item(
                id="a",
                image=str(inside),
                captions=("x", "y"),
                labels=("cat", 3),
                metadata={"w": 1, "tags": ["t"]},
            ),
            Item(id="b", image=str(outside), captions=("z",)),
        ]
    )
    dest = folder / "manifest.jsonl"
    write_manifest(corpus, dest)
    records = [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]
    assert records[0]["image"] == "imgs/a.jpg"
    assert records[1]["image"] == str(outside)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    back = corpus_from_manifest(dest).corpus
    assert back == corpus


def test_write_manifest_rejects_unwritable_items(tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(ValueError, match="no image path"):
        write_manifest(Corpus([Item(id="m", image=Image.new("RGB", (2, 2)))]), tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        write_manifest(
            Corpus([Item(id="s", image=str(tmp_path / "s.jpg"), metadata={"x": {1, 2}})]),
            tmp_path / "m.jsonl",
        )
    with pytest.raises(ValueError, match=r"\.jsonl"):
        write_manifest(Corpus([Item(id="s", image="s.jpg")]), tmp_path / "m.csv")
    assert not (tmp_path / "m.jsonl").exists()


# ---------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------


def test_flickr8k_captions_csv_loads_as_manifest(shared_data: Path) -> None:
    root = shared_data / "flickr8k-1k"
    corpus = corpus_from_manifest(root / "captions.txt", image_root=root / "images").corpus
    assert len(corpus) == 1000
    assert all(len(item.captions) == 5 for item in corpus.values())
    quoted = corpus["1012212859_01547e3f17.jpg"].captions
    assert "A dog shakes its head near the shore , a red ball next to it ." in quoted
