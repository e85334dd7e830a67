"""The chat image-search page end to end in headless Chromium (Debian's package, driven by
Playwright with its executable path; no browser download). Skips where either is absent."""

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
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    import uvicorn

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import create_app

    corpus = ShapesWorld(seed=0, n_train=10, n_val=4, n_test=24).corpus("test")
    app = create_app(DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus))
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
        page = browser.new_page()
        page.goto(server + "/")
        page.fill("#message", "a red circle")
        page.click("#send")
        page.wait_for_selector("#results .hit")
        first = page.locator("#results .hit").all_inner_texts()
        assert len(first) == 12
        assert page.locator("#question").inner_text() == "agent: how many objects are there?"
        # Thumbnails load (served by id).
        page.wait_for_function("document.querySelector('#results .hit img').naturalWidth > 0")
        # Mark the first result relevant and the second not.
        page.locator("#results .hit").nth(0).locator(".mark-relevant").click()
        page.wait_for_selector("#results .hit.relevant")
        second_id = page.locator("#results .hit").nth(1).get_attribute("data-id")
        page.locator("#results .hit").nth(1).locator(".mark-irrelevant").click()
        page.wait_for_selector("#results .hit.irrelevant")
        # Answer the agent's question: the results refine.
        page.fill("#message", "two")
        page.click("#send")
        page.wait_for_function("document.querySelector('#question').textContent.includes('colour')")
        ids = [page.locator("#results .hit").nth(i).get_attribute("data-id") for i in range(12)]
        assert second_id not in ids  # marked "not it": not shown again
        log = page.locator("#log").inner_text()
        assert "a red circle" in log and "two" in log
        page.screenshot(path=str(tmp_path / "page.png"))
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
