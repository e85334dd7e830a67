"""Screenshot of the chat image-search page (docs/images/chat.png) in headless Chromium.

Usage::

    python experiments/screenshot.py --out docs/images/chat.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images/chat.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import create_app

    corpus = ShapesWorld(seed=0).corpus("test")
    app = create_app(DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 720})
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#message", "a red circle and a blue square")
        page.click("#send")
        page.wait_for_selector("#results .hit")
        page.locator("#results .hit").nth(0).locator(".mark-relevant").click()
        page.fill("#message", "two")
        page.click("#send")
        page.wait_for_function("document.querySelector('#question').textContent.includes('colour')")
        page.wait_for_function(
            "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)"
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out)
        browser.close()
    server.should_exit = True
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
