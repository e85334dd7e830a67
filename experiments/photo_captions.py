"""Real photos: the retrieval captioner's caption quality, and composed retrieval on caption
edits (image-only, text-only, late fusion, caption + modification, CIReVL).

Usage::

    vistrieve train photo-captioner --data ../shared/data/flickr8k-1k --out runs/photo-captioner
    python experiments/photo_captions.py --data ../shared/data/flickr8k-1k \\
        --captioner runs/photo-captioner --out runs/photo-captions

Protocol (Flickr8k-1k, ``split_by_image(800, seed 0)``):

* Captions: the 200 held-out images are captioned from the bank of the 800 training
  images' captions (settings chosen leave-one-out on the training images by ``vistrieve
  train photo-captioner``) and scored with BLEU and CIDEr-D (``pycocoevalcap``) against
  their five human captions. Reference points: a random bank caption; the single closest
  bank caption (no consensus, no visual neighbours); a human caption scored against the
  other four (so against four references, not five: a rough ceiling).
* Composed: :func:`~vistrieve.evals.caption_edits.caption_edit_queries` with the training
  images as references and the held-out images as the gallery (the gallery also holds the
  references, which are dropped from their own rankings). Captions of a reference come from
  the bank with that image's own captions left out. The LLM is SmolLM2-135M-Instruct,
  zero-shot, greedy; its answers are cached under ``--cache``. The encoder is the zero-shot
  ``bridge-lite1`` (no Flickr8k training) unless ``--encoder`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _composed import CaptionPlusModification, DropModality

from vistrieve.encoders import create_encoder, parse_encoder_spec
from vistrieve.evals.caption_edits import caption_edit_queries
from vistrieve.evals.captions import caption_metrics
from vistrieve.evals.datasets import load_flickr8k, split_by_image
from vistrieve.evals.runner import ComposedEvaluator, evaluate
from vistrieve.llm import ReplayCache, load_smollm2
from vistrieve.pipeline import RetrievalPipeline
from vistrieve.query_rewriting.captioner import RetrievalCaptioner
from vistrieve.query_rewriting.cirevl import CIReVLRewriter
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.utils.images import load_image


class _LeaveOwnOut:
    """Captions a bank image without its own captions (references come from the bank)."""

    def __init__(self, captioner: RetrievalCaptioner, row_of: dict[str, int]) -> None:
        self.captioner, self.row_of = captioner, row_of
        self.name = f"{captioner.name}-leave-own-out"

    def caption(self, images: Sequence[Any]) -> list[str]:
        feats = np.asarray(self.captioner.encoder.encode_image([load_image(i) for i in images]))
        rows = [self.row_of[str(i)] for i in images]
        return [b[0] for b in self.captioner.describe_features(feats, n=1, exclude=rows)]


class _Human:
    """The reference's first human caption (an oracle captioner)."""

    name = "human-caption"

    def __init__(self, caption_of: dict[str, str]) -> None:
        self.caption_of = caption_of

    def caption(self, images: Sequence[Any]) -> list[str]:
        return [self.caption_of[str(i)] for i in images]


def _caption_table(captioner: RetrievalCaptioner, test: Any, seed: int) -> str:
    ids = test.ids
    refs = [list(test[i].captions) for i in ids]
    feats = np.asarray(captioner.encoder.encode_image([load_image(test[i].image) for i in ids]))
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, float]] = {}
    pick = rng.integers(len(captioner.captions), size=len(ids))
    rows["random bank caption"] = caption_metrics([captioner.captions[j] for j in pick], refs)
    chosen = (captioner.k, captioner.consensus, captioner.visual_weight)
    captioner.k, captioner.consensus, captioner.visual_weight = 1, 0.0, 0.0
    rows["closest bank caption (image-to-text only)"] = caption_metrics(
        captioner.caption_features(feats), refs
    )
    captioner.k, captioner.consensus, captioner.visual_weight = chosen
    rows[f"retrieval captioner (k {chosen[0]}, consensus {chosen[1]:g}, visual {chosen[2]:g})"] = (
        caption_metrics(captioner.caption_features(feats), refs)
    )
    rows["a human caption vs the other four (ceiling)"] = caption_metrics(
        [r[0] for r in refs], [r[1:] for r in refs]
    )
    keys = ("BLEU-1", "BLEU-4", "CIDEr")
    lines = [
        f"Captions of the {len(ids)} held-out Flickr8k-1k images from a bank of "
        f"{len(captioner.captions)} training captions (encoder {captioner.encoder.name})",
        "",
        "| captioner | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/flickr8k-1k")
    p.add_argument("--captioner", default="runs/photo-captioner")
    p.add_argument("--encoder", default="bridge-lite1", help="retrieval encoder spec")
    p.add_argument("--smollm2", default=None, help="SmolLM2 directory (default: the fetched one)")
    p.add_argument("--cache", default="runs/cache/photo-cirevl")
    p.add_argument("--min-shared", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/photo-captions")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = split_by_image(load_flickr8k(args.data), n_train=800, seed=args.seed)
    captioner = RetrievalCaptioner.load(args.captioner)
    if captioner.image_of is None or len(captioner.image_of) != sum(
        len(train[i].captions) for i in train.ids
    ):
        raise SystemExit(f"{args.captioner} was not built from this training split")
    captions_md = _caption_table(captioner, test, args.seed)
    sys.stdout.write(captions_md)

    data = caption_edit_queries(train, test, min_shared=args.min_shared, name="flickr8k-edits")
    row_of = {str(train[i].image): r for r, i in enumerate(train.ids)}
    leave_out = _LeaveOwnOut(captioner, row_of)
    human = _Human({str(train[i].image): train[i].captions[0] for i in train.ids})
    parsed = parse_encoder_spec(args.encoder)
    encoder = create_encoder(str(parsed.pop("name")), progress=False, **parsed)
    dense = DenseRetriever.build(encoder, data.corpus, index_captions=False)
    llm = load_smollm2(args.smollm2, max_new_tokens=40)
    cache = Path(args.cache)
    methods = {
        "image only": DropModality(dense, "image"),
        "text only (the modification)": DropModality(dense, "text"),
        "late fusion (image + text embeddings)": dense,
        "retrieval caption + modification (no LLM)": RetrievalPipeline(
            dense, rewriter=CaptionPlusModification(leave_out)
        ),
        "CIReVL: retrieval caption, SmolLM2-135M": RetrievalPipeline(
            dense, rewriter=CIReVLRewriter(leave_out, llm, cache=ReplayCache(cache / "captioner"))
        ),
        "CIReVL: human caption of the reference (oracle), SmolLM2-135M": RetrievalPipeline(
            dense, rewriter=CIReVLRewriter(human, llm, cache=ReplayCache(cache / "human"))
        ),
    }
    report = evaluate(
        methods,
        [ComposedEvaluator(data, name="flickr8k-edits", ks=(1, 5, 10, 50))],
        title=(
            f"Composed retrieval on Flickr8k-1k caption edits: {len(data.examples)} queries, "
            f"{len(data.corpus)} images, encoder {args.encoder}"
        ),
        info={"examples": len(data.examples), "images": len(data.corpus)},
    )
    report.save(out / "composed")
    summary = captions_md + "\n" + report.to_markdown()
    (out / "summary.md").write_text(summary, encoding="utf-8")
    sys.stdout.write(report.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
