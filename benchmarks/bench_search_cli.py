"""``vistrieve search --queries`` against the Python API on the same queries.

Both run in a fresh process over the same saved index (shapes test split, embedded model):
the command reads a file of queries and writes JSON lines; the Python side calls
``load_retriever(...).retrieve(queries, k)`` on the same queries. Wall time includes the
interpreter start and model loading on both sides, so the ratio measures what the command
adds (parsing, batching, writing JSON). Rounds alternate between the two to share noise.

Usage::

    python benchmarks/bench_search_cli.py --queries 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY_API = """
import sys, time
from vistrieve.retrievers import load_retriever
from vistrieve.types import Query
index, path, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
queries = [Query(text=line.strip()) for line in open(path, encoding="utf-8") if line.strip()]
hits = load_retriever(index).retrieve(queries, k=k)
assert len(hits) == len(queries)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-k", type=int, default=10)
    args = p.parse_args()
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers import DenseRetriever

    work = Path(tempfile.mkdtemp(prefix="vistrieve-cli-bench-"))
    world = ShapesWorld(seed=0, n_train=0, n_val=0, n_composed=0, n_dialogs=0)
    corpus = world.corpus("test")
    DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus,
                         directory=work / "index")  # fmt: skip
    texts, _ = corpus.caption_pairs()
    lines = [texts[i % len(texts)] for i in range(args.queries)]
    qfile = work / "queries.txt"
    qfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli = [sys.executable, "-m", "vistrieve.cli", "search", str(work / "index"), "--queries",
           str(qfile), "--output", str(work / "hits.jsonl"), "-k", str(args.k)]  # fmt: skip
    api = [sys.executable, "-c", PY_API, str(work / "index"), str(qfile), str(args.k)]
    times: dict[str, list[float]] = {"cli": [], "api": []}
    for _ in range(args.rounds):
        for name, cmd in (("api", api), ("cli", cli)):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t0)
    rows = (work / "hits.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == args.queries and len(json.loads(rows[0])["hits"]) == args.k
    best = {name: min(v) for name, v in times.items()}
    ratio = best["api"] / best["cli"]
    print(f"{args.queries} queries, k = {args.k}, best of {args.rounds} rounds (wall, incl. load)")
    print(f"  Python API  {best['api']:.2f} s  {args.queries / best['api']:.0f} queries/s")
    print(f"  vistrieve search --queries  {best['cli']:.2f} s  {args.queries / best['cli']:.0f} "
          f"queries/s")  # fmt: skip
    print(f"  ratio (command / API throughput): {ratio:.2f}x (target >= 0.9x)")
    print(json.dumps({"queries": args.queries, "k": args.k, "seconds": times,
                      "ratio": round(ratio, 3)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
