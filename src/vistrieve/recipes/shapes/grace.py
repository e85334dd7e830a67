"""GRACE on the shapes world: ``vistrieve train grace``.

Protocol: the corpus is one split's images (default: the test split, the same images the
dual-encoder baseline is measured on). The model memorises every corpus image from its
shapes-clip image embedding ("memorise"), and learns query -> identifier from
pseudo-queries: captions sampled anew from each image's scene graph (a perfect captioner),
with every string that is also one of the split's evaluation captions of that image removed,
so no evaluation query is seen verbatim in training ("retrieve"). Evaluation: text -> image
R@1/5/10 of the split's captions through the evaluation runner, with the beam count as the
largest K.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vistrieve.generative.identifiers import SCHEMES, build_identifiers
from vistrieve.generative.model import GraceModel, word_tokenizer
from vistrieve.generative.retriever import GraceRetriever
from vistrieve.generative.train import GraceTrainConfig, train_grace
from vistrieve.utils.io import atomic_write_json


def tiny_t5(vocab_size: int, *, width: int = 128, layers: int = 2, seed: int = 0) -> Any:
    """A small randomly initialised T5 (CPU-trainable) for the shapes recipe."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.T5Config(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        d_model=width,
        d_ff=4 * width,
        d_kv=width // 4,
        num_heads=4,
        num_layers=layers,
        num_decoder_layers=layers,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    return transformers.T5ForConditionalGeneration(cfg)


def pseudo_queries(
    corpus: Any, scenes: dict[str, Any], *, per_image: int = 8, seed: int = 1234
) -> list[tuple[str, str]]:
    """Captions resampled from each scene graph, minus the image's own evaluation captions."""
    from vistrieve.data.shapes import captions_for

    out: list[tuple[str, str]] = []
    for n, (item_id, item) in enumerate(corpus.items()):
        rng = np.random.default_rng([seed, n])
        seen = set(item.captions)
        mine: list[str] = []
        for _ in range(4 * per_image):
            for c in captions_for(scenes[item_id], rng):
                if c not in seen and c not in mine:
                    mine.append(c)
            if len(mine) >= per_image:
                break
        out.extend((c, item_id) for c in mine[:per_image])
    return out


def train_shapes_grace(
    out: str | Path,
    *,
    scheme: str = "structured",
    split: str = "test",
    config: GraceTrainConfig | None = None,
    num_beams: int = 10,
    width: int = 128,
    layers: int = 2,
    n_images: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate a GRACE retriever on one shapes split; returns the record.

    ``n_images`` keeps only the split's first images (quick runs and tests).
    """
    from vistrieve.data.shapes import Scene, ShapesWorld
    from vistrieve.encoders import create_encoder
    from vistrieve.evals.runner import RetrievalEvaluator, evaluate

    if num_beams < 1:
        raise ValueError(f"num_beams must be positive, got {num_beams}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown identifier scheme {scheme!r}; choose one of {SCHEMES}")
    cfg = config or GraceTrainConfig(seed=seed)
    world = ShapesWorld(seed=seed)
    corpus = world.corpus(split)
    if n_images is not None:
        corpus = corpus.subset(corpus.ids[:n_images])
    scenes = {i: Scene.from_dict(it.metadata["scene"]) for i, it in corpus.items()}
    encoder = create_encoder("shapes-clip", progress=False)
    t0 = time.perf_counter()
    item_ids = list(corpus)
    feats = np.asarray(encoder.encode_image([corpus[i].image for i in item_ids]))
    features = dict(zip(item_ids, feats, strict=True))
    captions = [corpus[i].captions[1] if len(corpus[i].captions) > 1 else i for i in item_ids]
    identifiers = build_identifiers(
        scheme,
        item_ids,
        captions=captions,
        embeddings=feats,
        seed=seed,
        **({"max_words": 12} if scheme == "semantic" else {}),
        **({"sep": " "} if scheme == "string" else {}),  # one word-level token per letter
    )
    queries = pseudo_queries(corpus, scenes, seed=seed + 1234)
    words = sorted({w for it in corpus.values() for c in it.captions for w in c.split()})
    words += sorted({w for q, _ in queries for w in q.split()} - set(words))
    tokenizer = word_tokenizer([w.strip(",:") for w in words])
    lm = tiny_t5(len(tokenizer), width=width, layers=layers, seed=seed)
    model = GraceModel(lm, tokenizer, image_dim=feats.shape[1])
    model.add_identifier_tokens(identifiers)
    t_prep = time.perf_counter() - t0
    record = train_grace(
        model, identifiers, features, queries, cfg, out=Path(out) / "checkpoint", progress=progress
    )
    retriever = GraceRetriever(model, identifiers, num_beams=num_beams, encoder=encoder)
    retriever.set_feature_bank(features)
    retriever.save(Path(out) / "model")
    report = evaluate(
        {f"grace-{scheme}": retriever},
        # R@K is defined only for K <= beams.
        [
            RetrievalEvaluator(
                corpus,
                name=f"shapes-{split}",
                image_to_text=False,
                ks=tuple(k for k in (1, 5, 10) if k <= num_beams) or (num_beams,),
            )
        ],
        title=f"GRACE ({scheme} identifiers) on the shapes {split} split",
    )
    report.save(Path(out) / "eval")
    depth = retriever.trie.depth - 1  # tokens of the longest identifier, EOS excluded
    result = {
        "scheme": scheme,
        "split": split,
        "images": len(item_ids),
        "pseudo_queries": len(queries),
        "identifier_tokens_max": depth,
        "num_beams": num_beams,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prepare_seconds": t_prep,
        "train_seconds": record["seconds"],
        "final_loss": {k: float(np.mean(v[-50:])) for k, v in record["losses"].items() if v},
        "metrics": report.methods[f"grace-{scheme}"].metrics,
        "eval_seconds": sum(report.methods[f"grace-{scheme}"].seconds.values()),
        "config": asdict(cfg),
    }
    atomic_write_json(Path(out) / "result.json", result)
    return result
