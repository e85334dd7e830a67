"""Fault injection against the library and the command line: each case once lost data, took
a build down or answered silently with wrong results (the service's cases are in
test_service_faults.py)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import vistrieve
from vistrieve.cli import main
from vistrieve.data.manifest import ManifestError, corpus_from_manifest, scan_folder
from vistrieve.errors import (
    ImageLoadError,
    ImageTooLargeError,
    IntegrityError,
    LLMError,
    ModelOutputError,
    OverwriteRefusedError,
    VistrieveError,
    quote,
)
from vistrieve.indexes import BinaryHashIndex, ExactIndex, FaissIndex, load_index
from vistrieve.types import DialogTurn, Hit, Item, Query
from vistrieve.utils import io as vio
from vistrieve.utils.images import check_image_pixels, load_image

SRC = str(Path(vistrieve.__file__).parents[1])


# ----------------------------------------------------------------------------- helpers
def _bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _photos(root: Path, n: int = 4, size: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.png")
    return root


def _index_cli(src: Path, out: Path, *extra: str) -> int:
    args = ["index", str(src), str(out), "--encoder", "clip-tiny-test", "--num-workers", "0"]
    return main([*args, *extra])


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(n: int, dim: int = 8) -> ExactIndex:
    idx = ExactIndex(dim, model="m")
    idx.add(_vectors(n, dim), [f"v{i}" for i in range(n)])
    return idx


def _rewrite_manifest(directory: Path, name: str) -> None:
    """Record ``name``'s current size and checksum in the manifest, as a tool that edits a
    file and its manifest consistently (or a bug that writes wrong data) would."""
    mf = directory / "manifest.json"
    manifest = json.loads(mf.read_text())
    for rec in manifest["files"]:
        if rec["name"] == name:
            rec.update(vio.file_record(directory / name))
    mf.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def encoder() -> Any:
    from vistrieve.encoders import create_encoder

    return create_encoder("clip-tiny-test", num_workers=0)


# ----------------------------------------------------------------------------- error types
def test_error_types_keep_the_builtin_bases() -> None:
    assert issubclass(IntegrityError, ValueError) and issubclass(IntegrityError, VistrieveError)
    assert issubclass(OverwriteRefusedError, FileExistsError)
    assert issubclass(ImageTooLargeError, ImageLoadError) and issubclass(ImageLoadError, ValueError)
    assert issubclass(LLMError, RuntimeError)
    from vistrieve.llm import EndpointError
    from vistrieve.utils.images import ImageLoadError as FromUtils

    assert issubclass(EndpointError, LLMError) and FromUtils is ImageLoadError
    err = ModelOutputError("unusable", "x" * 10_000)
    assert err.text == "x" * 10_000 and len(str(err)) < 300 and "10000 characters" in str(err)
    assert quote("short") == "'short'"


# ----------------------------------------------------------------------------- row: index OUT
def test_index_refuses_its_source_and_foreign_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos")
    before = sorted(p.name for p in photos.iterdir())
    # OUT is SRC: the photos would have been deleted.
    assert _index_cli(photos, photos) == 2
    assert "is the source" in capsys.readouterr().err
    assert sorted(p.name for p in photos.iterdir()) == before
    # OUT contains SRC.
    assert _index_cli(photos, tmp_path) == 2
    assert "contains the source" in capsys.readouterr().err
    # OUT is a folder of unrelated files.
    other = tmp_path / "documents"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    assert _index_cli(photos, other) == 2
    assert "not a vistrieve folder" in capsys.readouterr().err
    assert (other / "thesis.tex").read_text() == "precious"
    assert not any(p.name.startswith(".") for p in other.iterdir())
    # --overwrite replaces an index, never anything else.
    assert _index_cli(photos, other, "--overwrite") == 2
    assert "not a vistrieve folder" in capsys.readouterr().err
    assert (other / "thesis.tex").read_text() == "precious"


def test_index_overwrites_an_index_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    assert _index_cli(photos, out) == 0
    assert _index_cli(photos, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    (photos / "p0.png").unlink()
    assert _index_cli(photos, out, "--overwrite") == 0
    assert "indexed 3 of 3" in capsys.readouterr().out
    # A manifest whose images lie inside the index folder that would be replaced.
    (photos / "p1.png").rename(out / "kept.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image\n{out / 'kept.png'}\n")
    assert _index_cli(manifest, out, "--overwrite") == 2
    assert "lies inside the output folder" in capsys.readouterr().err
    assert (out / "kept.png").is_file()


def test_library_saves_never_replace_foreign_folders(tmp_path: Path, encoder: Any) -> None:
    from vistrieve.retrievers import DenseRetriever

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OverwriteRefusedError, match="notes.txt"):
        _exact(3).save(foreign)
    corpus = [Item("a", image=Image.new("RGB", (8, 8), "red"))]
    with pytest.raises(OverwriteRefusedError, match="not a vistrieve folder"):
        DenseRetriever.build(encoder, corpus, directory=foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OverwriteRefusedError, match="is a file"):
        _exact(3).save(tmp_path / "file")


# ----------------------------------------------------------------------------- row: crash mid-swap
_CRASH = """
import os, shutil, sys
import numpy as np
from vistrieve.indexes import ExactIndex
from vistrieve.utils import io

