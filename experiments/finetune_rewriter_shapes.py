"""LoRA on SmolLM2-135M-Instruct for CIReVL recomposition on the shapes world: composed
retrieval R@1/5/10 zero-shot vs the adapter.

Usage::

    vistrieve fetch smollm2 runs/assets/smollm2
    python experiments/finetune_rewriter_shapes.py --smollm2 runs/assets/smollm2 \
        --out runs/finetune-rewriter --steps 300 --test-limit 200

Training pairs come from the train split's composed triplets (reference captioned by the
embedded shapes captioner, as at inference; modification; the target's caption). The best
step is chosen on composed R@1 over ``--val-limit`` validation triplets; the test split is
evaluated once for the zero-shot model and once for the best adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vistrieve.adapters import load_finetuned
from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.runner import ComposedEvaluator, evaluate
from vistrieve.llm import HFChatLLM, ReplayCache, load_smollm2
from vistrieve.pipeline import RetrievalPipeline
from vistrieve.query_rewriting.cirevl import CachedCaptioner, CIReVLRewriter
from vistrieve.recipes.shapes.captioner import load_shapes_captioner
from vistrieve.recipes.shapes.data import shapes_rewrite_pairs
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.training.finetune import FinetuneConfig, finetune
from vistrieve.training.tasks import RewriterFinetuneTask


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", default="runs/assets/smollm2")
    p.add_argument("--out", default="runs/finetune-rewriter")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--n-composed", type=int, default=2000, help="train triplets generated")
    p.add_argument("--val-limit", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=500)
    args = p.parse_args()
    out = Path(args.out)
    encoder = create_encoder("shapes-clip", progress=False)
    cache = ReplayCache(out / "cache" / "captions")
    captioner = CachedCaptioner(load_shapes_captioner(encoder), cache)
    pairs = shapes_rewrite_pairs(
        ShapesWorld(seed=0, n_composed=args.n_composed), "train", captioner=captioner
    )
    world = ShapesWorld(seed=0)

    def composed(split: str, limit: int):  # type: ignore[no-untyped-def]
        data = world.composed(split)
        data = type(data)(data.corpus, data.examples[:limit], data.name)
        return data, DenseRetriever.build(encoder, data.corpus)

    val, val_dense = composed("val", args.val_limit)

    def evaluate_fn(llm: HFChatLLM) -> dict[str, float]:
        rewriter = CIReVLRewriter(captioner, llm)
        report = evaluate(
            {"cirevl": RetrievalPipeline(val_dense, rewriter=rewriter)},
            [ComposedEvaluator(val, name="val")],
        )
        m = report.methods["cirevl"].metrics
        return {k: v for k, v in m.items() if "_R@" in k} | {
            "val_parse_failures": rewriter.cost()["parse_failures"]
        }

    base = load_smollm2(args.smollm2)
    task = RewriterFinetuneTask(
        base.model,
        base.tokenizer,
        pairs,
        evaluate_fn=evaluate_fn,
        metric="val_R@1",
        name=base.name,
    )
    cfg = FinetuneConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, r=args.r, alpha=2 * args.r,
        eval_every=args.eval_every, warmup_steps=20,
    )  # fmt: skip
    command = "python experiments/finetune_rewriter_shapes.py " + " ".join(sys.argv[1:])
    result = finetune(task, cfg, out, command=command)

    # Test split: zero-shot vs the best adapter, once each.
    test, test_dense = composed("test", args.test_limit)
    methods = {}
    t0 = time.perf_counter()
    zero = load_smollm2(args.smollm2, max_new_tokens=40)
    methods["CIReVL, SmolLM2 zero-shot"] = RetrievalPipeline(
        test_dense, rewriter=CIReVLRewriter(captioner, zero)
    )
    tuned_lm = load_finetuned(load_smollm2(args.smollm2).model, out / "adapter", stage="rewriter")
    tuned = HFChatLLM(tuned_lm, zero.tokenizer, name=f"{zero.name}+lora", max_new_tokens=40)
    methods["CIReVL, SmolLM2 + LoRA"] = RetrievalPipeline(
        test_dense, rewriter=CIReVLRewriter(captioner, tuned)
    )
    report = evaluate(
        methods,
        [ComposedEvaluator(test, name="shapes-test")],
        title="CIReVL with SmolLM2-135M: zero-shot vs LoRA (shapes test)",
        info={"examples": len(test.examples), "images": len(test.corpus)},
    )
    report.save(out / "test-eval")
    summary = {
        k: v
        for k, v in result.items()
        if k
        in (
            "frozen",
            "best",
            "best_step",
            "trainable_parameters",
            "total_parameters",
            "seconds",
            "data",
            "command",
        )  # fmt: skip
    }
    summary["test"] = {name: r.metrics for name, r in report.methods.items()}
    summary["test_seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    sys.stdout.write(report.to_markdown() + "\n" + json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
