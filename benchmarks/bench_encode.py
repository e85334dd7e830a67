"""Image-encoding throughput of the retriever's build path against a plain loop.

Baseline: the images are decoded and preprocessed up front, then a plain loop calls
open_clip's ``model.encode_image`` on each preprocessed batch under ``torch.inference_mode``.
Measured against it, on the same model and images in the same run:

* ``pixels``: vistrieve's ``encode_pixels`` on the same preprocessed batches (the encoder's
  own overhead: dtype handling, normalisation, conversion to numpy);
* ``build``: the whole build path, ``encode_image_tolerant`` over image files, which also
  decodes and preprocesses in DataLoader workers (work the baseline was given for free).

With ``--encoder bridge-lite1`` (the real-photo encoder) the plain loop runs the same
towers by hand: EfficientNet-Lite1's features, pooled, classified, then the softmax at the
encoder's temperature times the class-name matrix, centred and normalised.

Usage::

    python benchmarks/bench_encode.py --model ViT-B-32 --n 512 --batch-size 64
    python benchmarks/bench_encode.py --encoder bridge-lite1 --n 512 --batch-size 64

Prints the figures and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _images(n: int, directory: Path, shared: Path) -> list[str]:
    flickr = shared / "flickr8k-1k" / "images"
    if flickr.is_dir():
        files = sorted(str(p) for p in flickr.glob("*.jpg"))
        if files:
            return [files[i % len(files)] for i in range(n)]
    from vistrieve.data.shapes import ShapesWorld

    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=n, image_size=224).corpus("test")
    paths = []
    for item in corpus.values():
        p = directory / f"{item.id}.jpg"
        item.image.save(p, quality=90)
        paths.append(str(p))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init)")
    parser.add_argument(
        "--encoder", default="open_clip", help="open_clip (random init) or a bridge-lite* name"
    )
    parser.add_argument("--n", type=int, default=512, help="images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions (best is kept)")
    args = parser.parse_args(argv)

    from vistrieve.encoders import create_encoder
    from vistrieve.utils.images import load_image

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    bridge = args.encoder.startswith("bridge")
    opts = {} if bridge else {"model": args.model, "seed": 0}
    enc = create_encoder(
        args.encoder,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=False,
        **opts,
    )
    if bridge:
        clf = enc.classifier  # type: ignore[attr-defined]
        emb, centre, temp = enc.class_embeddings, enc.centre_vector, enc.temperature  # type: ignore[attr-defined]

        def encode_plain(b: torch.Tensor) -> torch.Tensor:
            pooled = clf.forward_head(clf.forward_features(b), pre_logits=True)
            probs = torch.softmax(clf.get_classifier()(pooled).float() / temp, dim=-1)
            return probs @ emb - centre
    else:
        encode_plain = enc.model.encode_image  # type: ignore[attr-defined]
    label = args.encoder if bridge else args.model
    with tempfile.TemporaryDirectory() as tmp:
        paths = _images(args.n, Path(tmp), shared)
        pixels = torch.stack([enc.preprocess(load_image(p)) for p in paths])  # type: ignore[attr-defined]
        batches = list(torch.split(pixels, args.batch_size))

        def plain() -> None:
            with torch.inference_mode():
                for b in batches:
                    encode_plain(b)

        def ours_pixels() -> None:
            for b in batches:
                enc.encode_pixels(b)  # type: ignore[attr-defined]

        def ours_build() -> None:
            enc.encode_image_tolerant(paths)  # type: ignore[attr-defined]

        plain()  # warm-up
        timings: dict[str, float] = {}
        for name, fn in (("plain", plain), ("pixels", ours_pixels), ("build", ours_build)):
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            timings[name] = best
        emb_build, ok, _ = enc.encode_image_tolerant(paths)  # type: ignore[attr-defined]
        with torch.inference_mode():
            ref = torch.nn.functional.normalize(encode_plain(pixels[:8]), dim=-1).numpy()
        max_diff = float(np.abs(emb_build[:8] - ref).max())

    ips = {k: args.n / v for k, v in timings.items()}
    result = {
        "model": label,
        "n": args.n,
        "batch_size": args.batch_size,
        "num_workers": enc.num_workers,  # type: ignore[attr-defined]
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "plain_images_per_s": round(ips["plain"], 2),
        "pixels_images_per_s": round(ips["pixels"], 2),
        "build_images_per_s": round(ips["build"], 2),
        "pixels_ratio": round(ips["pixels"] / ips["plain"], 3),
        "build_ratio": round(ips["build"] / ips["plain"], 3),
        "max_abs_diff_vs_plain": max_diff,
    }
    sys.stdout.write(
        f"{label}, {args.n} images, batch {args.batch_size}, "
        f"{result['num_workers']} decode workers, {result['threads']} torch threads\n"
        f"  plain loop (preprocessed):           {ips['plain']:8.1f} img/s\n"
        f"  vistrieve encode_pixels (same):      {ips['pixels']:8.1f} img/s  "
        f"({result['pixels_ratio']:.3f}x)\n"
        f"  vistrieve build path (from files):   {ips['build']:8.1f} img/s  "
        f"({result['build_ratio']:.3f}x)\n"
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
