"""The sample photos (scikit-image's wheel) and the demo's real-photo section."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from vistrieve.data.samples import SAMPLE_PHOTOS, sample_photos, sample_photos_dir

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


def _no_skimage(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a)
    )


def test_missing_scikit_image_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_skimage(monkeypatch)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scikit-image"):
        sample_photos(tmp_path)


def test_demo_section_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from vistrieve.demo import photos_section

    _no_skimage(monkeypatch)
    lines: list[str] = []
    assert photos_section(lines.append) == {}
    assert any("real photos skipped" in line and "scikit-image" in line for line in lines)


@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image (its sample photos) not installed")
def test_sample_photos_are_copied_with_captions_and_licences(tmp_path: Path) -> None:
    assert sample_photos_dir().name == "data"
    corpus = sample_photos(tmp_path / "photos")
    assert list(corpus) == [Path(p.file).stem for p in SAMPLE_PHOTOS]
    for item, photo in zip(corpus.values(), SAMPLE_PHOTOS, strict=True):
        path = Path(str(item.image))
        assert path.parent == tmp_path / "photos" and path.name == photo.file
        assert item.captions == (photo.caption,) and item.metadata["licence"] == photo.licence
        with Image.open(path) as im:
            assert min(im.size) >= 256  # real photos, not thumbnails


def _bridge_available() -> bool:
    from vistrieve.encoders import DEFAULT_PHOTO_ENCODER, create_encoder

    try:
        create_encoder(DEFAULT_PHOTO_ENCODER, progress=False)
    except (FileNotFoundError, ImportError):
        return False
    return True


@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image (its sample photos) not installed")
def test_demo_finds_real_photos_with_the_real_photo_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real EfficientNet-Lite1 + MiniLM bridge puts the intended photo first."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not _bridge_available():
        pytest.skip("the real-photo encoder's weights are not installed (./run.sh installs them)")
    from vistrieve.demo import PHOTO_TEXT_QUERIES, photos_section

    lines: list[str] = []
    result = photos_section(lines.append)
    assert result["text_top1"] >= 0.6, "\n".join(lines)
    text = "\n".join(lines)
    assert f"for {round(result['text_top1'] * len(PHOTO_TEXT_QUERIES))} of" in text
    # The mirrored, cropped cat photo finds the cat first.
    probe = text.split("query image: chelsea")[1].splitlines()
    assert probe[1].strip().startswith("*  1.") and "chelsea" in probe[1]
