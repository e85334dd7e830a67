"""ChatIR on the shapes world: cumulative Hits@10 per dialog round 0..N for several
questioners, with the simulated answerer that reads the scene graph.

Usage::

    python experiments/chatir_shapes.py --smollm2 runs/assets/smollm2 --out runs/chatir-shapes

Questioners: the world's scripted dialogs (informative questions chosen from the scene,
an oracle questioner), a fixed list of generic questions (no LLM), and SmolLM2-135M-Instruct
zero-shot (greedy; a question it repeats or that cannot be parsed is replaced by the next
generic question and counted). The first stage is shapes-clip's exact dense retriever over
the split; the round-r query is the caption and the first r question/answer rounds joined.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.dialog import run_dialogs
from vistrieve.evals.metrics import cumulative_hits_at_k
from vistrieve.llm import CachedLLM, ReplayCache, load_smollm2
from vistrieve.query_rewriting.chat import FALLBACK_QUESTIONS, LLMQuestioner
from vistrieve.recipes.shapes.dialog import SceneAnswerer
from vistrieve.retrievers.dense import DenseRetriever


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", default="runs/assets/smollm2")
    p.add_argument("--cache", default="runs/cache/chatir")
    p.add_argument("--split", default="test")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--limit", type=int, help="first N dialogs only")
    p.add_argument("--out", default="runs/chatir-shapes")
    args = p.parse_args()
    world = ShapesWorld(seed=0)
    data = world.dialogs(args.split)
    examples = list(data.examples)[: args.limit] if args.limit else list(data.examples)
    dense = DenseRetriever.build(create_encoder("shapes-clip", progress=False), data.corpus)
    captions = [e.caption for e in examples]
    targets = [e.target_id for e in examples]
    answerers = [SceneAnswerer(world, e.target_id) for e in examples]

    def scripted_questioner_for(i: int):  # type: ignore[no-untyped-def]
        def ask(caption: str, turns):  # type: ignore[no-untyped-def]
            e = examples[i]
            return e.turns[len(turns)].question if len(turns) < len(e.turns) else "anything else?"

        return ask

    rows = {}
    # Scripted (oracle) questions: per-dialog questioners, so run the rounds directly.
    t0 = time.perf_counter()
    ranks = np.zeros((len(examples), args.rounds + 1), dtype=np.int64)
    for i in range(len(examples)):
        r, _ = run_dialogs(
            dense,
            [captions[i]],
            [targets[i]],
            [answerers[i]],
            scripted_questioner_for(i),
            rounds=args.rounds,
            progress=False,
        )
        ranks[i] = r[0]
    rows["scripted questions from the scene (oracle)"] = (ranks, time.perf_counter() - t0, {})

    def generic(caption, turns):  # type: ignore[no-untyped-def]
        return FALLBACK_QUESTIONS[len(turns) % len(FALLBACK_QUESTIONS)]

    t0 = time.perf_counter()
    ranks, _ = run_dialogs(dense, captions, targets, answerers, generic, rounds=args.rounds)
    rows["generic question list (no LLM)"] = (ranks, time.perf_counter() - t0, {})

    llm = CachedLLM(load_smollm2(args.smollm2, max_new_tokens=24), ReplayCache(args.cache))
    questioner = LLMQuestioner(llm)
    t0 = time.perf_counter()
    ranks, dialogs = run_dialogs(
        dense, captions, targets, answerers, questioner, rounds=args.rounds
    )
    cost = questioner.cost()
    rows["SmolLM2-135M questioner, zero-shot"] = (ranks, time.perf_counter() - t0, cost)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = " | ".join(f"round {r}" for r in range(args.rounds + 1))
    lines = [
        f"shapes {args.split}: {len(examples)} dialogs, {len(data.corpus)} images; Hits@10 "
        "(cumulative, %) per round",
        "",
        f"| questioner | {head} | s | LLM calls | fallbacks |",
        "|---|" + "---:|" * (args.rounds + 4),
    ]
    record = {}
    for name, (ranks, secs, cost) in rows.items():
        hits = cumulative_hits_at_k(ranks, k=10)
        record[name] = {"hits@10": hits.tolist(), "seconds": secs, "cost": cost}
        cells = " | ".join(f"{100 * h:.1f}" for h in hits)
        lines.append(
            f"| {name} | {cells} | {secs:.0f} | {int(cost.get('llm_calls', 0))} | "
            f"{int(cost.get('question_fallbacks', 0))} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    (out / "dialogs.json").write_text(
        json.dumps([[[t.question, t.answer] for t in d] for d in dialogs[:20]], indent=2),
        encoding="utf-8",
    )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
