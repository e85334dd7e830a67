from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistrieve.encoders import create_encoder
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.types import Corpus, Item, Query

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (250,) * 3}


def _corpus(tmp_path: Path, n: int = 12) -> Corpus:
    items = []
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        p = tmp_path / "imgs" / f"img{i:02d}.png"
        p.parent.mkdir(exist_ok=True)
        arr = np.zeros((32, 32, 3), dtype=np.uint8)
        arr[4 + i % 8 : 20 + i % 8, 2 + i // 2 : 14 + i] = COLOURS[colour]
        Image.fromarray(arr).save(p)
        items.append(
            Item(f"img{i:02d}", image=str(p), captions=(f"a {colour} box {i}", f"box {i}"))
        )
    return Corpus(items)


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    return create_encoder("clip-tiny-test", num_workers=0)


def test_build_and_retrieve_all_kinds(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path)
    r = DenseRetriever.build(encoder, corpus)
    assert r.build_report is not None and r.build_report.n_indexed == 12
    assert r.build_report.n_captions == 24
    img = corpus["img03"].image
    queries = [
        Query(text="a red box 0"),
        Query(image=img),
        Query(text="make it blue", image=img),
        Query(text="a box", dialog=()),
    ]
    hits = r.retrieve(queries, k=5)
    assert [len(h) for h in hits] == [5, 5, 5, 5]
    # Image -> image: the query image itself is its own nearest neighbour (cosine 1).
    assert hits[1][0].id == "img03" and hits[1][0].score == pytest.approx(1.0, abs=1e-4)
    for ranked in hits:
        assert [h.metadata["rank"] for h in ranked] == list(range(5))
        assert all(h.scores["dense"] == h.score for h in ranked)
        assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    text_hits = r.retrieve([Query(image=img)], k=4, target="text")[0]
    assert all("#" in h.id for h in text_hits)
    assert all(h.metadata["caption"] in corpus[h.metadata["item_id"]].captions for h in text_hits)


def test_scores_equal_brute_force(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path)
    r = DenseRetriever.build(encoder, corpus)
    q = encoder.encode_text(["a green box 5"])
    imgs = encoder.encode_image([it.image for it in corpus.values()])
    expected = (imgs @ q[0]).argsort()[::-1][:3]
    got = [h.id for h in r.retrieve([Query(text="a green box 5")], k=3)[0]]
    assert got == [corpus.ids[i] for i in expected]


def test_composed_modes(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path, 6)
    img = corpus["img01"].image
    q = [Query(text="a blue box", image=img)]
    by_mode = {}
    for mode in ("sum", "image", "text"):
        r = DenseRetriever.build(encoder, corpus, composed_mode=mode)  # type: ignore[arg-type]
        by_mode[mode] = r.embed_queries(q)[0]
    i = encoder.encode_image([img])[0]
    t = encoder.encode_text(["a blue box"])[0]
    np.testing.assert_allclose(by_mode["image"], i, atol=1e-5)
    np.testing.assert_allclose(by_mode["text"], t, atol=1e-5)
    np.testing.assert_allclose(by_mode["sum"], (i + t) / np.linalg.norm(i + t), atol=1e-5)
    with pytest.raises(ValueError, match="composed_mode"):
        DenseRetriever.build(encoder, corpus, composed_mode="max")  # type: ignore[arg-type]


def test_corrupt_images_skipped_and_reported(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path, 6)
    bad = tmp_path / "imgs" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    items = [*corpus.values(), Item("bad", image=str(bad), captions=("broken",))]
    r = DenseRetriever.build(encoder, Corpus(items), directory=tmp_path / "out")
    report = r.build_report
    assert report is not None
    assert report.n_indexed == 6 and [s["id"] for s in report.skipped] == ["bad"]
    assert "bad.jpg" in report.skipped[0]["source"]
    assert "bad" not in r.image_index.ids
    saved = DenseRetriever.load(tmp_path / "out", encoder)
    assert saved.build_report is not None and saved.build_report.skipped == report.skipped


def test_resume_does_not_reencode(tmp_path: Path, encoder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path, 10)
    out = tmp_path / "out"
    calls = {"n": 0}
    real = type(encoder).encode_image_tolerant

    def flaky(self, images, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, images, **kw)

    monkeypatch.setattr(type(encoder), "encode_image_tolerant", flaky)
    with pytest.raises(KeyboardInterrupt):
        DenseRetriever.build(encoder, corpus, directory=out, chunk_size=4)
    assert len(list((out / ".partial").glob("chunk-*.json"))) == 2
    calls["n"] = 10  # no more failures
    r = DenseRetriever.build(encoder, corpus, directory=out, chunk_size=4)
    assert r.build_report is not None
    assert (r.build_report.resumed_chunks, r.build_report.encoded_chunks) == (2, 1)
    assert calls["n"] == 11
    assert not (out / ".partial").exists()
    monkeypatch.undo()
    fresh = DenseRetriever.build(encoder, corpus, chunk_size=4)
    q = [Query(text="a red box 4")]
    assert [h.id for h in r.retrieve(q, k=10)[0]] == [h.id for h in fresh.retrieve(q, k=10)[0]]


def test_resume_ignores_partial_from_other_settings(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path, 8)
    out = tmp_path / "out"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "meta.json").write_text('{"fingerprint": "other"}')
    (out / ".partial" / "chunk-000000.json").write_text('{"ids": ["zzz"], "skipped": []}')
    r = DenseRetriever.build(encoder, corpus, directory=out, chunk_size=4)
    assert r.build_report is not None and r.build_report.resumed_chunks == 0
    assert sorted(r.image_index.ids) == sorted(corpus.ids)


