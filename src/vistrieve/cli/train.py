"""``vistrieve train <stage>``: every trainer behind one command.

Stages: ``shapes-clip`` (the embedded shapes-world CLIP), ``hash`` (CMSEH on features),
``qformer`` (the Q-Former reranker), ``captioner`` (the shapes captioner),
``photo-captioner`` (a retrieval captioner for real photos), ``lit`` (the
LiT baseline on Flickr8k) and ``grace`` (generative retrieval on the shapes world). Each
parses its options and calls one library function; the result is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

Command = Callable[[argparse.Namespace], int]


def _print_json(result: Any) -> None:
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


# ----------------------------------------------------------------------------- shapes-clip
def _shapes_clip(args: argparse.Namespace) -> int:
    from vistrieve.recipes.shapes.clip import train_shapes_clip
    from vistrieve.recipes.shapes.data import HELDOUT_COMBOS

    _print_json(
        train_shapes_clip(
            out=args.out,
            epochs=args.epochs,
            n_train=args.n_train,
            seed=args.seed,
            install=args.install,
            checkpoint_dir=args.checkpoint_dir,
            val_every=args.val_every,
            holdout_combos=HELDOUT_COMBOS if args.holdout_combos else (),
        )
    )
    return 0


def _add_shapes_clip(t: argparse.ArgumentParser) -> None:
    t.add_argument("--out", default="runs/shapes-clip", help="output directory")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--n-train", type=int, default=4000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-dir", help="resumable checkpoints (default: OUT/checkpoints)")
    t.add_argument("--val-every", type=int, default=5, help="validate every N epochs (0: never)")
    t.add_argument("--install", action="store_true", help="copy the weights into the package")
    t.add_argument(
        "--holdout-combos",
        action="store_true",
        help="keep the six held-out colour-shape pairs out of training (shapes-heldout base)",
    )


# ----------------------------------------------------------------------------- hash
def _add_hash(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=["wiki", "paired", "shapes"], required=True)
    p.add_argument(
        "--path", help="wiki: wikiData.mat; paired: folder of image/text .npy embeddings"
    )
    p.add_argument("--encoder", default="shapes-clip", help="shapes: encoder of the features")
    p.add_argument("--n-train", type=int, default=500, help="paired: training images")
    p.add_argument("--cache-dir", default="runs/hash-features", help="shapes: feature cache")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--head", choices=["linear", "select"], default="linear")
    p.add_argument("--head-hidden", type=int, help="hidden width of an MLP head")
    p.add_argument("--no-fusion", action="store_true", help="no VTFN (heads on the features)")
    p.add_argument("--float-only", action="store_true", help="coordinated embedding, no hashing")
    p.add_argument("--shared-head", action="store_true", help="one head for both modalities")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--modality-dropout", type=float, default=0.5)
    p.add_argument(
        "--semantic",
        choices=["dcmh", "proxy", "none"],
        default=None,
        help="label loss (default dcmh with labels, none without)",
    )
    p.add_argument("--semantic-weight", type=float, default=1.0)
    p.add_argument("--contrastive-weight", type=float, default=1.0)
    p.add_argument("--embedding-weight", type=float, default=1.0)
    p.add_argument("--quantization-weight", type=float, default=0.1)
    p.add_argument("--balance-weight", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/hash", help="output directory (model + result.json)")
    p.add_argument("--checkpoint-dir", help="resumable checkpoints (default: OUT/checkpoints)")
    p.add_argument("--no-progress", action="store_true")


def hash_data(args: argparse.Namespace) -> Any:
    """The :class:`~vistrieve.training.hashing.HashData` a ``train hash`` command asks for."""
    from vistrieve.training.hashing import paired_data, wiki_data

    if args.data in ("wiki", "paired") and not args.path:
        raise ValueError(f"--data {args.data} needs --path")
    if args.data == "wiki":
        return wiki_data(args.path)
    if args.data == "paired":
        return paired_data(args.path, n_train=args.n_train, seed=args.seed)
    from vistrieve.recipes.shapes.hashing import shapes_data

    return shapes_data(args.encoder, seed=args.seed, cache_dir=args.cache_dir)


def _hash_command(args: argparse.Namespace) -> str:
    """The options of a parsed command line, spelled as ``vistrieve train hash`` flags."""
    argv = getattr(args, "cli_argv", None)
    if argv:
        return "vistrieve " + " ".join(argv)
    p = argparse.ArgumentParser()
    _add_hash(p)
    defaults = vars(p.parse_args(["--data", args.data]))
    parts = ["vistrieve train hash"]
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key] and key != "data":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value not in (False, None):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _hash(args: argparse.Namespace) -> int:
    from vistrieve.training.hashing import train_hash_model

    result = train_hash_model(
        hash_data(args),
        args.out,
        model={
            "bits": args.bits,
            "head": args.head,
            "head_hidden": args.head_hidden,
            "fusion": not args.no_fusion,
            "hashing": not args.float_only,
            "shared_head": args.shared_head,
            "d_model": args.d_model,
            "modality_dropout": args.modality_dropout,
        },
        loss={
            "semantic": args.semantic,
            "semantic_weight": args.semantic_weight,
            "contrastive_weight": args.contrastive_weight,
            "embedding_weight": args.embedding_weight,
            "quantization_weight": args.quantization_weight,
            "balance_weight": args.balance_weight,
            "temperature": args.temperature,
        },
        train={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
        },
        checkpoint_dir=args.checkpoint_dir,
        progress=not args.no_progress,
        command=_hash_command(args),
    )
    _print_json({k: v for k, v in result.items() if k != "history"})
    return 0


# ----------------------------------------------------------------------------- qformer
def _add_qformer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/qformer")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument(
        "--n-val", type=int, default=500, help="val base images (choose lm_weight on them)"
    )
    p.add_argument("--no-dense-residual", action="store_true")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--captioning-steps",
        type=int,
        default=0,
        help="steps of the captioning loss alone before listwise ITM training",
    )
    p.add_argument(
        "--captioning-weight",
        type=float,
        default=0.0,
        help="weight of the captioning loss during ITM training",
    )
    p.add_argument(
        "--install-from",
        metavar="DIR",
        help="copy a trained Q-Former (DIR) into the package instead of training",
    )


def _qformer(args: argparse.Namespace) -> int:
    from vistrieve.recipes.shapes.qformer import install_embedded_qformer, train_shapes_qformer

    if args.install_from:
        sys.stdout.write(f"installed {install_embedded_qformer(args.install_from)}\n")
        return 0
    _print_json(
        train_shapes_qformer(
            args.out,
            steps=args.steps,
            seed=args.seed,
            lr=args.lr,
            batch_size=args.batch_size,
            n_train=args.n_train,
            dense_residual=not args.no_dense_residual,
            layers=args.layers,
            n_val=args.n_val,
            captioning_steps=args.captioning_steps,
            captioning_weight=args.captioning_weight,
        )
    )
    return 0


# ----------------------------------------------------------------------------- captioner
def _add_captioner(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/shapes-captioner")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--install", action="store_true", help="copy the result into the package")


def _captioner(args: argparse.Namespace) -> int:
    from vistrieve.recipes.shapes.captioner import (
        install_embedded_captioner,
        train_shapes_captioner,
    )

    record = train_shapes_captioner(
        args.out, steps=args.steps, n_train=args.n_train, seed=args.seed
    )
    if args.install:
        record["installed"] = str(install_embedded_captioner(args.out))
    _print_json(record)
    return 0


# ----------------------------------------------------------------------------- photo-captioner
def _add_photo_captioner(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with captions.txt and images/")
    p.add_argument(
        "--out", default="runs/photo-captioner", help="captioner directory (--captioner OUT)"
    )
    p.add_argument("--encoder", default="bridge-lite1", help="encoder spec (as in `index`)")
    p.add_argument("--n-train", type=int, default=800, help="images in the caption bank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="keep the default settings instead of choosing them leave-one-out on the bank",
    )


def _photo_captioner(args: argparse.Namespace) -> int:
    from vistrieve.encoders import parse_encoder_spec
    from vistrieve.training.captioner import build_photo_captioner

    _print_json(
        build_photo_captioner(
            args.data,
            args.out,
            encoder=parse_encoder_spec(args.encoder),
            n_train=args.n_train,
            seed=args.seed,
            tune=not args.no_tune,
        )
    )
    return 0


# ----------------------------------------------------------------------------- lit
def _add_lit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with captions.txt and images/")
    p.add_argument("--out", default="runs/lit")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument(
        "--epochs", type=int, default=10, help="chosen on a 700/100 split of the training images"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="feature cache (default OUT/features)")


def _lit(args: argparse.Namespace) -> int:
    from vistrieve.training.lit import train_lit_baseline

    _print_json(
        train_lit_baseline(
            args.data,
            args.out,
            n_train=args.n_train,
            epochs=args.epochs,
            seed=args.seed,
            cache_dir=args.cache_dir,
        )
    )
    return 0


# ----------------------------------------------------------------------------- bridge
def comma_floats(text: str) -> list[float]:
    """An argparse type: ``"0.3,0.4"`` -> ``[0.3, 0.4]``."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _add_bridge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with captions.txt and images/")
    p.add_argument("--out", default="runs/bridge", help="heads directory (--encoder bridge-V:OUT)")
    p.add_argument("--variant", default="lite1", choices=("lite0", "lite1", "lite2"))
    p.add_argument(
        "--towers",
        default="lite1",
        help="comma-separated EfficientNet towers whose pooled features the image head reads "
        "(e.g. lite1,lite0); empty for none",
    )
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--weights",
        type=comma_floats,
        default=[0.3, 0.4, 0.5, 0.6, 0.7],
        help="fusion weights tried by cross-validation on the training images",
    )
    p.add_argument(
        "--regs",
        type=comma_floats,
        default=[1e-3, 1e-2],
        help="penalties toward the zero-shot start tried by cross-validation",
    )
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="feature cache (default OUT/features)")


