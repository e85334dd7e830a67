"""Composed retrieval on the shapes world: CIReVL recomposition vs image-only, text-only,
late-fusion and caption + modification baselines (text -> image with shapes-clip).

Usage::

    vistrieve fetch smollm2 runs/assets/smollm2
    python experiments/cirevl_shapes.py --smollm2 runs/assets/smollm2 --out runs/cirevl-shapes

The reference images are captioned by the shapes captioner (trained first when
``--captioner`` does not exist yet); the LLM is SmolLM2-135M-Instruct, zero-shot, greedy.
LLM answers and captions are cached under ``--cache`` so that a rerun replays them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _composed import CaptionPlusModification, DropModality

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.runner import ComposedEvaluator, evaluate
from vistrieve.llm import ReplayCache, load_smollm2
from vistrieve.pipeline import RetrievalPipeline
from vistrieve.query_rewriting.captioner import PrefixCaptioner
from vistrieve.query_rewriting.cirevl import CachedCaptioner, CIReVLRewriter
from vistrieve.recipes.shapes.captioner import train_shapes_captioner
from vistrieve.retrievers.dense import DenseRetriever


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", default="runs/assets/smollm2")
    p.add_argument("--captioner", default="runs/shapes-captioner")
    p.add_argument("--cache", default="runs/cache/cirevl")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="first N composed examples only")
    p.add_argument("--out", default="runs/cirevl-shapes")
    args = p.parse_args()
    encoder = create_encoder("shapes-clip", progress=False)
    if not (Path(args.captioner) / "grace_config.json").is_file():
        rec = train_shapes_captioner(args.captioner)
        sys.stderr.write(f"captioner: {rec}\n")
    captioner = CachedCaptioner(
        PrefixCaptioner.load(args.captioner, encoder, name="shapes-captioner"),
        ReplayCache(Path(args.cache) / "captions"),
    )
    data = ShapesWorld(seed=0).composed(args.split)
    if args.limit:
        data = type(data)(data.corpus, data.examples[: args.limit], data.name)
    dense = DenseRetriever.build(encoder, data.corpus)
    llm = load_smollm2(args.smollm2, max_new_tokens=40)
    methods = {
        "image only": DropModality(dense, "image"),
        "text only": DropModality(dense, "text"),
        "late fusion (image + text embeddings)": dense,
        "caption + modification (no LLM)": RetrievalPipeline(
            dense, rewriter=CaptionPlusModification(captioner)
        ),
        "CIReVL, SmolLM2-135M zero-shot": RetrievalPipeline(
            dense,
            rewriter=CIReVLRewriter(captioner, llm, cache=ReplayCache(Path(args.cache) / "llm")),
        ),
    }
    report = evaluate(
        methods,
        [ComposedEvaluator(data, name=f"shapes-{args.split}")],
        title=f"composed retrieval, shapes {args.split}",
        info={"examples": len(data.examples), "images": len(data.corpus)},
    )
    report.save(args.out)
    sys.stdout.write(report.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
