"""EIIRwQR-style feedback rounds on the shapes world with a simulated user.

Usage::

    python experiments/eiirwqr_shapes.py --smollm2 runs/assets/smollm2 --limit 100 \
        --out runs/eiirwqr-shapes

Queries: the vague first captions of the test split's dialogs ("something white"); the
target is the dialog's image. Each round shows the 5 best unseen hits; the simulated user
marks those sharing at least half of the target's colour-shape labels (Jaccard); the
relevant images are captioned by the embedded shapes captioner; the query is rewritten
and retrieval repeats (shapes-clip, exact). Rewriters: the first relevant caption as the
new query (no LLM), and SmolLM2-135M-Instruct zero-shot with the EIIRwQR prompt. Reported:
cumulative Hits@10 after rounds 0..3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.metrics import ABSENT_RANK, cumulative_hits_at_k, target_rank
from vistrieve.llm import CachedLLM, ReplayCache, load_smollm2
from vistrieve.query_rewriting.chat import FeedbackLoop, simulated_feedback
from vistrieve.query_rewriting.cirevl import CachedCaptioner
from vistrieve.recipes.shapes.captioner import load_shapes_captioner
from vistrieve.retrievers.dense import DenseRetriever


class FirstCaptionLoop(FeedbackLoop):
    """The feedback loop with the LLM replaced by "use the first relevant caption"."""

    def rewrite(self, query: str, captions: Sequence[str]) -> str:
        return captions[0] if captions else query


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", default="runs/assets/smollm2")
    p.add_argument("--cache", default="runs/cache/eiirwqr")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/eiirwqr-shapes")
    args = p.parse_args()
    world = ShapesWorld(seed=0)
    data = world.dialogs("test")
    examples = list(data.examples)[: args.limit]
    corpus = data.corpus
    encoder = create_encoder("shapes-clip", progress=False)
    dense = DenseRetriever.build(encoder, corpus)
    captioner = CachedCaptioner(
        load_shapes_captioner(encoder), ReplayCache(Path(args.cache) / "captions")
    )
    llm = CachedLLM(load_smollm2(args.smollm2, max_new_tokens=32), ReplayCache(args.cache))
    images = {i: it.image for i, it in corpus.items()}
    loops = {
        "first relevant caption (no LLM)": FirstCaptionLoop(
            dense, captioner, llm, rounds=args.rounds, show=5, k=10
        ),
        "SmolLM2-135M rewrite, zero-shot": FeedbackLoop(
            dense, captioner, llm, rounds=args.rounds, show=5, k=10
        ),
    }
    lines = [
        f"shapes test: {len(examples)} vague queries, {len(corpus)} images; cumulative Hits@10 (%)",
        "",
        "| rewriter | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " |",
        "|---|" + "---:|" * (args.rounds + 1),
    ]
    record = {}
    for name, loop in loops.items():
        ranks = np.full((len(examples), args.rounds + 1), ABSENT_RANK, dtype=np.int64)
        for n, e in enumerate(examples):
            labels = corpus[e.target_id].labels
            feedback = simulated_feedback(labels, lambda i: corpus[i].labels)
            log = loop.run(e.caption, feedback, images)
            for r, rnd in enumerate(log[: args.rounds + 1]):
                ranks[n, r] = target_rank(rnd.hits, e.target_id)
        hits = cumulative_hits_at_k(ranks, k=10)
        record[name] = {"hits@10": hits.tolist(), "cost": loop.cost()}
        lines.append(f"| {name} | " + " | ".join(f"{100 * h:.1f}" for h in hits) + " |")
        sys.stderr.write(f"{name}: {hits.tolist()} {loop.cost()}\n")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
