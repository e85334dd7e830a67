"""The bridge encoder on the Flickr8k-1k test split: zero-shot variants and trained heads.

Split: ``split_by_image(load_flickr8k(DATA), n_train=800, seed=0)`` (the LiT baseline's),
200 test images with 1,000 captions. Every choice (temperature, fusion weight, penalty) is
made on the 800 training images only (zero-shot: R@10 on them; heads: 4-fold CV on them);
the test split is scored once per configuration. The frozen features are cached, so a
re-run only trains the heads.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_bridge.py --data ../shared/data/flickr8k-1k \\
        --cache /tmp/bridge-features --docs docs/benchmarks.md

``--docs`` replaces the block between ``<!-- bench_bridge:begin -->`` and
``<!-- bench_bridge:end -->`` in that file with the tables this run printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vistrieve.encoders.bridge import BridgeEncoder
from vistrieve.evals.datasets import load_flickr8k, split_by_image
from vistrieve.evals.metrics import image_text_retrieval_metrics
from vistrieve.training.bridge import bridge_features, train_bridge, zero_shot

BEGIN, END = "<!-- bench_bridge:begin -->", "<!-- bench_bridge:end -->"


def _row(name: str, m: dict[str, float], extra: str = "") -> str:
    t = [100 * m[f"text_to_image_R@{k}"] for k in (1, 5, 10)]
    i = [100 * m[f"image_to_text_R@{k}"] for k in (1, 5, 10)]
    return (
        f"| {name} | {t[0]:.1f} / {t[1]:.1f} / {t[2]:.1f} | "
        f"{i[0]:.1f} / {i[1]:.1f} / {i[2]:.1f} | {extra} |"
    )


def _zs_metrics(enc: BridgeEncoder, feats: Any, variant: str) -> dict[str, float]:
    img, txt = zero_shot(enc, feats.logits[variant], feats.text)
    return image_text_retrieval_metrics(img.numpy(), txt.numpy(), feats.text_to_image)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/flickr8k-1k")
    p.add_argument("--cache", default="/tmp/bridge-features")
    p.add_argument("--variants", default="lite0,lite1,lite2")
    p.add_argument("--temperatures", default="1,1.5,2,3")
    p.add_argument("--heads", default="lite1;lite1,lite0", help="';'-separated tower sets")
    p.add_argument("--docs", help="markdown file whose bench_bridge block is replaced")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    corpus = load_flickr8k(args.data)
    train, test = split_by_image(corpus, 800, seed=0)
    variants = args.variants.split(",")
    temps = [float(t) for t in args.temperatures.split(",")]
    encs = {v: BridgeEncoder.from_pretrained(v, num_workers=0, batch_size=50) for v in variants}
    tr = bridge_features(encs, train, args.cache)
    te = bridge_features(encs, test, args.cache)

    lines = [
        "Flickr8k-1k test split (`split_by_image(n_train=800, seed=0)`: 200 images, "
        f"{len(te.text)} captions), R@1 / R@5 / R@10 in %. Scores come from the cached frozen "
        "features through the same functions the encoder uses (`BridgeEncoder.bridge_from_logits`,"
        " `BridgeHeads.fuse`).",
        "",
        "**Zero-shot (no Flickr8k training).** Temperature chosen by mean R@10 on the 800 "
        "training images; the test split is scored once with it.",
        "",
        "| encoder | text -> image | image -> text | chosen on train |",
        "|---|---|---|---|",
    ]
    for v in variants:
        enc = encs[v]
        scores = {}
        for t in temps:
            enc.temperature = t
            m = _zs_metrics(enc, tr, v)
            scores[t] = (m["text_to_image_R@10"] + m["image_to_text_R@10"]) / 2
        best = max(scores, key=lambda t: scores[t])
        enc.temperature = best
        lines.append(
            _row(
                f"bridge-{v}",
                _zs_metrics(enc, te, v),
                f"T = {best:g} (train R@10 {100 * scores[best]:.1f})",
            )
        )
        if v == "lite1":
            centred = enc.centre_vector.clone()
            enc.centre_vector.zero_()
            lines.append(_row(f"bridge-{v}, not centred", _zs_metrics(enc, te, v), f"T = {best:g}"))
            enc.centre_vector.copy_(centred)
            enc.temperature = 2.0
            lines.append(
                _row(f"bridge-{v} (shipped default T = 2)", _zs_metrics(enc, te, v), "default")
            )

    lines += [
        "",
        "**Trained heads** (`vistrieve train bridge`, 800 training images; fusion weight and "
        "penalty by 4-fold CV on them).",
        "",
        "| heads | text -> image | image -> text | chosen by CV (CV mean R@10) | train s |",
        "|---|---|---|---|---|",
    ]
    for towers_text in [s for s in args.heads.split(";") if s.strip()]:
        towers = towers_text.split(",")
        with tempfile.TemporaryDirectory() as out:
            t1 = time.perf_counter()
            res = train_bridge(
                args.data,
                out,
                variant="lite1",
                towers=towers,
                cache_dir=args.cache,
                encoders={v: encs[v] for v in dict.fromkeys(["lite1", *towers])},
            )
            secs = time.perf_counter() - t1
        encs["lite1"].temperature = 2.0
        ch = res["chosen"]
        cvb = res["cv"][0]
        lines.append(
            _row(
                f"bridge-lite1 + heads on [{', '.join(towers)}]",
                res["test_metrics"],
                f"w = {ch['weight']:g}, reg = {ch['reg']:g} "
                f"({100 * cvb['mean_R@10']:.1f}) | {secs:.0f}",
            )
        )
    lines += [
        "",
        f"Command: `HF_HUB_OFFLINE=1 python benchmarks/bench_bridge.py "
        f"--data {args.data} --variants {args.variants} --temperatures {args.temperatures} "
        f"--heads '{args.heads}'` (total {time.perf_counter() - t0:.0f} s with cached features, "
        "2 shared CPU cores).",
    ]
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    if args.docs:
        path = Path(args.docs)
        doc = path.read_text(encoding="utf-8")
        if BEGIN not in doc or END not in doc:
            raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