def test_save_load_round_trip_and_rebuilt_encoder(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path)
    r = DenseRetriever.build(encoder, corpus, directory=tmp_path / "idx")
    loaded = DenseRetriever.load(tmp_path / "idx")  # encoder rebuilt from its spec
    q = [Query(text="a white box 3"), Query(image=corpus["img07"].image)]
    a, b = r.retrieve(q, k=6), loaded.retrieve(q, k=6)
    assert [[h.id for h in x] for x in a] == [[h.id for h in x] for x in b]
    np.testing.assert_allclose([h.score for h in a[0]], [h.score for h in b[0]], atol=1e-6)
    assert loaded.corpus.ids == corpus.ids


def test_load_refuses_other_model(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    from vistrieve.indexes import IndexMismatchError

    DenseRetriever.build(encoder, _corpus(tmp_path, 4), directory=tmp_path / "idx")
    other = create_encoder("clip-tiny-test", seed=7)
    with pytest.raises(IndexMismatchError, match="clip-tiny-test:seed7"):
        DenseRetriever.load(tmp_path / "idx", other)
    with pytest.raises(FileNotFoundError, match="not a vistrieve retriever"):
        DenseRetriever.load(tmp_path)


def test_add_and_remove(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path, 12)
    items = list(corpus.values())
    r = DenseRetriever.build(encoder, Corpus(items[:8]))
    report = r.add(items[8:])
    assert report.n_indexed == 4 and len(r.image_index) == 12 and len(r.corpus) == 12
    assert r.remove(["img00", "img09"]) == 2
    assert len(r.image_index) == 10 and "img00" not in r.corpus
    assert all(not c.startswith("img00#") for c in r.text_index.ids)  # type: ignore[union-attr]
    with pytest.raises(KeyError, match="img00"):
        r.remove(["img00"])


def test_bad_input(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    r = DenseRetriever.build(encoder, _corpus(tmp_path, 4), index_captions=False)
    with pytest.raises(ValueError, match="k must be positive"):
        r.retrieve([Query(text="x")], k=0)
    with pytest.raises(TypeError, match="wrap"):
        r.retrieve(Query(text="x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no caption index"):
        r.retrieve([Query(text="x")], target="text")
    with pytest.raises(ValueError, match="empty corpus"):
        DenseRetriever.build(encoder, Corpus())
    assert r.retrieve([], k=3) == []


def test_from_embeddings_equals_build(tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    corpus = _corpus(tmp_path)
    built = DenseRetriever.build(encoder, corpus)
    ids = list(built.image_index.ids)
    emb = built.image_index.reconstruct(ids)
    skipped = [{"id": "x", "source": "x.png", "error": "unreadable"}]
    r = DenseRetriever.from_embeddings(
        encoder, corpus, emb, ids, skipped=skipped, directory=tmp_path / "idx"
    )
    loaded = DenseRetriever.load(tmp_path / "idx", encoder=encoder)
    assert list(loaded.image_index.ids) == ids
    assert loaded.text_index is not None and len(loaded.text_index) == 24
    assert loaded.build_report is not None and loaded.build_report.skipped == skipped
    q = [Query(text="a red box 0")]
    assert [h.id for h in r.retrieve(q, k=3)[0]] == [h.id for h in built.retrieve(q, k=3)[0]]
    with pytest.raises(ValueError, match=r"shape \(12, 3\)"):
        DenseRetriever.from_embeddings(encoder, corpus, emb[:, :3], ids)
    with pytest.raises(ValueError, match="'nope' is not an item"):
        DenseRetriever.from_embeddings(encoder, corpus, emb[:1], ["nope"])
    with pytest.raises(ValueError, match="out of corpus order"):
        DenseRetriever.from_embeddings(encoder, corpus, emb[:2], [ids[1], ids[0]])
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DenseRetriever.from_embeddings(encoder, corpus, bad, ids)


@pytest.mark.parametrize("kind", ["sq8", "bf16"])
def test_build_with_a_quantised_flat_index_saves_and_answers_like_exact(
    tmp_path: Path,
    encoder,  # type: ignore[no-untyped-def]
    kind: str,
) -> None:
    corpus = _corpus(tmp_path, 8)
    exact = DenseRetriever.build(encoder, corpus)
    r = DenseRetriever.build(encoder, corpus, index=kind, directory=tmp_path / kind)
    assert r.image_index.kind == kind
    loaded = DenseRetriever.load(tmp_path / kind, encoder)
    assert loaded.image_index.kind == kind
    queries = [Query(text="a red circle"), Query(text="a blue square")]
    want = [[h.id for h in row] for row in exact.retrieve(queries, k=3)]
    assert [[h.id for h in row] for row in loaded.retrieve(queries, k=3)] == want
