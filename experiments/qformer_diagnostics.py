"""Diagnostics of the Q-Former reranker on the shapes world, and training variants.

Usage::

    python experiments/qformer_diagnostics.py errors          # what the first stage gets wrong
    python experiments/qformer_diagnostics.py ceiling         # oracle R@1 of a perfect reranker
    python experiments/qformer_diagnostics.py probe           # shape info in frozen ViT tokens
    python experiments/qformer_diagnostics.py train --tokens post --steps 600 --n-hard 3
    python experiments/qformer_diagnostics.py train --tokens 0 --steps 600 --n-hard 3
    python experiments/qformer_diagnostics.py train --tokens post --neighbourhood 3 --steps 600
    python experiments/qformer_diagnostics.py train --dense-residual --captioning-steps 2000 \
        --steps 2000 --eval-queries 1500                  # captioning only
    python experiments/qformer_diagnostics.py train --dense-residual --captioning-steps 1500 \
        --steps 3000 --captioning-weight 1 --n-hard 7 --eval-queries 1500

The first call caches per-layer patch tokens, mined candidates and dual-encoder embeddings
of the training and test splits in ``--cache`` (about 2 GB in memory, 1 minute).
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistrieve.data.shapes import SHAPES, Scene, ShapesWorld, caption_signature
from vistrieve.encoders import create_encoder
from vistrieve.rerankers.qformer import QFormerConfig, QFormerCrossEncoder, TextVocabulary
from vistrieve.retrievers.dense import DenseRetriever
from vistrieve.training.qformer import train_qformer
from vistrieve.types import Query
from vistrieve.utils.images import load_image

LAYERS: tuple[Any, ...] = (0, 1, 2, 3, 4, "post")


def _layer_tokens(encoder: Any, images: list[Any]) -> dict[Any, torch.Tensor]:
    visual = encoder.model.visual
    pix = torch.stack([encoder.preprocess(load_image(im)) for im in images])
    outs: dict[Any, torch.Tensor] = {}
    with torch.inference_mode():
        x = visual.conv1(pix).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding)
        outs[0] = x[:, 1:].clone()
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            outs[i + 1] = x[:, 1:].clone()
        outs["post"] = visual.ln_post(x)[:, 1:].clone()
    return outs


def _prepare(encoder: Any, world: ShapesWorld, split: str, k: int = 16) -> dict[str, Any]:
    corpus = world.corpus(split)
    items = list(corpus.values())
    toks: dict[Any, list[torch.Tensor]] = collections.defaultdict(list)
    for s in range(0, len(items), 256):
        for key, v in _layer_tokens(encoder, [it.image for it in items[s : s + 256]]).items():
            toks[key].append(v.half())
    row = {it.id: i for i, it in enumerate(items)}
    scenes = [Scene.from_dict(it.metadata["scene"]) for it in items]
    texts = [c for it in items for c in it.captions]
    owners = [row[it.id] for it in items for _ in it.captions]
    dense = DenseRetriever.build(encoder, corpus, index_captions=False)
    mined: list[list[int]] = []
    for s in range(0, len(texts), 1000):
        for hs in dense.retrieve([Query(text=t) for t in texts[s : s + 1000]], k=k):
            mined.append([row[h.id] for h in hs])
    pos, neg = [], []
    for t, o, m in zip(texts, owners, mined, strict=True):
        sig = caption_signature(scenes[o], t)
        p = {o} | {i for i in m if caption_signature(scenes[i], t) == sig}
        pos.append(p)
        neg.append([i for i in m if i not in p])
    return {
        "toks": {key: torch.cat(v) for key, v in toks.items()},
        "texts": texts,
        "owners": owners,
        "mined": mined,
        "pos": pos,
        "neg": neg,
        "scenes": [s.to_dict() for s in scenes],
        "temb": torch.from_numpy(np.ascontiguousarray(encoder.encode_text(texts))).float(),
        "iemb": torch.from_numpy(
            np.ascontiguousarray(encoder.encode_image([it.image for it in items]))
        ).float(),
    }


def _data(cache: Path, encoder: Any) -> dict[str, Any]:
    if cache.is_file():
        # Written by this script on this machine (not untrusted input).
        return dict(torch.load(cache, weights_only=False))
    world = ShapesWorld(seed=0, n_train=4000)
    data = {"train": _prepare(encoder, world, "train"), "test": _prepare(encoder, world, "test")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def errors(data: dict[str, Any]) -> None:
    """Classify the first stage's wrong top-1 images against the caption's own image."""
    te = data["test"]
    scenes = [Scene.from_dict(s) for s in te["scenes"]]
    c: collections.Counter[str] = collections.Counter()
    for t, o, m in zip(te["texts"], te["owners"], te["mined"], strict=True):
        a, b = scenes[o], scenes[m[0]]
        if m[0] == o:
            c["correct"] += 1
        elif caption_signature(a, t) == caption_signature(b, t):
            c["described equally well by the caption"] += 1
        elif sorted((x.colour, x.shape) for x in a.objects) == sorted(
            (x.colour, x.shape) for x in b.objects
        ):
            c["same colour-shape pairs, other size / position"] += 1
        elif len(a.objects) != len(b.objects):
            c["other object count"] += 1
        elif sorted(x.colour for x in a.objects) == sorted(x.colour for x in b.objects) and sorted(
            x.shape for x in a.objects
        ) == sorted(x.shape for x in b.objects):
            c["colour-shape binding swapped"] += 1
        else:
            c["another colour or shape"] += 1
    n = sum(c.values())
    for key, v in c.most_common():
        print(f"{100 * v / n:5.1f}%  {key}")


def ceiling(data: dict[str, Any]) -> None:
    """R@1 of a reranker that puts caption-consistent candidates first (ties at random)."""
    te = data["test"]
    scenes = [Scene.from_dict(s) for s in te["scenes"]]
    for k in (4, 16):
        r1 = []
        for t, o, m in zip(te["texts"], te["owners"], te["mined"], strict=True):
            if o not in m[:k]:
                r1.append(0.0)
                continue
            sig = caption_signature(scenes[o], t)
            r1.append(1.0 / sum(caption_signature(scenes[i], t) == sig for i in m[:k]))
        print(f"k={k}: oracle R@1 {100 * np.mean(r1):.1f}")


def probe(data: dict[str, Any]) -> None:
    """Shape of each object from the frozen tokens of its 3x3 patch neighbourhood (MLP)."""
    world = ShapesWorld(seed=0, n_train=4000)

    def objects(split: str) -> list[tuple[int, int, int, int]]:
        rows = []
        for r, it in enumerate(world.corpus(split).values()):
            for o in Scene.from_dict(it.metadata["scene"]).objects:
                cx, cy = 64 * ((o.slot + 0.5) / 3 + o.dx), 64 * (0.5 + o.dy)
                rows.append((r, int(cy // 8), int(cx // 8), SHAPES.index(o.shape)))
        return rows

    train, test = objects("train"), objects("test")
    for layer in (0, 2, "post"):

        def features(rows: list[Any], d: dict[str, Any], layer: Any = layer) -> torch.Tensor:
            out = []
            for r, y, x, _ in rows:
                nb = [
                    min(7, max(0, y + a)) * 8 + min(7, max(0, x + b))
                    for a in (-1, 0, 1)
                    for b in (-1, 0, 1)
                ]
                out.append(d["toks"][layer][r, nb].float().flatten())
            return torch.stack(out)

        xtr, xte = features(train, data["train"]), features(test, data["test"])
        ytr = torch.tensor([s for *_, s in train])
        yte = torch.tensor([s for *_, s in test])
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-5
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(xtr.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, 6)
        )
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(net(xtr), ytr)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = (net(xte).argmax(1) == yte).float().mean()
        print(f"tokens {layer}: held-out shape accuracy {100 * acc:.1f}%")


def train(data: dict[str, Any], encoder: Any, args: argparse.Namespace) -> None:
    """Train one Q-Former variant on the cached tokens; rerank the test top 16 by each of
    its scores (fixed combinations: nothing is tuned on the test captions)."""
    layer: Any = args.tokens if args.tokens == "post" else int(args.tokens)
    nb = args.neighbourhood

    def tokens(split: str) -> torch.Tensor:
        t = data[split]["toks"][layer].float()
        if nb == 1:
            return t
        n, p, c = t.shape
        g = int(p**0.5)
        x = torch.nn.functional.unfold(t.transpose(1, 2).reshape(n, c, g, g), nb, padding=nb // 2)
        return x.transpose(1, 2)

    tr, te = data["train"], data["test"]
    vocab = TextVocabulary.build(encoder.tokenizer, tr["texts"])
    resid = args.dense_residual
    captioning = args.captioning_steps > 0 or args.captioning_weight > 0
    torch.manual_seed(0)
    tok_tr = tokens("train")
    model = QFormerCrossEncoder(
        QFormerConfig(
            image_dim=tok_tr.shape[-1],
            vocab_size=len(vocab),
            dense_residual=resid,
            layers=args.layers,
            captioning=captioning,
            image_tokens=tok_tr.shape[1] if captioning else 0,
        )  # fmt: skip
    )
    t0 = time.perf_counter()
    losses = train_qformer(
        model, vocab, tok_tr, tr["texts"], tr["pos"], tr["neg"], steps=args.steps,
        n_hard=args.n_hard, lr=args.lr, dense=(tr["temb"], tr["iemb"]) if resid else None,
        captioning_steps=args.captioning_steps, captioning_weight=args.captioning_weight,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    del tok_tr
    tok_te = tokens("test")
    rng = np.random.default_rng(1)
    rows = rng.choice(
        len(te["texts"]), size=min(args.eval_queries, len(te["texts"])), replace=False
    )
    ids = vocab.encode([te["texts"][r] for r in rows], 32)
    hits: collections.Counter[str] = collections.Counter()
    with torch.inference_mode():
        for j, r in enumerate(rows):
            m = te["mined"][r]
            cos = (te["temb"][r][None] * te["iemb"][m]).sum(-1)
            text = ids[j : j + 1].expand(len(m), -1)
            scores = {"dual encoder": cos}
            itm, lm = model.score_terms(tok_te[m], text, cos if resid else None)
            if args.steps > args.captioning_steps:  # the ITM head was trained
                scores["ITM" + (" + dense" if resid else "")] = itm
            else:
                itm = None
            if lm is not None:
                scores["log p(caption | image)"] = lm
                scores["log p + 20 * cosine"] = lm + 20 * cos
                if itm is not None:
                    scores["ITM" + (" + dense" if resid else "") + " + log p"] = itm + lm
            for name, s in scores.items():
                hits[name] += m[int(s.argmax())] == te["owners"][r]
    print(
        f"tokens={layer} neighbourhood={nb} layers={args.layers} steps={args.steps} "
        f"captioning_steps={args.captioning_steps} captioning_weight={args.captioning_weight} "
        f"n_hard={args.n_hard} dense_residual={resid}: loss {np.mean(losses[:20]):.3f} -> "
        f"{np.mean(losses[-50:]):.3f} in {secs:.0f}s; top-16 R@1 of {len(rows)} test captions: "
        + ", ".join(f"{k} {100 * v / len(rows):.1f}" for k, v in hits.items())
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["errors", "ceiling", "probe", "train"])
    p.add_argument("--cache", default="runs/qformer-diagnostics/cache.pt")
    p.add_argument("--tokens", default="post", help="0..4 (ViT layer) or post")
    p.add_argument("--neighbourhood", type=int, default=1)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--n-hard", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dense-residual", action="store_true")
    p.add_argument("--captioning-steps", type=int, default=0)
    p.add_argument("--captioning-weight", type=float, default=0.0)
    p.add_argument("--eval-queries", type=int, default=3000)
    args = p.parse_args()
    encoder = create_encoder("shapes-clip", progress=False)
    data = _data(Path(args.cache), encoder)
    if args.what == "train":
        train(data, encoder, args)
    else:
        {"errors": errors, "ceiling": ceiling, "probe": probe}[args.what](data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
