"""The HTTP service at scale: first stage alone against first stage + Q-Former rerank.

A server process (``uvicorn`` on loopback, its own interpreter) serves the test split of a
shapes world with ``n_test = --n`` (rendered in memory; the split holds more images than
``n_test``, since the world adds the targets of its composed and dialog tasks: 117,487 at
100,000; the served count, read from ``/health``, is printed), an exact dense index of the
embedded shapes-clip, in two configurations, one after the other:

* ``first``: the dense retriever alone;
* ``rerank``: a :class:`~vistrieve.pipeline.RetrievalPipeline` whose first stage's top
  ``--k-rerank`` (32) is reranked by the Q-Former that ships in the package (image tokens
  precomputed with ``warm()``, as a deployment would).

For each, ``POST /search/text`` (k = 10) is measured two ways: latency, one client sending
``--queries`` requests one after another (p50 / p95 over the requests, HTTP included); and
throughput, ``--clients`` concurrent clients (threads, each with its own connection) for
``--seconds`` seconds (requests/s, p50 / p95 under load). Query texts are captions of the
world's images drawn with a fixed seed, the same for both configurations. Ratios
(rerank / first) are the headline. Any non-200 answer fails the run.

Usage::

    python benchmarks/bench_service_pipeline.py --n 100000 --clients 8 --seconds 30

Prints a markdown table and ends with one JSON line.
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

import numpy as np


def _serve(port: int, n: int, mode: str, k_rerank: int, seed: int) -> None:
    import uvicorn

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.pipeline import RerankStage, RetrievalPipeline
    from vistrieve.rerankers.qformer import load_qformer_reranker
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.service.app import ServiceConfig, create_app

    t0 = time.perf_counter()
    corpus = ShapesWorld(seed=seed, n_train=0, n_val=0, n_test=n).corpus("test")
    dense = DenseRetriever.build(
        create_encoder("shapes-clip", progress=False), corpus, index_captions=False
    )
    target: object = dense
    if mode == "rerank":
        reranker = load_qformer_reranker("embedded", corpus)
        reranker.warm()
        target = RetrievalPipeline(dense, [RerankStage(reranker, k=k_rerank)], k_retrieve=k_rerank)
    print(f"[{mode}] server ready after {time.perf_counter() - t0:.0f} s", flush=True)
    app = create_app(target, config=ServiceConfig(max_sessions=10))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _queries(n: int, count: int, seed: int) -> list[str]:
    from vistrieve.data.shapes import ShapesWorld

    # Captions of the first images only: rendering the whole world again is not needed.
    corpus = ShapesWorld(seed=seed, n_train=0, n_val=0, n_test=min(n, 2000)).corpus("test")
    texts, _ = corpus.caption_pairs()
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(count)]


def _measure(args: argparse.Namespace, mode: str, texts: list[str]) -> dict[str, object]:
    import httpx

    port = _free_port()
    proc = mp.get_context("spawn").Process(
        target=_serve, args=(port, args.n, mode, args.k_rerank, args.seed)
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.perf_counter() + args.startup_timeout
    items = 0
    try:
        while True:
            try:
                health = httpx.get(base + "/health", timeout=1)
                if health.status_code == 200:
                    items = int(health.json()["items"])
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline or not proc.is_alive():
                raise SystemExit(f"[{mode}] server did not start")
            time.sleep(0.5)
        bad: list[int] = []
        with httpx.Client(base_url=base, timeout=120) as c:
            for text in texts[:20]:  # warm-up
                c.post("/search/text", json={"text": text, "k": 10})
            single = []
            for text in texts[: args.queries]:
                t = time.perf_counter()
                r = c.post("/search/text", json={"text": text, "k": 10})
                single.append(time.perf_counter() - t)
                if r.status_code != 200:
                    bad.append(r.status_code)
        loaded: list[float] = []
        lock = threading.Lock()
        stop = time.perf_counter() + args.seconds

        def client(i: int) -> None:
            rng = random.Random(i)
            with httpx.Client(base_url=base, timeout=120) as c:
                while time.perf_counter() < stop:
                    text = rng.choice(texts)
                    t = time.perf_counter()
                    r = c.post("/search/text", json={"text": text, "k": 10})
                    with lock:
                        loaded.append(time.perf_counter() - t)
                        if r.status_code != 200:
                            bad.append(r.status_code)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.join(10)
    ms = np.array(single) * 1000
    lms = np.array(loaded) * 1000
    return {
        "mode": mode,
        "items": items,
        "single_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "single_p95_ms": round(float(np.percentile(ms, 95)), 1),
        "loaded_requests": len(loaded),
        "requests_per_s": round(len(loaded) / wall, 1),
        "loaded_p50_ms": round(float(np.percentile(lms, 50)), 1),
        "loaded_p95_ms": round(float(np.percentile(lms, 95)), 1),
        "non_200": len(bad),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="images served")
    p.add_argument("--k-rerank", type=int, default=32, help="first-stage hits reranked")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--queries", type=int, default=200, help="one-at-a-time requests timed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=3600.0)
    args = p.parse_args()
    if args.n < 1 or args.k_rerank < 1 or args.clients < 1 or args.queries < 1:
        p.error("--n, --k-rerank, --clients and --queries must be positive")
    texts = _queries(args.n, max(args.queries, 500), args.seed)
    rows = [_measure(args, mode, texts) for mode in ("first", "rerank")]
    first, rerank = rows
    print(
        f"\n{int(first['items']):,} images, k = 10, Q-Former reranks the top {args.k_rerank}; "
        f"{args.clients} clients for {args.seconds:.0f} s\n"
    )
    print("| service | one client p50 / p95 | req/s, "
          f"{args.clients} clients | p50 / p95 under load | non-200 |")  # fmt: skip
    print("|---|---|---:|---|---:|")
    names = {"first": "first stage (exact dense)", "rerank": f"+ Q-Former top {args.k_rerank}"}
    for r in rows:
        print(
            f"| {names[str(r['mode'])]} | {r['single_p50_ms']} / {r['single_p95_ms']} ms | "
            f"{r['requests_per_s']} | {r['loaded_p50_ms']} / {r['loaded_p95_ms']} ms | "
            f"{r['non_200']} |"
        )
    ratio_p50 = float(rerank["single_p50_ms"]) / float(first["single_p50_ms"])  # type: ignore[arg-type]
    ratio_rps = float(rerank["requests_per_s"]) / float(first["requests_per_s"])  # type: ignore[arg-type]
    print(f"\nrerank / first: p50 latency {ratio_p50:.2f}x, requests/s {ratio_rps:.2f}x")
    out = {"n_test": args.n, "items": first["items"], "k_rerank": args.k_rerank,
           "clients": args.clients, "seconds": args.seconds, "rows": rows,
           "ratio_p50": round(ratio_p50, 2), "ratio_rps": round(ratio_rps, 2)}  # fmt: skip
    print(json.dumps(out))
    return 0 if all(r["non_200"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
