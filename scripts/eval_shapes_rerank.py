"""Dual encoder alone vs + Q-Former rerank on the shapes test split (text -> image).

Usage::

    python scripts/eval_shapes_rerank.py --qformer runs/qformer --k 16 --split test \
        --out runs/eval-rerank
    python scripts/eval_shapes_rerank.py --qformer runs/qformer --k 16 --split heldout \
        --out runs/eval-rerank-heldout
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.runner import RetrievalEvaluator, evaluate
from vistrieve.pipeline import RerankStage, RetrievalPipeline
from vistrieve.rerankers.qformer import load_qformer_reranker
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.training.finetune_cli import shapes_heldout_corpora


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qformer", default="runs/qformer")
    p.add_argument("--k", type=int, default=16, help="candidates reranked")
    p.add_argument("--split", default="test", help="test, val, or heldout (combinations)")
    p.add_argument("--out", default="runs/eval-rerank")
    p.add_argument(
        "--ablate-lm",
        action="store_true",
        help="also rank without the caption likelihood (lm_weight 0) of a captioning model",
    )
    args = p.parse_args()
    if args.split == "heldout":
        # The held-out-combination split of `vistrieve finetune --data shapes-heldout`.
        corpus = shapes_heldout_corpora()[2]
    else:
        corpus = ShapesWorld(seed=0).corpus(args.split)
    dense = DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus)
    rerank = load_qformer_reranker(args.qformer, corpus)
    methods = {
        "dual encoder": dense,
        f"+ qformer (k={args.k})": RetrievalPipeline(
            dense, [RerankStage(rerank, k=args.k)], k_retrieve=args.k
        ),
        f"+ qformer, weighted 0.5 (k={args.k})": RetrievalPipeline(
            dense,
            [RerankStage(rerank, k=args.k, name="qformer-w", fusion="weighted")],
            k_retrieve=args.k,
        ),
    }
    if args.ablate_lm and rerank.model.config.lm_weight:
        itm_only = load_qformer_reranker(args.qformer, corpus, name="qformer-itm")
        itm_only.model.config = dataclasses.replace(itm_only.model.config, lm_weight=0.0)
        methods[f"+ qformer, ITM + dense only (lm_weight 0, k={args.k})"] = RetrievalPipeline(
            dense, [RerankStage(itm_only, k=args.k)], k_retrieve=args.k
        )
    # Image -> text is not reranked; evaluate text -> image only for every method.
    evaluator = RetrievalEvaluator(corpus, name=f"shapes-{args.split}")
    report = evaluate(
        {n: _TextOnly(m) for n, m in methods.items()},
        [evaluator],
        title=f"shapes {args.split}: rerank",
    )
    report.save(args.out)
    sys.stdout.write(report.to_markdown())
    return 0


class _TextOnly:
    """Hides ``target`` so that the evaluator measures text -> image only."""

    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self.inner = inner
        self.name = getattr(inner, "name", "retriever")

    def retrieve(self, queries, k=10):  # type: ignore[no-untyped-def]
        return self.inner.retrieve(queries, k=k)

    def stages(self):  # type: ignore[no-untyped-def]
        inner = getattr(self.inner, "stages", None)
        return inner() if callable(inner) else [(self.name, self.inner)]


if __name__ == "__main__":
    raise SystemExit(main())
