"""Listwise reranking with SmolLM2-135M-Instruct on the shapes test split: position bias.

Usage::

    python experiments/eval_listwise_smollm2.py --gguf-dir runs/assets/smollm2 \
        --queries 100 --out runs/listwise-smollm2.json

For each of the first ``--queries`` test captions, shapes-clip's top ``--window``
candidates are shown to SmolLM2 as lettered options, each described by a reference
caption of the candidate image that differs from the query text (a text-only LLM needs a
description; reference captions make this an upper bound of what a captioner would give).
Reported: R@1 among those candidates for the dual encoder, for the LLM shown each group
once in first-stage order, and for the LLM with cyclic permutation averaging; and the
share of top picks per display position (the position bias).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.rerankers.listwise import HFLetterScorer, ListwiseReranker
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.types import Item, Query
from vistrieve.utils.io import atomic_write_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf-dir", default="runs/assets/smollm2")
    p.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--out", default="runs/listwise-smollm2.json")
    args = p.parse_args()
    corpus = ShapesWorld(seed=0).corpus("test")
    dense = DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus)
    texts, owners = corpus.caption_pairs()
    texts, owners = texts[: args.queries], owners[: args.queries]
    queries = [Query(text=t) for t in texts]
    cands = dense.retrieve(queries, k=args.window)
    t0 = time.perf_counter()
    scorer = HFLetterScorer.from_pretrained(args.gguf_dir, gguf_file=args.gguf_file)
    load_s = time.perf_counter() - t0

    def describe_for(query_text: str):  # type: ignore[no-untyped-def]
        def describe(item: Item) -> str:
            return next((c for c in item.captions if c != query_text), item.captions[0])

        return describe

    results: dict[str, object] = {"load_seconds": load_s}
    top1 = {"dual encoder": [c[0].id == o for c, o in zip(cands, owners, strict=True)]}
    for label, n_perm in (("listwise, one order", 1), ("listwise, permutation-averaged", None)):
        hits, picks = [], np.zeros(args.window, dtype=np.int64)
        t1 = time.perf_counter()
        for q, c, o in zip(queries, cands, owners, strict=True):
            rr = ListwiseReranker(
                scorer,
                corpus,
                describe=describe_for(q.text or ""),
                window=args.window,
                n_permutations=n_perm,
            )
            hits.append(rr.rerank([q], [c])[0][0].id == o)
            picks += rr.picks
        top1[label] = hits
        results[label] = {
            "seconds": time.perf_counter() - t1,
            "position_share": (picks / picks.sum()).round(3).tolist(),
        }
    results["R@1_among_candidates"] = {k: float(np.mean(v)) for k, v in top1.items()}
    results["oracle_positive_in_candidates"] = float(
        np.mean([any(h.id == o for h in c) for c, o in zip(cands, owners, strict=True)])
    )
    results["llm_cost"] = scorer.cost()
    results["command"] = " ".join(["python", *sys.argv])
    atomic_write_json(args.out, results)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
