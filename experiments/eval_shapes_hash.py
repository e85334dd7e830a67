"""HashRetriever against DenseRetriever on the shapes test split, through the eval runner.

Usage::

    vistrieve train hash --data shapes --bits 64 --out runs/hash-shapes-64
    python experiments/eval_shapes_hash.py --model runs/hash-shapes-64/model --out runs/eval-hash

Both retrievers use the embedded shapes-clip features; the hash retriever ranks by Hamming
distance of the CMSEH codes (and, as a third method, re-scores 4 x k Hamming candidates by
float cosine). Text -> image and image -> text, 5-caption protocol.
"""

from __future__ import annotations

import argparse
import sys

from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.evals.runner import RetrievalEvaluator, evaluate
from vistrieve.hashing.heads import CMSEH
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.retrievers.hashing import HashRetriever


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/hash-shapes-64/model")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="runs/eval-hash")
    args = p.parse_args()
    corpus = ShapesWorld(seed=0).corpus(args.split)
    encoder = create_encoder("shapes-clip", progress=False)
    model = CMSEH.load(args.model)
    methods = {
        "dense (float cosine)": DenseRetriever.build(encoder, corpus),
        f"hash {model.bits}-bit (Hamming)": HashRetriever.build(encoder, model, corpus),
        f"hash {model.bits}-bit + float re-score x4": HashRetriever.build(
            encoder, model, corpus, rescore=True, name="hash-rescored"
        ),
    }
    report = evaluate(
        methods,
        [RetrievalEvaluator(corpus, name=f"shapes-{args.split}")],
        title=f"shapes {args.split}: hashing first stage vs dense",
        info={"hash_model": args.model, "bits": model.bits},
    )
    report.save(args.out)
    sys.stdout.write(report.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
