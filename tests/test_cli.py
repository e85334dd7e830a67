from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistrieve.cli import main


def _folder(tmp_path: Path, n: int = 6) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    return d


def test_index_and_search_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = _folder(tmp_path)
    (photos / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "idx"
    assert (
        main(["index", str(photos), str(out), "--encoder", "clip-tiny-test", "--num-workers", "0"])
        == 0
    )
    text = capsys.readouterr().out
    assert "indexed 6 of 7 images" in text and "broken.jpg" in text
    assert (out / "retriever.json").is_file()

    assert main(["search", str(out), "a photo", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all(h["id"].startswith("p") for h in hits)
    assert [h["rank"] for h in hits] == [0, 1, 2]

    assert main(["search", str(out), "--image", str(photos / "p2.png"), "-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "image query" in printed and "p2.png" in printed.splitlines()[1]


def test_index_manifest_missing_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = _folder(tmp_path, 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"image,caption\n{photos / 'p0.png'},a first photo\n{photos / 'nope.png'},a missing photo\n"
    )
    args = ["index", str(manifest), str(tmp_path / "idx"), "--encoder", "clip-tiny-test"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nope.png" in err and "line 3" in err
    assert main([*args, "--skip-missing"]) == 0
    assert "skipped manifest line 3" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(tmp_path), "x"]) == 2
    assert "not a vistrieve retriever" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", str(tmp_path / "missing"), str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main(["nonsense"])