def _bridge(args: argparse.Namespace) -> int:
    from vistrieve.training.bridge import train_bridge

    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    _print_json(
        train_bridge(
            args.data,
            args.out,
            variant=args.variant,
            towers=towers,
            n_train=args.n_train,
            seed=args.seed,
            epochs=args.epochs,
            weights=args.weights,
            regs=args.regs,
            folds=args.folds,
            cache_dir=args.cache_dir,
        )
    )
    return 0


# ----------------------------------------------------------------------------- grace
def _add_grace(p: argparse.ArgumentParser) -> None:
    from vistrieve.generative.identifiers import SCHEMES

    p.add_argument("--out", default="runs/grace", help="output directory")
    p.add_argument("--scheme", choices=SCHEMES, default="structured", help="identifier scheme")
    p.add_argument("--split", default="test", help="shapes split whose images form the corpus")
    p.add_argument("--memorise-steps", type=int, default=1500)
    p.add_argument("--retrieve-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beams", type=int, default=10, help="beam width (the largest K of R@K)")
    p.add_argument("--width", type=int, default=128, help="T5 width")
    p.add_argument("--layers", type=int, default=2, help="T5 encoder and decoder layers")
    p.add_argument("--n-images", type=int, help="use only the split's first N images")
    p.add_argument("--seed", type=int, default=0)


