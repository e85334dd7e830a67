"""Soak test of the HTTP service: concurrent clients mixing search, add, delete and chat, a
hard server kill and restart, then checks that nothing acknowledged was lost.

The server runs as its own process (``vistrieve serve``) over a saved shapes index with its
SQLite state beside it. ``--clients`` threads send requests for ``--seconds`` seconds: text
searches (40%), chat messages (30%), adds of a new uploaded image (15%), deletes of an item
added earlier (10%) and thumbnails (5%). The server is then killed with SIGKILL (no
graceful shutdown) and started again on the same directory. Checks:

* no 5xx answer during the run;
* every add acknowledged with 201 is in the index after the restart (and its thumbnail
  loads), every acknowledged delete is absent;
* the server's resident memory grew by less than ``--max-growth-mb`` between the first
  and the last 10% of the run (bounded sessions and caches).

Prints a table row and one JSON line; exits 1 when a check fails.

Usage::

    python benchmarks/bench_soak.py --clients 20 --seconds 60
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(index: Path, port: int) -> subprocess.Popen[bytes]:
    import httpx

    cmd = [sys.executable, "-m", "vistrieve.cli", "serve", str(index), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    raise SystemExit("server did not start")


def _png(rng: random.Random) -> bytes:
    from PIL import Image

    im = Image.new("RGB", (48, 48), tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--n-test", type=int, default=500, help="images in the served index")
    p.add_argument("--max-growth-mb", type=float, default=150.0)
    args = p.parse_args()
    import httpx

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers import DenseRetriever

    work = Path(tempfile.mkdtemp(prefix="vistrieve-soak-"))
    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=args.n_test, n_composed=0,
                         n_dialogs=0).corpus("test")  # fmt: skip
    DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus,
                         directory=work / "index")  # fmt: skip
    port = _free_port()
    proc = _start(work / "index", port)
    base = f"http://127.0.0.1:{port}"
    words = ["red", "blue", "green", "circle", "square", "triangle", "star", "small", "large"]
    status: dict[int, int] = defaultdict(int)
    latency: dict[str, list[float]] = defaultdict(list)
    added: set[str] = set()
    deleted: set[str] = set()
    lock = threading.Lock()
    rss: list[tuple[float, float]] = []
    start = time.perf_counter()
    stop = start + args.seconds

    def sample_memory() -> None:
        while time.perf_counter() < stop:
            rss.append((time.perf_counter() - start, _rss_mb(proc.pid)))
            time.sleep(0.5)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[str] = []
        with httpx.Client(base_url=base, timeout=60) as c:
            sid = c.post("/sessions").json()["session_id"]
            n = 0
            while time.perf_counter() < stop:
                n += 1
                r = rng.random()
                t0 = time.perf_counter()
                if r < 0.4:
                    kind = "search"
                    text = " ".join(rng.choice(words) for _ in range(3))
                    resp = c.post("/search/text", json={"text": text, "k": 10})
                elif r < 0.7:
                    kind = "chat"
                    resp = c.post(f"/sessions/{sid}/messages", json={"text": rng.choice(words)})
                    if resp.status_code == 400:  # the session's description is full
                        sid = c.post("/sessions").json()["session_id"]
                elif r < 0.85:
                    kind, item_id = "add", f"soak/{seed}/{n}"
                    resp = c.post("/index/items", data={"id": item_id, "caption": "a soak test"},
                                  files={"image": ("x.png", _png(rng))})  # fmt: skip
                    if resp.status_code == 201:
                        mine.append(item_id)
                        with lock:
                            added.add(item_id)
                elif r < 0.95 and mine:
                    kind, item_id = "delete", mine.pop(rng.randrange(len(mine)))
                    resp = c.delete(f"/index/items/{item_id}")
                    if resp.status_code == 200:
                        with lock:
                            deleted.add(item_id)
                            added.discard(item_id)
                else:
                    kind = "thumbnail"
                    resp = c.get(f"/thumbnails/{rng.choice(corpus.ids)}")
                with lock:
                    status[resp.status_code] += 1
                    latency[kind].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    sampler = threading.Thread(target=sample_memory)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sampler.join()
    wall = time.perf_counter() - start
    os.kill(proc.pid, signal.SIGKILL)  # a crash, not a shutdown
    proc.wait()
    t_restart = time.perf_counter()
    proc = _start(work / "index", port)
    restart_s = time.perf_counter() - t_restart
    with httpx.Client(base_url=base, timeout=60) as c:
        missing = [i for i in sorted(added) if c.get(f"/thumbnails/{i}").status_code != 200]
        resurrected = [i for i in sorted(deleted) if c.get(f"/thumbnails/{i}").status_code == 200]
        items = c.get("/health").json()["items"]
    proc.terminate()
    proc.wait()
    tenth = max(1, len(rss) // 10)
    early = float(np.mean([m for _, m in rss[:tenth]]))
    late = float(np.mean([m for _, m in rss[-tenth:]]))
    five = sum(v for k, v in status.items() if k >= 500)
    total = sum(status.values())
    ok = five == 0 and not missing and not resurrected and late - early < args.max_growth_mb
    out = {
        "clients": args.clients,
        "seconds": round(wall, 1),
        "requests": total,
        "requests_per_s": round(total / wall, 1),
        "status": dict(status),
        "5xx": five,
        "acknowledged_adds": len(added),
        "acknowledged_deletes": len(deleted),
        "adds_missing_after_restart": len(missing),
        "deletes_back_after_restart": len(resurrected),
        "items_after_restart": items,
        "restart_seconds": round(restart_s, 1),
        "rss_mb_first_10pct": round(early, 1),
        "rss_mb_last_10pct": round(late, 1),
        "latency_ms_p50_p95": {
            k: [round(float(np.percentile(v, q)) * 1000, 1) for q in (50, 95)]
            for k, v in sorted(latency.items())
        },
        "pass": ok,
    }
    print(
        f"| {args.clients} | {wall:.0f} s | {total:,} | {total / wall:.1f} | {five} | "
        f"{len(added)} / {len(missing)} | {len(deleted)} / {len(resurrected)} | "
        f"{early:.0f} -> {late:.0f} MB | {restart_s:.1f} s |"
    )
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
