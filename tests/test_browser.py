"""The chat image-search page end to end in headless Chromium (Debian's package, driven by
Playwright with its executable path; no browser download), over a pipeline with a reranker
and a relevance-feedback loop. Skips where Chromium is absent, except under CI (``CI`` set),
where a missing browser fails the run: `.ci/run` installs it."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = (
    os.environ.get("VISTRIEVE_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
)
if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail(
        "Chromium is not installed and CI is set: install Debian's chromium (.ci/run does)",
        pytrace=False,
    )
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

REWRITTEN = "a red circle and a blue square"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.pipeline import RetrievalPipeline
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import create_app

    root = tmp_path_factory.mktemp("page")
    corpus = ShapesWorld(seed=0, n_train=10, n_val=4, n_test=24).corpus("test")
    DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus,
                         directory=root / "index")  # fmt: skip
    # A reranker, and a feedback loop whose LLM (a scripted chat model) rewrites the query
    # from the captions of the hits marked relevant.
    spec = {
        "retriever": {"path": str(root / "index"), "k": 24},
        "rerank": [{"kind": "qformer", "path": "embedded", "k": 24}],
        "feedback": {"captioner": "embedded"},
        "questioner": {"kind": "generic"},
        "llm": {
            "backend": "langchain",
            "model": "langchain_core.language_models.fake_chat_models:FakeListChatModel",
            "kwargs": {"responses": [f"Query: {REWRITTEN}"] * 50},
        },
    }
    pipe = RetrievalPipeline.from_spec(spec)
    app = create_app(pipe, questioner=pipe.parts.questioner, feedback_loop=pipe.parts.feedback)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def test_chat_search_refines_in_the_browser(server: str, tmp_path: Any) -> None:
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(server + "/")
        page.fill("#message", "a red circle")
        page.click("#send")
        page.wait_for_selector("#results .hit")
        first = [page.locator("#results .hit").nth(i).get_attribute("data-id") for i in range(12)]
        assert len(first) == 12
        # Every stage's score is shown: the first stage's and the reranker's.
        scores = page.locator("#results .hit .scores").first.inner_text()
        assert "dense" in scores and "qformer" in scores
        question = page.locator("#question").inner_text()
        assert question.startswith("agent: ") and question.endswith("?")  # grounded question
        # Thumbnails load (served by id).
        page.wait_for_function(
            "[...document.querySelectorAll('#results .hit img')].every(i => i.naturalWidth > 0)"
        )
        # Mark the first result relevant and the second not.
        page.locator("#results .hit").nth(0).locator(".mark-relevant").click()
        page.wait_for_selector("#results .hit.relevant")
        second_id = first[1]
        page.locator("#results .hit").nth(1).locator(".mark-irrelevant").click()
        page.wait_for_selector("#results .hit.irrelevant")
        # Answer the agent's question: the feedback loop rewrites the query, results change.
        page.fill("#message", "two")
        page.click("#send")
        page.wait_for_function("document.querySelector('#question').textContent.includes('colour')")
        ids = [page.locator("#results .hit").nth(i).get_attribute("data-id") for i in range(12)]
        assert second_id not in ids  # marked "not it": not shown again
        assert ids != first
        log = page.locator("#log").inner_text()
        assert "a red circle" in log and "two" in log
        assert f"searching: {REWRITTEN}" in log  # the relevant hit's captions drove a rewrite
        page.wait_for_function(
            "[...document.querySelectorAll('#results .hit img')].every(i => i.naturalWidth > 0)"
        )
        shot = os.environ.get("VISTRIEVE_SCREENSHOT") or str(tmp_path / "page.png")
        page.screenshot(path=shot)
        browser.close()


def test_errors_are_shown_not_swallowed(server: str) -> None:
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(server + "/")
        page.fill("#message", "x" * 3000)  # over the server's 2,000-character limit
        page.click("#send")
        page.wait_for_selector("#log .error")
        assert page.locator("#results .hit").count() == 0
        browser.close()