mode = sys.argv[2]
if mode == "journal":
    io._exchange = lambda a, b: False
    real, calls = io._rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # after the old index moved aside, before the new one moved in
            os._exit(17)
        real(src, dst)

    io._rename = rename
else:  # the exchange happened; the process dies before removing the old copy
    shutil.rmtree = lambda *a, **k: os._exit(17)
idx = ExactIndex(4, model="m")
idx.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
idx.save(sys.argv[1])
"""


def _crash_during_save(path: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(path), mode], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 17, proc.stderr


def test_a_crash_between_the_renames_is_finished_on_load(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _exact(2, dim=4).save(path)
    _crash_during_save(path, "journal")
    # The crash left the path empty: without the journal both copies would stay hidden.
    assert not path.exists()
    journal = tmp_path / ".idx.swap.json"
    assert journal.is_file()
    loaded = load_index(path)
    assert loaded.ids == ["a", "b", "c", "d"]  # the new index, complete before the swap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no leftovers


def test_a_crash_between_the_renames_rolls_back_without_the_new_copy(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    _exact(2, dim=4).save(path)
    _crash_during_save(path, "journal")
    record = json.loads((tmp_path / ".idx.swap.json").read_text())
    import shutil

    shutil.rmtree(tmp_path / record["new"])  # the new copy is gone too
    assert load_index(path).ids == ["v0", "v1"]  # the old index is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_a_crash_after_an_atomic_exchange_leaves_the_new_index(tmp_path: Path) -> None:
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.mkdir()
    if not vio._exchange(probe_a, probe_b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    probe_a.rmdir()
    probe_b.rmdir()
    path = tmp_path / "idx"
    _exact(2, dim=4).save(path)
    _crash_during_save(path, "exchange")
    assert path.is_dir()  # the path held an index at every instant
    assert load_index(path).ids == ["a", "b", "c", "d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_a_failed_second_rename_restores_the_old_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "idx"
    _exact(2, dim=4).save(path)
    monkeypatch.setattr(vio, "_exchange", lambda a, b: False)
    real, calls = vio._rename, []

    def rename(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(vio, "_rename", rename)
    with pytest.raises(OSError, match="disk full"):
        _exact(5, dim=4).save(path)
    assert load_index(path).ids == ["v0", "v1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


# ------------------------------------------------------------------ row: flipped byte, NaN
def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    _exact(10).save(tmp_path / "i")
    f = tmp_path / "i" / "vectors.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01  # same size: the old size check passed this
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"vectors\.npy does not match the SHA-256") as err:
        load_index(tmp_path / "i")
    assert "rebuild" in str(err.value) and err.value.path == f


def test_nan_vectors_are_refused_at_add_and_at_load(tmp_path: Path) -> None:
    bad = _vectors(3)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        ExactIndex(8).add(bad, ["a", "b", "c"])
    _exact(10).save(tmp_path / "i")
    f = tmp_path / "i" / "vectors.npy"
    arr = np.load(f)
    arr[4, 0] = np.inf
    np.save(f, arr)
    _rewrite_manifest(tmp_path / "i", "vectors.npy")  # a consistent manifest: only values
    with pytest.raises(IntegrityError, match=r"item 'v4' \(row 4\) holds NaN or infinite"):
        load_index(tmp_path / "i")


def test_nan_vectors_in_faiss_and_rescore_files_are_refused(tmp_path: Path) -> None:
    x = _vectors(20)
    flat = FaissIndex(8, "Flat", model="m")
    flat.add(x, [f"v{i}" for i in range(20)])
    faiss_vectors = flat.reconstruct(["v0"])
    assert np.isfinite(faiss_vectors).all()
    codes = np.sign(_vectors(6, 16))
    binary = BinaryHashIndex(16)
    binary.add(codes, [f"b{i}" for i in range(6)], rescore_vectors=_vectors(6))
    binary.save(tmp_path / "b")
    f = tmp_path / "b" / "rescore.npy"
    arr = np.load(f)
    arr[2, 1] = np.nan
    np.save(f, arr)
    _rewrite_manifest(tmp_path / "b", "rescore.npy")
    with pytest.raises(IntegrityError, match="'b2'"):
        load_index(tmp_path / "b")


# ----------------------------------------------------------------------------- row: ids vs corpus
@pytest.fixture
def saved_retriever(tmp_path: Path, encoder: Any) -> Path:
    from vistrieve.retrievers import DenseRetriever

    rng = np.random.default_rng(1)
    corpus = [
        Item(
            f"img{i}",
            image=Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)),
            captions=(f"caption {i}",),
        )
        for i in range(6)
    ]
    DenseRetriever.build(encoder, corpus, directory=tmp_path / "r")
    return tmp_path / "r"


def test_swapped_ids_are_refused(saved_retriever: Path, encoder: Any) -> None:
    from vistrieve.retrievers import load_retriever

    ids_file = saved_retriever / "image_index" / "ids.json"
    ids = json.loads(ids_file.read_text())
    ids[1], ids[3] = ids[3], ids[1]
    ids_file.write_text(json.dumps(ids, indent=2) + "\n")  # same size, other content
    with pytest.raises(IntegrityError, match=r"ids\.json does not match the SHA-256"):
        load_retriever(saved_retriever, encoder=encoder)
    _rewrite_manifest(saved_retriever / "image_index", "ids.json")
    with pytest.raises(IntegrityError, match="'img2' .*is out of order with the corpus"):
        load_retriever(saved_retriever, encoder=encoder)


def test_a_corpus_cut_at_a_line_boundary_is_refused(saved_retriever: Path, encoder: Any) -> None:
    from vistrieve.retrievers import load_retriever

    corpus_file = saved_retriever / "corpus.jsonl"
    lines = corpus_file.read_text().splitlines(keepends=True)
    corpus_file.write_text("".join(lines[:4]))  # still valid JSON lines
    with pytest.raises(IntegrityError, match=r"corpus\.jsonl has .* bytes"):
        load_retriever(saved_retriever, encoder=encoder)
    # Without the record (a directory saved before checksums) the id check catches it.
    meta_file = saved_retriever / "retriever.json"
    meta = json.loads(meta_file.read_text())
    del meta["files"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="'img4' .*is not in the corpus"):
        load_retriever(saved_retriever, encoder=encoder)


def test_an_intact_retriever_still_loads_and_answers(saved_retriever: Path, encoder: Any) -> None:
    from vistrieve.retrievers import load_retriever

    r = load_retriever(saved_retriever, encoder=encoder)
    hits = r.retrieve([Query(text="caption 2")], k=3)[0]
    assert len(hits) == 3 and all(h.metadata["caption"] for h in hits)


# ------------------------------------------------------------------ row: resume fingerprint
class _FailingEncoder:
    """Wraps an encoder; image encoding raises after ``ok`` calls (an interrupted build)."""

    def __init__(self, inner: Any, ok: int) -> None:
        self.inner, self.ok = inner, ok
        self.name, self.dim = inner.name, inner.dim

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_text(texts)

    def encode_image_tolerant(self, images: Sequence[Any]) -> Any:
        if self.ok <= 0:
            raise KeyboardInterrupt("interrupted")
        self.ok -= 1
        return self.inner.encode_image_tolerant(images)


def test_an_image_replaced_before_resume_is_encoded_again(tmp_path: Path, encoder: Any) -> None:
    from vistrieve.data.manifest import corpus_from_folder
    from vistrieve.retrievers import DenseRetriever

    photos = _photos(tmp_path / "photos", n=4)
    out = tmp_path / "out"
    corpus = corpus_from_folder(photos)
    with pytest.raises(KeyboardInterrupt):
        DenseRetriever.build(_FailingEncoder(encoder, 1), corpus, directory=out, chunk_size=2)
    assert (out / ".partial" / "chunk-000000.json").is_file()
    # The first chunk's p0.png is replaced by another image under the same name.
    Image.new("RGB", (30, 30), (250, 250, 0)).save(photos / "p0.png")
    os.utime(photos / "p0.png", ns=(1, 1))
    r = DenseRetriever.build(encoder, corpus_from_folder(photos), directory=out, chunk_size=2)
    assert r.build_report is not None and r.build_report.resumed_chunks == 0
    fresh = encoder.encode_image([str(photos / "p0.png")])
    np.testing.assert_allclose(r.image_index.reconstruct(["p0.png"]), fresh, atol=1e-5)


def test_an_unchanged_interrupted_build_still_resumes(tmp_path: Path, encoder: Any) -> None:
    from vistrieve.data.manifest import corpus_from_folder
    from vistrieve.retrievers import DenseRetriever

    photos = _photos(tmp_path / "photos", n=4)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        DenseRetriever.build(
            _FailingEncoder(encoder, 1), corpus_from_folder(photos), directory=out, chunk_size=2
        )
    r = DenseRetriever.build(encoder, corpus_from_folder(photos), directory=out, chunk_size=2)
    assert r.build_report is not None and r.build_report.resumed_chunks == 1


# ----------------------------------------------------------------------------- row: bombs, names
def test_a_decompression_bomb_is_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", n=3)
    (photos / "bomb.png").write_bytes(_bomb())
    assert len((photos / "bomb.png").read_bytes()) < 400
    assert _index_cli(photos, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "indexed 3 of 4 images" in out and "bomb.png" in out and "pixels" in out


def test_the_pixel_limit_is_configurable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", n=2, size=24)
    Image.new("RGB", (64, 64), "blue").save(photos / "big.png")
    assert _index_cli(photos, tmp_path / "out", "--max-image-pixels", "1000") == 0
    out = capsys.readouterr().out
    assert "indexed 2 of 3 images" in out and "big.png" in out and "over the limit of 1000" in out


def test_image_loading_refuses_oversized_headers(tmp_path: Path) -> None:
    f = tmp_path / "bomb.png"
    f.write_bytes(_bomb())
    with pytest.raises(ImageTooLargeError, match="bomb"):
        load_image(f)  # Pillow's own limit, reported as a project error
    with pytest.raises(ImageTooLargeError, match="over the limit of 100"):
        check_image_pixels(Image.new("RGB", (20, 20)), 100)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    with pytest.raises(ImageTooLargeError, match="20x20 = 400 pixels"):
        load_image(small, max_pixels=100)
    assert load_image(small, max_pixels=400).size == (20, 20)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system with byte file names")
def test_non_utf8_file_names_are_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", n=2)
    raw = os.fsencode(photos) + b"/caf\xe9.png"
    Image.new("RGB", (8, 8), "red").save(open(raw, "wb"), format="PNG")  # noqa: SIM115
    result = scan_folder(photos)
    assert result.corpus.ids == ["p0.png", "p1.png"]
    assert len(result.skipped) == 1 and "not valid UTF-8" in result.skipped[0].reason
    assert _index_cli(photos, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "indexed 2 of 2" in out and "caf" in out and "not valid UTF-8" in out


# ----------------------------------------------------------------------------- row: encodings
def test_a_latin1_manifest_names_the_file_and_takes_an_encoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", n=2)
    manifest = tmp_path / "m.csv"
    text = f"image,caption\n{photos / 'p0.png'},a red café\n{photos / 'p1.png'},a crème cake\n"
    manifest.write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestError, match=r"m\.csv, line 2: the file is not valid utf-8") as err:
        corpus_from_manifest(manifest)
    assert "encoding" in str(err.value)
    corpus = corpus_from_manifest(manifest, encoding="latin-1").corpus
    assert corpus[str(photos / "p0.png")].captions == ("a red café",)
    assert _index_cli(manifest, tmp_path / "out") == 2
    err_text = capsys.readouterr().err
    assert "m.csv" in err_text and "--encoding" in err_text
    assert _index_cli(manifest, tmp_path / "out", "--encoding", "latin-1") == 0
    with pytest.raises(ValueError, match="unknown text encoding"):
        corpus_from_manifest(manifest, encoding="klingon")


def test_a_utf8_manifest_with_a_byte_order_mark_still_reads(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", n=1)
    manifest = tmp_path / "m.jsonl"
    line = json.dumps({"image": str(photos / "p0.png"), "caption": "ünïcode"}) + "\n"
    manifest.write_bytes(b"\xef\xbb\xbf" + line.encode("utf-8"))
    assert corpus_from_manifest(manifest).corpus.ids == [str(photos / "p0.png")]


# ----------------------------------------------------------------------------- row: huge k
def test_huge_k_allocates_nothing_sized_by_k() -> None:
    x = _vectors(100)
    q = _vectors(3, seed=1)
    exact = _exact(100)
    faiss_index = FaissIndex(8, "Flat", model="m")
    faiss_index.add(x, [f"v{i}" for i in range(100)])
    binary = BinaryHashIndex(16)
    binary.add(np.sign(_vectors(100, 16)), [f"b{i}" for i in range(100)])
    tracemalloc.start()
    try:
        for idx, queries in ((exact, q), (faiss_index, q), (binary, np.sign(_vectors(3, 16)))):
            scores, pos = idx.search_arrays(queries, 10**9)
            assert scores.shape == pos.shape == (3, 100)
            assert len(idx.search(queries, 50_000_000)[0]) == 100
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # 10**9 float32 scores alone would be 4 GB


def test_cli_search_with_a_huge_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = _photos(tmp_path / "photos", n=5)
    assert _index_cli(photos, tmp_path / "out") == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "out"), "a photo", "-k", str(10**9), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5


def test_retriever_k_is_clamped(saved_retriever: Path, encoder: Any) -> None:
    from vistrieve.retrievers import load_retriever

    r = load_retriever(saved_retriever, encoder=encoder)
    assert len(r.retrieve([Query(text="x")], k=10**9)[0]) == 6
    assert len(r.retrieve([Query(text="x")], k=10**9, target="text")[0]) == 6


# ----------------------------------------------------------------------------- rows: LLM failures
class _LLM:
    """A chat model that answers from a list, or raises / answers None when told."""

    name = "fake-llm"
    decoding: dict[str, Any] = {}

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    def complete(self, messages: Any) -> Any:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class _Retriever:
    def retrieve(self, queries: Sequence[Query], k: int = 10) -> list[list[Hit]]:
        return [[Hit(f"h{i}", 1.0 - i / 10) for i in range(min(k, 3))] for _ in queries]


class _Captioner:
    name = "fake-captioner"

    def caption(self, images: Sequence[Any]) -> list[str]:
        return ["a red square"] * len(images)


@pytest.mark.parametrize(
    "failure", [RuntimeError("connection reset"), None, 42], ids=["raises", "none", "not-text"]
)
def test_llm_failures_raise_llm_error_everywhere(failure: Any) -> None:
    from vistrieve.query_rewriting.chat import DialogSummaryRewriter, FeedbackLoop, LLMQuestioner
    from vistrieve.query_rewriting.cirevl import CIReVLRewriter

    llm = _LLM(failure)
    with pytest.raises(LLMError, match="fake-llm"):
        LLMQuestioner(llm)("a cat", [])
    with pytest.raises(LLMError, match="fake-llm"):
        CIReVLRewriter(_Captioner(), llm).rewrite(
            [Query(text="make it blue", image=Image.new("RGB", (8, 8)))]
        )
    dialog = Query(text="a cat", dialog=(DialogTurn("colour?", "black"),))
    with pytest.raises(LLMError, match="fake-llm"):
        DialogSummaryRewriter(llm).rewrite([dialog])
    with pytest.raises(LLMError, match="fake-llm"):
        FeedbackLoop(_Retriever(), _Captioner(), llm).rewrite("a cat", ["a black cat"])


def test_a_failing_questioner_leaves_the_session_as_it_was() -> None:
    from vistrieve.query_rewriting.chat import ChatSession, LLMQuestioner

    llm = _LLM("Question: is it indoors?", RuntimeError("rate limited"))
    session = ChatSession(_Retriever(), questioner=LLMQuestioner(llm), k=2)
    assert session.send("a black cat").question == "is it indoors?"
    before = session.to_json()
    with pytest.raises(LLMError, match="rate limited"):
        session.send("yes")
    assert session.to_json() == before  # the answer is not recorded, the question pends


def test_megabyte_llm_outputs_are_capped_and_counted() -> None:
    from vistrieve.llm.prompts import MAX_QUERY_CHARS, MAX_QUESTION_CHARS
    from vistrieve.query_rewriting.chat import (
        ChatSession,
        DialogSummaryRewriter,
        FeedbackLoop,
        LLMQuestioner,
    )
    from vistrieve.query_rewriting.cirevl import CIReVLRewriter

    words = "word " * 200_000  # 1 MB
    questioner = LLMQuestioner(_LLM(f"Question: {words}?"))
    question = questioner("a cat", [])
    assert len(question) <= MAX_QUESTION_CHARS and questioner.cost()["truncated_outputs"] == 1
    session = ChatSession(_Retriever(), questioner=lambda caption, turns: "x" * 100_000)
    assert len(session.send("a cat").question or "") <= MAX_QUESTION_CHARS
    cirevl = CIReVLRewriter(_Captioner(), _LLM(f"Edited Description: {words}"))
    out = cirevl.rewrite([Query(text="make it blue", image=Image.new("RGB", (8, 8)))])
    assert len(str(out[0][0].text)) <= MAX_QUERY_CHARS
    assert cirevl.cost()["truncated_outputs"] == 1
    summary = DialogSummaryRewriter(_LLM(f"Description: {words}"))
    dialog = Query(text="a cat", dialog=(DialogTurn("colour?", "black"),))
    assert len(str(summary.rewrite([dialog])[0][0].text)) <= MAX_QUERY_CHARS
    assert summary.cost()["truncated_outputs"] == 1
    loop = FeedbackLoop(_Retriever(), _Captioner(), _LLM(f"Query: {words}"))
    assert len(loop.rewrite("a cat", ["a black cat"])) <= MAX_QUERY_CHARS
    assert loop.cost()["truncated_outputs"] == 1


def test_a_questioner_returning_non_text_is_a_model_output_error() -> None:
    from vistrieve.query_rewriting.chat import ChatSession

    session = ChatSession(_Retriever(), questioner=lambda caption, turns: ["not", "text"])  # type: ignore[arg-type,return-value]
    with pytest.raises(ModelOutputError, match="not text"):
        session.send("a cat")
    assert session.state.caption == ""


# ----------------------------------------------------------------------------- row: listwise
def _chat_reply(metadata: Any) -> Any:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    reply = AIMessage(content="B", response_metadata=metadata)
    return GenericFakeChatModel(messages=iter([reply] * 8))


@pytest.mark.parametrize(
    "metadata",
    [
        {"logprobs": "garbage"},
        {"logprobs": {"content": ["not a dict"]}},
        {"logprobs": {"content": [{"token": "A"}]}},
        {"logprobs": {"content": [{"token": "A", "logprob": "high"}]}},
        {"logprobs": {"content": [{"token": "A", "logprob": -1, "top_logprobs": 5}]}},
    ],
    ids=["not-object", "entry-not-object", "no-logprob", "logprob-not-number", "top-not-list"],
)
def test_malformed_logprob_metadata_is_a_model_output_error(metadata: Any) -> None:
    from vistrieve.rerankers.listwise import ChatModelLetterScorer, ListwisePrompt

    scorer = ChatModelLetterScorer(_chat_reply(metadata), system=None)
    with pytest.raises(ModelOutputError, match="malformed log-probabilities"):
        scorer.letter_logprobs([ListwisePrompt("a red circle", ["x", "y"])])


def test_no_option_letter_in_the_top_choices_is_never_silently_equal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from vistrieve.rerankers.listwise import (
        ChatModelLetterScorer,
        ListwisePrompt,
        ListwiseReranker,
    )

    top = [{"token": "Sure", "logprob": -0.1}, {"token": "The", "logprob": -2.0}]
    meta = {"logprobs": {"content": [{"token": "Sure", "logprob": -0.1, "top_logprobs": top}]}}
    corpus = {i: Item(i, captions=(f"a {i} circle",)) for i in ("red", "blue")}
    reranker = ListwiseReranker(
        ChatModelLetterScorer(_chat_reply(meta), system=None), corpus, window=2, n_permutations=1
    )
    cands = [[Hit("red", 1.0), Hit("blue", 0.5)]]
    with pytest.raises(ModelOutputError, match="no option letter .*'Sure'"):
        reranker.rerank([Query(text="a blue circle")], cands)
    uniform = ChatModelLetterScorer(_chat_reply(meta), system=None, on_no_letter="uniform")
    with caplog.at_level("WARNING"):
        got = uniform.letter_logprobs([ListwisePrompt("a blue circle", ["x", "y"])])
    np.testing.assert_allclose(got[0], np.log([0.5, 0.5]))
    assert uniform.cost()["no_letter_prompts"] == 1 and "no option letter" in caplog.text
