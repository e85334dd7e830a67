"""Reranker throughput (batched against one pair at a time) and end-to-end query latency.

1. **Pairs/s**: the Q-Former cross-encoder reranker scores ``--pairs`` (caption, image)
   pairs with its default batching (``batch_size=256``) and then one pair per forward pass
   (``batch_size=1``, the loop a naive reranker runs), on the same pairs in the same run,
   image tokens and the texts' dual-encoder embeddings cached for both (a warm-up pass
   scores every pair first). Ratio = batched / one-at-a-time. Two workloads: pairs as a
   reranker sees them (each query text with ``--k`` candidate images) and pairs of random
   texts and images (no text shared within a batch).
2. **Latency**: a shapes-world corpus of ``--corpus`` images (exact dense index of the
   embedded shapes-clip, Q-Former image tokens precomputed with ``warm()``), then
   ``--queries`` text queries one at a time through ``RetrievalPipeline`` with the first
   stage's top ``--k`` (128) reranked: p50/p95 per query, and the first stage alone.

The reranker timed is the Q-Former that ships in the package (``--qformer DIR`` for
another); ``--fresh`` times a freshly initialised model of the default shape instead.

Usage::

    python benchmarks/bench_rerank.py --corpus 10000 --k 128 --queries 50 --pairs 4096

Prints the figures and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=int, default=10_000, help="images in the latency corpus")
    p.add_argument("--k", type=int, default=128, help="candidates reranked per query")
    p.add_argument("--queries", type=int, default=50, help="latency queries")
    p.add_argument("--pairs", type=int, default=4096, help="pairs for the throughput test")
    p.add_argument("--qformer", default="embedded", help="trained Q-Former directory")
    p.add_argument("--fresh", action="store_true", help="a fresh model of the default shape")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.pipeline import RerankStage, RetrievalPipeline
    from vistrieve.rerankers.qformer import (
        QFormerConfig,
        QFormerCrossEncoder,
        QFormerReranker,
        TextVocabulary,
        clip_pair_similarity,
        clip_patch_tokens,
        load_qformer_reranker,
    )
    from vistrieve.retrievers.dense import DenseRetriever
    from vistrieve.types import Query

    t0 = time.perf_counter()
    world = ShapesWorld(seed=args.seed, n_train=0, n_val=0, n_test=args.corpus)
    corpus = world.corpus("test")
    encoder = create_encoder("shapes-clip", progress=False)
    texts, owners = corpus.caption_pairs()
    if not args.fresh:
        reranker = load_qformer_reranker(args.qformer, corpus)
    else:
        vocab = TextVocabulary.build(encoder.tokenizer, texts[:5000])  # type: ignore[attr-defined]
        tokens_fn = clip_patch_tokens(encoder)
        dim = tokens_fn([next(iter(corpus.values())).image]).shape[-1]
        model = QFormerCrossEncoder(
            QFormerConfig(image_dim=dim, vocab_size=len(vocab), dense_residual=True)
        )
        reranker = QFormerReranker(
            model, vocab, tokens_fn, corpus, dense=clip_pair_similarity(encoder, corpus)
        )
    dense = DenseRetriever.build(encoder, corpus, index_captions=False)
    reranker.warm()
    setup_s = time.perf_counter() - t0

    # -- 1. pairs/s, batched vs one at a time (same pairs, caches warm)
    rng = np.random.default_rng(args.seed)
    ids = list(corpus)

    def throughput(pair_texts: list[str], pair_ids: list[str]) -> dict[str, float]:
        reranker.batch_size = 256
        # Warm-up over every pair: both timed runs find the texts' dense embeddings cached.
        reranker.score_pairs(pair_texts, pair_ids)
        t = time.perf_counter()
        batched = reranker.score_pairs(pair_texts, pair_ids)
        batched_pps = len(pair_texts) / (time.perf_counter() - t)
        n_single = min(len(pair_texts), 512)
        reranker.batch_size = 1
        t = time.perf_counter()
        single = reranker.score_pairs(pair_texts[:n_single], pair_ids[:n_single])
        single_pps = n_single / (time.perf_counter() - t)
        reranker.batch_size = 256
        return {
            "batched_pairs_per_s": round(batched_pps, 1),
            "single_pairs_per_s": round(single_pps, 1),
            "ratio": round(batched_pps / single_pps, 2),
            "max_abs_score_diff": float((batched[:n_single] - single).abs().max()),
        }

    n_q = max(1, args.pairs // args.k)
    grouped = throughput(
        [texts[int(i)] for i in rng.integers(len(texts), size=n_q) for _ in range(args.k)],
        [ids[int(i)] for i in rng.integers(len(ids), size=n_q * args.k)],
    )
    random_pairs = throughput(
        [texts[int(i)] for i in rng.integers(len(texts), size=args.pairs)],
        [ids[int(i)] for i in rng.integers(len(ids), size=args.pairs)],
    )

    # -- 2. end-to-end latency per query at k
    pipe = RetrievalPipeline(dense, [RerankStage(reranker, k=args.k)], k_retrieve=args.k)
    qs = [Query(text=texts[int(i)]) for i in rng.integers(len(texts), size=args.queries)]
    pipe.retrieve(qs[:2], k=10)
    first, full = [], []
    for q in qs:
        t = time.perf_counter()
        dense.retrieve([q], k=args.k)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        pipe.retrieve([q], k=10)
        full.append(time.perf_counter() - t)

    def ms(x: list[float], q: float) -> float:
        return round(1000 * float(np.percentile(x, q)), 2)

    print(
        f"machine: {platform.machine()}, torch {torch.__version__} threads="
        f"{torch.get_num_threads()}; setup {setup_s:.1f} s (corpus {args.corpus} images)"
    )
    for label, r in (("query + k candidates", grouped), ("random pairs", random_pairs)):
        print(
            f"{label:>20}: pairs/s batched (256) {r['batched_pairs_per_s']:9.1f}   one at a "
            f"time {r['single_pairs_per_s']:7.1f}   ratio {r['ratio']:.1f}x   "
            f"(max |score diff| {r['max_abs_score_diff']:.2e})"
        )
    print(
        f"latency per query, k={args.k} over {args.corpus} images: first stage p50 "
        f"{ms(first, 50)} ms p95 {ms(first, 95)} ms; + Q-Former rerank p50 {ms(full, 50)} ms "
        f"p95 {ms(full, 95)} ms"
    )
    print(
        json.dumps(
            {
                "corpus": args.corpus,
                "k": args.k,
                "pairs": args.pairs,
                "query_grouped": grouped,
                "random_pairs": random_pairs,
                "first_stage_ms": {"p50": ms(first, 50), "p95": ms(first, 95)},
                "pipeline_ms": {"p50": ms(full, 50), "p95": ms(full, 95)},
                "torch_threads": torch.get_num_threads(),
                "qformer": "fresh" if args.fresh else args.qformer,
                "qformer_config": dataclasses.asdict(reranker.model.config),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
