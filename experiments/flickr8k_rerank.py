"""Q-Former reranking on Flickr8k with the LiT baseline as the first stage.

Usage::

    vistrieve train lit --data ../shared/data/flickr8k-1k --out runs/lit-v1
    python experiments/flickr8k_rerank.py --data ../shared/data/flickr8k-1k --lit runs/lit-v1 \
        --out runs/flickr8k-rerank --steps 600

The split is the LiT baseline's (``split_by_image(corpus, 800, seed=0)``: 800 training and
200 test images, 1,000 test captions). A dense-residual Q-Former is trained on the 800
training images: its queries cross-attend to the frozen EfficientNet-Lite0's 7 x 7 x 1280
feature map, text is tokenised with MiniLM's tokenizer, hard negatives come from the LiT
retriever's top 16, and the LiT cosine is the dense anchor. With ``--captioning-steps``
the Q-Former also learns to caption (BLIP-2's ITG) and ``--n-val`` training images are held
out to choose the weight of its caption likelihood. Then text -> image R@1/5/10 on the
test split: LiT alone, + Q-Former (replace), + Q-Former weighted fusion (0.5).
"""

from __future__ import annotations

import argparse
import sys

from vistrieve.encoders.lit import LitEncoder
from vistrieve.evals.datasets import load_flickr8k, split_by_image
from vistrieve.evals.runner import RetrievalEvaluator, evaluate
from vistrieve.pipeline import RerankStage, RetrievalPipeline
from vistrieve.rerankers.qformer import (
    QFormerReranker,
    TextVocabulary,
    clip_pair_similarity,
    timm_patch_tokens,
)
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.training.qformer import train_qformer_reranker


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/flickr8k-1k")
    p.add_argument("--lit", default="runs/lit-v1", help="trained LiT heads")
    p.add_argument("--out", default="runs/flickr8k-rerank")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--captioning-steps", type=int, default=0)
    p.add_argument("--captioning-weight", type=float, default=0.0)
    p.add_argument(
        "--n-val",
        type=int,
        default=100,
        help="training images held out to choose lm_weight (captioning models only)",
    )
    args = p.parse_args()
    encoder = LitEncoder.from_pretrained(args.lit, progress=False)
    train, test = split_by_image(load_flickr8k(args.data), 800, seed=args.seed)
    captioning = args.captioning_steps > 0 or args.captioning_weight > 0
    val = None
    if captioning:
        train, val = split_by_image(train, len(train) - args.n_val, seed=args.seed)
    tokenizer = encoder.text_tower.tokenizer

    def tokenize(texts: list[str]):  # type: ignore[no-untyped-def]
        return tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")[
            "input_ids"
        ]

    tokens_fn = timm_patch_tokens(encoder)
    record = train_qformer_reranker(
        encoder,
        train,
        tokens_fn,
        tokenize,
        f"{args.out}/qformer",
        steps=args.steps,
        seed=args.seed,
        command=" ".join(["python", *sys.argv]),
        captioning_steps=args.captioning_steps,
        captioning_weight=args.captioning_weight,
        val_corpus=val,
    )
    sys.stdout.write(f"trained: {record}\n")
    model, token_ids, _ = QFormerReranker.load_model(f"{args.out}/qformer")
    reranker = QFormerReranker(
        model,
        TextVocabulary(tokenize, token_ids),
        tokens_fn,
        test,
        dense=clip_pair_similarity(encoder, test),
    )
    dense = DenseRetriever.build(encoder, test, index_captions=False)
    methods = {
        "LiT dual encoder": dense,
        f"+ Q-Former (k={args.k})": RetrievalPipeline(
            dense, [RerankStage(reranker, k=args.k)], k_retrieve=args.k
        ),
        f"+ Q-Former, weighted 0.5 (k={args.k})": RetrievalPipeline(
            dense,
            [RerankStage(reranker, k=args.k, name="qformer-w", fusion="weighted")],
            k_retrieve=args.k,
        ),
    }
    report = evaluate(
        methods,
        [RetrievalEvaluator(test, name="flickr8k-test", image_to_text=False)],
        title="Flickr8k test (200 images, 1,000 captions): LiT + Q-Former rerank",
        info={"train_record": {k: v for k, v in record.items() if k != "losses"}},
    )
    report.save(f"{args.out}/eval")
    sys.stdout.write(report.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