def _grace(args: argparse.Namespace) -> int:
    from vistrieve.generative.train import GraceTrainConfig
    from vistrieve.recipes.shapes.grace import train_shapes_grace

    cfg = GraceTrainConfig(
        memorise_steps=args.memorise_steps,
        retrieve_steps=args.retrieve_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    _print_json(
        train_shapes_grace(
            args.out,
            scheme=args.scheme,
            split=args.split,
            config=cfg,
            num_beams=args.beams,
            width=args.width,
            layers=args.layers,
            n_images=args.n_images,
            seed=args.seed,
        )
    )
    return 0


TRAINERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]] = {
    "shapes-clip": ("train the embedded shapes-world CLIP", _add_shapes_clip, _shapes_clip),
    "hash": ("train a CMSEH hash model on features and evaluate it", _add_hash, _hash),
    "qformer": ("train the shapes-world Q-Former reranker", _add_qformer, _qformer),
    "captioner": ("train the shapes-world captioner", _add_captioner, _captioner),
    "photo-captioner": (
        "build a real-photo retrieval captioner from a captioned folder (Flickr8k)",
        _add_photo_captioner,
        _photo_captioner,
    ),
    "lit": ("train the LiT baseline's heads on Flickr8k", _add_lit, _lit),
    "bridge": ("train heads on the real-photo bridge encoder (Flickr8k)", _add_bridge, _bridge),
    "grace": ("train a GRACE generative retriever on the shapes world", _add_grace, _grace),
}
"""Stage -> (help, option builder, command)."""


def add_train_parser(sub: Any) -> None:
    """Add ``vistrieve train <stage>`` to the CLI's subparsers."""
    p = sub.add_parser("train", help="train a stage (shapes-clip, hash, qformer, captioner, ...)")
    tsub = p.add_subparsers(dest="recipe", required=True)
    for stage, (text, add, func) in TRAINERS.items():
        t = tsub.add_parser(stage, help=text, description=text[0].upper() + text[1:] + ".")
        add(t)
        t.set_defaults(func=func)


__all__ = ["TRAINERS", "add_train_parser", "comma_floats", "hash_data"]
