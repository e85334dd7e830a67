"""Latency of one chat-agent turn (rank with every round + answers, ask, reformulate) at
10,000 images, against one plain search of the same round's query.

The gallery: ``--n`` shapes-world scenes (train split of a world with ``n_train = n``),
each item carrying its five captions; an item's "image" embedding is shapes-clip's text
embedding of its first caption (no pixels are rendered or encoded: the benchmark times the
turn, not indexing). The agent is the default one the service uses: caption-word
attributes read from the items' captions, the LLM-free candidate questioner, rule-based
reformulation, every round's scores accumulated with answer consistency, a pool of 200
candidates per round's query. ``--dialogs`` dialogs of ``--rounds`` rounds are played
against the scene-graph user; every turn (``DialogAgent.step``) is timed twice, with the
agent's query cache (earlier rounds' searches reused, the evaluation setting) and without
it (every round's query searched again, the service setting), next to the baseline: one
``retrieve(k=10)`` of the turn's query.

Usage::

    python benchmarks/bench_chat_turn.py --n 10000 --dialogs 40 --rounds 5

Prints a markdown table (p50 / p95 / max in ms) and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.indexes.exact import ExactIndex
from vistrieve.query_rewriting.dialog_agent import DialogAgent
from vistrieve.recipes.shapes.dialog import SceneUser
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.types import Corpus, DialogTurn, Item, Query


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1000
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "n": len(xs)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dialogs", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pool", type=int, default=200)
    args = p.parse_args()

    t0 = time.perf_counter()
    world = ShapesWorld(n_train=args.n, n_dialogs=args.dialogs, swap_fraction=0.0)
    scenes_corpus = world.corpus("train")
    items = [Item(i, captions=it.captions) for i, it in scenes_corpus.items()]
    corpus = Corpus(items)
    encoder = create_encoder("shapes-clip", progress=False)
    emb = encoder.encode_text([it.captions[0] for it in items])
    index = ExactIndex(emb.shape[1])
    index.add(emb, [it.id for it in items])
    retriever = DenseRetriever(encoder, index, corpus)
    setup_s = time.perf_counter() - t0
    user = SceneUser(world)
    dialogs = list(world.dialogs("train").examples)[: args.dialogs]

    cached = DialogAgent(retriever, pool=args.pool)
    fresh = DialogAgent(retriever, pool=args.pool, cache_size=0)
    retriever.retrieve([Query(text="warm up")], k=10)
    t_cached, t_fresh, t_plain = [], [], []
    asked = answered = 0
    for ex in dialogs:
        turns: list[DialogTurn] = []
        for _ in range(args.rounds + 1):
            t = time.perf_counter()
            reply = cached.step(ex.caption, turns)
            t_cached.append(time.perf_counter() - t)
            t = time.perf_counter()
            fresh.step(ex.caption, turns)
            t_fresh.append(time.perf_counter() - t)
            t = time.perf_counter()
            retriever.retrieve([Query(text=reply.query)], k=10)
            t_plain.append(time.perf_counter() - t)
            if reply.question is None:
                break
            asked += 1
            answer = user.answer(ex.target_id, reply.question)
            answered += answer != "I don't know"
            turns.append(DialogTurn(reply.question, answer))
    rows = {
        "agent turn, query cache (evaluation)": _ms(t_cached),
        "agent turn, no cache (service)": _ms(t_fresh),
        "baseline: one retrieve(k=10) of the same query": _ms(t_plain),
    }
    lines = [
        f"{args.n} images, {len(dialogs)} dialogs x {args.rounds} rounds, pool {args.pool}, "
        f"torch threads {torch.get_num_threads()}, cores {len(os.sched_getaffinity(0))}, "
        f"setup {setup_s:.0f} s; {asked} questions, {answered} answered yes/no",
        "",
        "| what | turns | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} |")
    print("\n".join(lines))
    print(json.dumps({"n": args.n, "platform": platform.platform(), **rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
