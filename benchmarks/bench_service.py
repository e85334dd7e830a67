"""Bounded load test of the HTTP service on loopback.

``--clients`` concurrent clients (threads with their own httpx client) send requests for
``--seconds`` seconds against a uvicorn server in the same process group (a child process,
so the clients do not share its interpreter lock), over the shapes test split with the
embedded model. The mix per client: text search (60%), a chat session message (30%),
a thumbnail (10%); every 20th request is malformed (empty text) and must get a 4xx.
Prints requests/s, p50/p95/p99 latency per kind, and the count of 5xx answers (must be 0);
ends with one JSON line.

Usage::

    python benchmarks/bench_service.py --clients 16 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import socket
import sys
import threading
import time
from collections import defaultdict

import numpy as np


def _serve(port: int, n_test: int) -> None:
    import uvicorn

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import create_app

    corpus = ShapesWorld(seed=0, n_test=n_test).corpus("test")
    app = create_app(DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--n-test", type=int, default=1000, help="shapes test split size")
    args = p.parse_args()
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = mp.get_context("spawn").Process(target=_serve, args=(port, args.n_test))
    proc.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise SystemExit("server did not start")
    first = httpx.post(base + "/search/text", json={"text": "a red circle", "k": 50})
    ids = [h["id"] for h in first.json()["hits"]]
    words = ["red", "blue", "green", "circle", "square", "triangle", "star", "small", "large"]
    lat: dict[str, list[float]] = defaultdict(list)
    status: dict[int, int] = defaultdict(int)
    bad_not_4xx = 0
    lock = threading.Lock()
    stop = time.perf_counter() + args.seconds

    def client(seed: int) -> None:
        nonlocal bad_not_4xx
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=30) as c:
            sid = c.post("/sessions").json()["session_id"]
            n = 0
            while time.perf_counter() < stop:
                n += 1
                r = rng.random()
                t0 = time.perf_counter()
                if n % 20 == 0:
                    kind, resp = "malformed", c.post("/search/text", json={"text": ""})
                elif r < 0.6:
                    text = " ".join(rng.choice(words) for _ in range(3))
                    kind, resp = "text", c.post("/search/text", json={"text": text, "k": 10})
                elif r < 0.9:
                    kind = "chat"
                    resp = c.post(f"/sessions/{sid}/messages", json={"text": rng.choice(words)})
                else:
                    kind, resp = "thumbnail", c.get(f"/thumbnails/{rng.choice(ids)}")
                dt = time.perf_counter() - t0
                with lock:
                    lat[kind].append(dt)
                    status[resp.status_code] += 1
                    if kind == "malformed" and not 400 <= resp.status_code < 500:
                        bad_not_4xx += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    proc.terminate()
    total = sum(len(v) for v in lat.values())
    five = sum(v for k, v in status.items() if k >= 500)
    out = {"clients": args.clients, "seconds": wall, "requests": total,
           "requests_per_s": total / wall, "status": dict(status), "5xx": five,
           "malformed_not_4xx": bad_not_4xx, "latency_ms": {}}  # fmt: skip
    print(f"{args.clients} clients, {wall:.1f} s, {total} requests, {total / wall:.1f} req/s")
    for kind, v in sorted(lat.items()):
        ms = np.array(v) * 1000
        q = {f"p{p}": float(np.percentile(ms, p)) for p in (50, 95, 99)}
        out["latency_ms"][kind] = {"n": len(v), **q}
        print(f"  {kind:<10} n={len(v):<6} p50 {q['p50']:.1f} ms  p95 {q['p95']:.1f} ms  "
              f"p99 {q['p99']:.1f} ms")  # fmt: skip
    print(f"  status codes {dict(status)}; 5xx: {five}; malformed not answered 4xx: {bad_not_4xx}")
    print(json.dumps(out))
    return 0 if five == 0 and bad_not_4xx == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
