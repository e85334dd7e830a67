"""Dialog retrieval on the shapes world with the dialog-summary rewriter.

Usage::

    python experiments/dialog_summary_shapes.py --smollm2 runs/assets/smollm2 --limit 100 \
        --out runs/dialog-summary-shapes

The world's scripted dialogs (caption + question/answer rounds about the target), through
the evaluation runner's ``DialogEvaluator`` (cumulative Hits@10 per round): the dual encoder
on the concatenated dialog (ChatIR), and the same first stage after SmolLM2-135M-Instruct
(zero-shot, greedy) summarises each round's dialog into one description.
"""

from __future__ import annotations

import argparse
import sys

from vistrieve.data.shapes import ShapesWorld
from vistrieve.data.tasks import DialogDataset
from vistrieve.encoders import create_encoder
from vistrieve.evals.runner import DialogEvaluator, evaluate
from vistrieve.llm import CachedLLM, ReplayCache, load_smollm2
from vistrieve.pipeline import RetrievalPipeline
from vistrieve.query_rewriting.chat import DialogSummaryRewriter
from vistrieve.retrievers.dense import DenseRetriever


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", default="runs/assets/smollm2")
    p.add_argument("--cache", default="runs/cache/dialog-summary")
    p.add_argument("--limit", type=int, help="first N dialogs only")
    p.add_argument("--out", default="runs/dialog-summary-shapes")
    args = p.parse_args()
    data = ShapesWorld(seed=0).dialogs("test")
    if args.limit:
        data = DialogDataset(data.corpus, list(data.examples)[: args.limit], data.name)
    dense = DenseRetriever.build(create_encoder("shapes-clip", progress=False), data.corpus)
    llm = CachedLLM(load_smollm2(args.smollm2, max_new_tokens=40), ReplayCache(args.cache))
    methods = {
        "dual encoder, concatenated dialog": dense,
        "dialog summary (SmolLM2-135M zero-shot) -> dual encoder": RetrievalPipeline(
            dense, rewriter=DialogSummaryRewriter(llm)
        ),
    }
    report = evaluate(methods, [DialogEvaluator(data, name="shapes-test")],
                      title="dialog retrieval, shapes test")  # fmt: skip
    report.save(args.out)
    sys.stdout.write(report.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
