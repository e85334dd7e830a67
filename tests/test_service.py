"""The HTTP service: search, sessions, index management, thumbnails, malformed input."""

from __future__ import annotations

import io
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Any:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import create_app

    corpus = ShapesWorld(seed=0, n_train=10, n_val=4, n_test=16).corpus("test")
    retriever = DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus)
    app = create_app(retriever)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.corpus = corpus  # type: ignore[attr-defined]
        yield c


def _png(item_image: Any = None) -> bytes:
    im = item_image or Image.new("RGB", (64, 64), (200, 30, 30))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_openapi(client: Any) -> None:
    assert client.get("/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    for path in (
        "/search/text",
        "/search/image",
        "/search/composed",
        "/sessions",
        "/sessions/{session_id}/messages",
        "/index/items",
        "/thumbnails/{item_id}",
    ):
        assert path in spec["paths"]  # fmt: skip


def test_text_image_and_composed_search(client: Any) -> None:
    hits = client.post("/search/text", json={"text": "a red circle", "k": 3}).json()["hits"]
    assert len(hits) == 3 and hits[0]["thumbnail"] == f"/thumbnails/{hits[0]['id']}"
    item = next(iter(client.corpus.values()))
    r = client.post("/search/image", files={"image": ("q.png", _png(item.image))}, data={"k": 2})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == item.id
    r = client.post("/search/composed", files={"image": ("q.png", _png(item.image))},
                    data={"text": "make it blue", "k": 2})  # fmt: skip
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


def test_malformed_requests_get_4xx_with_a_message(client: Any) -> None:
    assert client.post("/search/text", json={"text": ""}).status_code == 422
    assert client.post("/search/text", json={"text": "x", "k": 0}).status_code == 422
    assert client.post("/search/text", content=b"{not json",
                       headers={"content-type": "application/json"}).status_code == 422  # fmt: skip
    r = client.post("/search/image", files={"image": ("q.png", b"not an image")})
    assert r.status_code == 400 and "cannot read" in r.json()["detail"]
    assert client.post("/search/image", files={"image": ("q.png", b"")}).status_code == 400
    assert client.post("/search/image").status_code == 422
    assert client.post("/sessions/nope/messages", json={"text": "x"}).status_code == 404
    assert client.get("/health").status_code == 200  # still serving


def test_thumbnails_only_for_indexed_ids(client: Any) -> None:
    item_id = next(iter(client.corpus))
    r = client.get(f"/thumbnails/{item_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get("/thumbnails/not-an-id").status_code == 404
    assert client.get("/thumbnails/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/thumbnails/%2Fetc%2Fpasswd").status_code == 404
    assert client.get(f"/thumbnails/{item_id}", params={"size": 5000}).status_code == 422


def test_chat_session_flow(client: Any) -> None:
    sid = client.post("/sessions").json()["session_id"]
    r = client.post(f"/sessions/{sid}/messages", json={"text": "something red"}).json()
    question = r["question"]
    # the agent asks about a word of the current candidates' captions
    assert r["hits"] and question.endswith("?") and question != "how many objects are there?"
    from vistrieve.query_rewriting.dialog_agent import CaptionWords

    voc = CaptionWords()
    asked = voc.attributes(question)
    assert asked and asked <= voc.attributes(" ".join(h["caption"] for h in r["hits"]))
    r = client.post(f"/sessions/{sid}/messages", json={"text": "yes"}).json()
    assert "?" not in r["query"] and r["query"].startswith("something red")
    assert all("dialog" in h["scores"] for h in r["hits"])
    shown = r["hits"][0]["id"]
    fb = client.post(f"/sessions/{sid}/feedback", json={"id": shown, "relevant": False})
    assert fb.status_code == 200 and fb.json()["irrelevant"] == [shown]
    bad = client.post(f"/sessions/{sid}/feedback", json={"id": "never-shown", "relevant": True})
    assert bad.status_code == 404
    state = client.get(f"/sessions/{sid}").json()
    assert state["turns"] == [[question, "yes"]]


def test_index_add_and_delete(client: Any) -> None:
    n = client.get("/health").json()["items"]
    r = client.post("/index/items", data={"id": "new-red", "caption": "a red square"},
                    files={"image": ("x.png", _png())})  # fmt: skip
    assert r.status_code == 201 and r.json()["items"] == n + 1
    dup = client.post("/index/items", data={"id": "new-red"}, files={"image": ("x.png", _png())})
    assert dup.status_code == 409
    assert client.get("/thumbnails/new-red").status_code == 200
    assert client.delete("/index/items/new-red").json()["items"] == n
    assert client.delete("/index/items/new-red").status_code == 404
    assert client.get("/thumbnails/new-red").status_code == 404


def test_web_page_is_served(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200 and 'id="message"' in r.text and "/sessions" in r.text


def test_serve_command_rejects_a_missing_index(tmp_path: Any) -> None:
    from vistrieve.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2


def test_a_captioner_lets_the_agent_ask_about_a_captionless_folder() -> None:
    """Images added without captions: with a captioner the agent asks about what the
    descriptions say; without one it has nothing to ask from."""
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.query_rewriting.dialog_agent import CaptionWords
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import create_app
    from vistrieve.types import Corpus, Item

    world = ShapesWorld(seed=0, n_train=10, n_val=4, n_test=16).corpus("test")
    bare = Corpus([Item(id=i, image=world[i].image) for i in world.ids])
    described = {id(world[i].image): list(world[i].captions) for i in world.ids}

    class Describer:
        def describe(self, images: Any, n: int = 5) -> list[list[str]]:
            return [described[id(im)][:n] for im in images]

    encoder = create_encoder("shapes-clip", progress=False)
    questions = {}
    for label, captioner in (("none", None), ("captioner", Describer())):
        app = create_app(DenseRetriever.build(encoder, bare), captioner=captioner)
        with TestClient(app, raise_server_exceptions=False) as c:
            sid = c.post("/sessions").json()["session_id"]
            r = c.post(f"/sessions/{sid}/messages", json={"text": "something red"})
            assert r.status_code == 200
            questions[label] = r.json()["question"]
    voc = CaptionWords()
    asked = voc.attributes(questions["captioner"] or "")
    assert asked and asked <= voc.attributes(" ".join(" ".join(v) for v in described.values()))
    assert not voc.attributes(questions["none"] or "") & asked


def test_serving_a_captionless_index_warns_that_the_agent_cannot_ask(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import warn_if_agent_cannot_ask
    from vistrieve.types import Corpus, Item

    world = ShapesWorld(seed=0, n_train=10, n_val=4, n_test=16).corpus("test")
    encoder = create_encoder("shapes-clip", progress=False)
    bare = DenseRetriever.build(
        encoder, Corpus([Item(id=i, image=world[i].image) for i in world.ids])
    )
    captioned = DenseRetriever.build(encoder, world)
    with caplog.at_level("WARNING", logger="vistrieve.service.app"):
        assert not warn_if_agent_cannot_ask(captioned, None, None)
        assert not warn_if_agent_cannot_ask(bare, lambda *a: "a question?", None)
        assert not warn_if_agent_cannot_ask(bare, None, object())
        assert caplog.text == ""
        assert warn_if_agent_cannot_ask(bare, None, None)
    assert "no captions" in caplog.text and "--captioner" in caplog.text
