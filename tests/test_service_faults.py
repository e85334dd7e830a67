"""Fault injection against the HTTP service: each case once lost data or took it down."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from vistrieve.data.shapes import ShapesWorld  # noqa: E402
from vistrieve.encoders import create_encoder  # noqa: E402
from vistrieve.retrievers import DenseRetriever, load_retriever  # noqa: E402
from vistrieve.service.app import ServiceConfig, create_app, replay_journal  # noqa: E402
from vistrieve.service.store import ServiceStore  # noqa: E402


@pytest.fixture(scope="module")
def encoder() -> Any:
    return create_encoder("clip-tiny-test")


@pytest.fixture
def index_dir(tmp_path: Path, encoder: Any) -> Path:
    corpus = ShapesWorld(n_train=0, n_val=0, n_test=12, n_composed=0, n_dialogs=0).corpus("test")
    DenseRetriever.build(encoder, corpus, directory=tmp_path / "idx")
    return tmp_path / "idx"


def _png(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _app(index_dir: Path, state: Path, encoder: Any, **kw: Any) -> tuple[Any, Any, Any]:
    retriever = load_retriever(index_dir, encoder=encoder)
    store = ServiceStore(state, max_sessions=kw.pop("max_sessions", 1000))
    replay_journal(retriever, store, index_dir)
    cfg = ServiceConfig(max_sessions=store.max_sessions, **kw)
    return create_app(retriever, config=cfg, store=store), retriever, store


def test_http_adds_and_deletes_survive_a_restart(index_dir: Path, tmp_path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state.sqlite"
    app, retriever, store = _app(index_dir, state, encoder)
    gone = retriever.corpus.ids[0]
    with TestClient(app) as c:
        r = c.post("/index/items", data={"id": "up/new one"}, files={"image": ("a.png", _png())})
        assert r.status_code == 201
        assert c.delete(f"/index/items/{gone}").status_code == 200
    store.close()
    # A restart: a fresh process loads the directory and replays the journal.
    app2, retriever2, store2 = _app(index_dir, state, encoder)
    assert "up/new one" in retriever2.corpus and gone not in retriever2.corpus
    with TestClient(app2) as c:
        thumb = c.get("/thumbnails/up%2Fnew%20one")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    # The journal was folded into the saved directory, the uploaded image stored with it.
    assert list(store2.journal()) == []
    store2.close()
    reopened = load_retriever(index_dir, encoder=encoder)
    assert "up/new one" in reopened.corpus and gone not in reopened.corpus
    stored = reopened.corpus["up/new one"].uri
    assert stored is not None and Path(stored).is_relative_to(index_dir.resolve())


def test_an_unacknowledged_add_is_not_in_the_index(
    index_dir, tmp_path, encoder, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    app, retriever, store = _app(index_dir, tmp_path / "s.sqlite", encoder)

    def disk_full(*a: Any, **k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "log_add", disk_full)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/index/items", data={"id": "x"}, files={"image": ("a.png", _png())})
    assert r.status_code == 500 and "x" not in retriever.corpus


def test_decompression_bombs_are_refused(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    app, retriever, _ = _app(index_dir, tmp_path / "s.sqlite", encoder)
    with TestClient(app) as c:
        for route in ("/index/items", "/search/image"):
            r = c.post(route, data={"id": "bomb"}, files={"image": ("b.png", _bomb())})
            assert r.status_code == 400 and "pixel limit" in r.json()["detail"]
    assert "bomb" not in retriever.corpus


def test_uploads_decode_off_the_event_loop(index_dir, tmp_path, encoder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """While an upload is being decoded, other requests are still answered."""
    import vistrieve.service.app as service

    app, _, _ = _app(index_dir, tmp_path / "s.sqlite", encoder)
    started, release = threading.Event(), threading.Event()
    real_open = service.Image.open

    def slow_open(fp: Any, *a: Any, **k: Any) -> Any:
        started.set()
        assert release.wait(10)
        return real_open(fp, *a, **k)

    monkeypatch.setattr(service.Image, "open", slow_open)
    with TestClient(app) as c:
        done: dict[str, int] = {}

        def upload() -> None:
            r = c.post("/search/image", files={"image": ("a.png", _png())})
            done["status"] = r.status_code

        t = threading.Thread(target=upload)
        t.start()
        assert started.wait(10)
        assert c.get("/health").status_code == 200  # answered while the decode is blocked
        release.set()
        t.join(10)
    assert done["status"] == 200


def test_sessions_are_bounded_and_survive_a_restart(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "s.sqlite"
    app, _, store = _app(index_dir, state, encoder, max_sessions=3)
    with TestClient(app) as c:
        sids = [c.post("/sessions").json()["session_id"] for _ in range(4)]
        assert c.get(f"/sessions/{sids[0]}").status_code == 404  # the oldest was evicted
        sid = sids[-1]
        assert c.post(f"/sessions/{sid}/messages", json={"text": "a red circle"}).status_code == 200
        statuses = [
            c.post(f"/sessions/{sid}/messages", json={"text": "more detail " * 30}).status_code
            for _ in range(30)  # answers to the agent's questions (at most 20), then additions
        ]
        assert 400 in statuses  # the dialog and the description are capped; the session is not
        body = c.get(f"/sessions/{sid}").json()
        assert len(body["caption"]) <= 1000 and len(body["log"]) <= 50
    store.close()
    app2, _, store2 = _app(index_dir, state, encoder, max_sessions=3)
    with TestClient(app2) as c:
        again = c.get(f"/sessions/{sid}").json()
        assert again["caption"] == body["caption"] and again["log"] == body["log"]
        assert c.post(f"/sessions/{sid}/messages", json={"text": "blue"}).status_code == 200
    store2.close()


def test_a_failing_llm_answers_503_and_leaves_the_session_as_it_was(
    index_dir, tmp_path, encoder
) -> None:  # type: ignore[no-untyped-def]
    from vistrieve.llm import EndpointError

    calls = {"n": 0}

    def flaky_questioner(caption: str, turns: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise EndpointError("openai:m@http://x failed: HTTP 500")
        return "what colour is it?"

    retriever = load_retriever(index_dir, encoder=encoder)
    app = create_app(retriever, questioner=flaky_questioner)
    with TestClient(app) as c:
        sid = c.post("/sessions").json()["session_id"]
        assert c.post(f"/sessions/{sid}/messages", json={"text": "a red circle"}).status_code == 200
        before = c.get(f"/sessions/{sid}").json()
        r = c.post(f"/sessions/{sid}/messages", json={"text": "red"})
        assert r.status_code == 503 and "unchanged" in r.json()["detail"]
        assert c.get(f"/sessions/{sid}").json() == before
        retry = c.post(f"/sessions/{sid}/messages", json={"text": "red"})
        assert retry.status_code == 200
        assert c.get(f"/sessions/{sid}").json()["turns"] == [["what colour is it?", "red"]]


def test_ids_with_slashes_work_on_every_route(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    app, retriever, _ = _app(index_dir, tmp_path / "s.sqlite", encoder)
    with TestClient(app) as c:
        assert c.post("/index/items", data={"id": "a/b/c.png"},
                      files={"image": ("a.png", _png())}).status_code == 201  # fmt: skip
        hits = c.post("/search/text", json={"text": "a red circle", "k": 20}).json()["hits"]
        hit = next(h for h in hits if h["id"] == "a/b/c.png")
        assert c.get(hit["thumbnail"]).status_code == 200
        sid = c.post("/sessions").json()["session_id"]
        shown = c.post(f"/sessions/{sid}/messages", json={"text": "red"}).json()["hits"]
        assert c.post(f"/sessions/{sid}/feedback",
                      json={"id": shown[0]["id"], "relevant": True}).status_code == 200  # fmt: skip
        assert c.delete("/index/items/a/b/c.png").status_code == 200
    assert "a/b/c.png" not in retriever.corpus


def test_k_is_clamped_before_anything_is_allocated(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    app, retriever, _ = _app(index_dir, tmp_path / "s.sqlite", encoder)
    with TestClient(app) as c:
        assert c.post("/search/text", json={"text": "x", "k": 10**9}).status_code == 422
        hits = c.post("/search/text", json={"text": "x", "k": 200}).json()["hits"]
        assert len(hits) == len(retriever.corpus)


def test_body_and_text_limits(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    app, _, _ = _app(index_dir, tmp_path / "s.sqlite", encoder)
    with TestClient(app) as c:
        big = json.dumps({"text": "x" * (100 * 1024 * 1024), "k": 3})
        assert c.post("/search/text", content=big,
                      headers={"content-type": "application/json"}).status_code == 413  # fmt: skip

        def chunks() -> Any:  # no Content-Length: counted while read
            for _ in range(200):
                yield b"x" * 1024

        r = c.post("/search/text", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/search/composed", data={"text": "y" * (1024 * 1024)},
                   files={"image": ("a.png", _png())})  # fmt: skip
        assert r.status_code in (413, 422)
        r = c.post("/search/composed", data={"text": "y" * 5000},
                   files={"image": ("a.png", _png())})  # fmt: skip
        assert r.status_code == 422


def test_cross_origin_posts_and_tokens(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    app, retriever, _ = _app(index_dir, tmp_path / "s.sqlite", encoder, token="s3cret")
    form = {"data": {"id": "evil"}, "files": {"image": ("a.png", _png())}}
    with TestClient(app) as c:
        r = c.post("/index/items", headers={"Origin": "https://evil.example",
                                            "Authorization": "Bearer s3cret"}, **form)  # fmt: skip
        assert r.status_code == 403
        r = c.post("/sessions", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert c.post("/index/items", **form).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert c.post("/index/items", headers=wrong, **form).status_code == 401
        ok = {"Authorization": "Bearer s3cret", "Origin": "http://testserver"}
        assert c.post("/index/items", headers=ok, **form).status_code == 201
        assert c.post("/sessions").status_code == 201  # searching and chatting stay open
    assert "evil" in retriever.corpus


def test_docs_work_offline(index_dir, tmp_path, encoder) -> None:  # type: ignore[no-untyped-def]
    app, _, _ = _app(index_dir, tmp_path / "s.sqlite", encoder)
    with TestClient(app) as c:
        page = c.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
        js = c.get("/docs-assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
        assert c.get("/docs-assets/../app.py").status_code == 404
