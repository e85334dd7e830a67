"""``vistrieve finetune {clip,hash,reranker,rewriter,grace}``: build a stage's task from
command-line options and run :func:`~vistrieve.training.finetune.finetune`.

Every stage shares the LoRA / optimisation / evaluation options of
:class:`~vistrieve.training.finetune.FinetuneConfig`; each adds where its base model and
its data come from. Multi-GPU and multi-node runs go through accelerate::

    accelerate launch --config_file accelerate.yaml -m vistrieve.cli finetune clip ...
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from vistrieve.recipes.shapes.data import shapes_heldout_corpora, shapes_vocabulary
from vistrieve.training.finetune import (
    STAGES,
    FinetuneConfig,
    FinetuneTask,
    config_from_args,
    finetune,
)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- clip
def clip_task(args: argparse.Namespace) -> FinetuneTask:
    """The ``clip`` stage: ``--base`` an encoder spec (shapes-clip[:WEIGHTS], clip-tiny-test,
    open_clip:ARCH[:PRETRAINED], lit:HEADS_DIR), ``--data`` shapes | shapes-heldout |
    flickr8k:DIR | manifest:PATH (with ``--val manifest:PATH``)."""
    from vistrieve.encoders import create_encoder, parse_encoder_spec
    from vistrieve.training.tasks import ClipFinetuneTask

    spec = parse_encoder_spec(args.base)
    if spec["name"] == "lit":
        return _lit_task(spec["heads"], args)
    encoder = create_encoder(spec, progress=False)
    train, val, test = _pair_data(args)
    words = shapes_vocabulary() if args.hard_negatives else []
    return ClipFinetuneTask(encoder, train, val, test=test, negative_words=words)


def _pair_data(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    data: str = args.data
    if data == "shapes-heldout":
        n = args.n_train or 2000
        return shapes_heldout_corpora(n_train=n, n_val=args.n_val, n_test=args.n_test)
    if data == "shapes":
        from vistrieve.data.shapes import ShapesWorld

        world = ShapesWorld(seed=0, n_train=args.n_train or 4000)
        val = world.corpus("val")
        return world.corpus("train"), val.subset(val.ids[: args.n_val]), world.corpus("test")
    if data.startswith("manifest:"):
        from vistrieve.data.manifest import corpus_from_manifest

        if not args.val:
            raise ValueError("--data manifest:PATH needs --val manifest:PATH (held-out pairs)")
        train = corpus_from_manifest(data[9:], image_root=args.image_root).corpus
        val = corpus_from_manifest(
            args.val.removeprefix("manifest:"), image_root=args.image_root
        ).corpus
        return train, val, None
    raise ValueError(
        f"unknown --data {data!r} for this stage; use shapes, shapes-heldout or manifest:PATH"
    )


def _lit_task(heads_dir: str, args: argparse.Namespace) -> FinetuneTask:
    from vistrieve.encoders import create_encoder
    from vistrieve.evals.datasets import load_flickr8k, split_by_image
    from vistrieve.training.lit import cached_features
    from vistrieve.training.tasks import LitFinetuneTask

    if not args.data.startswith("flickr8k:"):
        raise ValueError("--base lit:HEADS needs --data flickr8k:DIR (the LiT baseline's split)")
    import numpy as np

    encoder = create_encoder("lit", heads=heads_dir, progress=False)
    corpus = load_flickr8k(args.data[9:])
    train, test = split_by_image(corpus, 800, seed=0)  # the LiT baseline's split
    cache = Path(heads_dir) / "features"  # shared by every run on these heads

    def triple(c: Any) -> tuple[Any, list[str], Any]:
        img, _, t2i = cached_features(encoder, c, cache)  # type: ignore[arg-type]
        return img, c.caption_pairs()[0], t2i

    def rows_of(data: tuple[Any, list[str], Any], rows: Any) -> tuple[Any, list[str], Any]:
        img, texts, t2i = data
        new = {int(r): n for n, r in enumerate(rows)}
        keep = [k for k, owner in enumerate(t2i) if int(owner) in new]
        owners = np.array([new[int(t2i[k])] for k in keep], dtype=np.int64)
        return img[rows], [texts[k] for k in keep], owners

    all_train, test_data = triple(train), triple(test)
    perm = np.random.default_rng(1).permutation(len(train))
    tr, va = np.sort(perm[args.n_val :]), np.sort(perm[: args.n_val])
    if args.fresh_heads:
        # Heads and adapters start afresh: the --n-val held-back images, never trained on,
        # select the step.
        return LitFinetuneTask(
            encoder,
            rows_of(all_train, tr),
            rows_of(all_train, va),
            test_data,
            fresh_heads=True,
            tune_tower=not args.frozen_tower,
        )
    # The saved heads were trained on all 800 training images, so no image outside the test
    # split is unseen by them: the validation images are only monitored; the last step is kept.
    return LitFinetuneTask(
        encoder,
        all_train,
        rows_of(all_train, va),
        test_data,
        keep_last=True,
        tune_tower=not args.frozen_tower,
    )


# ------------------------------------------------------------------------------- rewriter
def rewriter_task(args: argparse.Namespace) -> FinetuneTask:
    """The ``rewriter`` stage: ``--base smollm2[:DIR]`` or a transformers causal LM name or
    path; ``--data shapes`` (train-split composed triplets, captioned references),
    ``shapes-dialogs`` (dialog -> description pairs for the dialog-summary prompt) or
    ``manifest:PAIRS.jsonl`` (``--val`` another JSONL for token accuracy; ``--prompt
    dialog-summary`` reads ``instruction`` as the dialog)."""
    from vistrieve.llm import HFChatLLM, load_smollm2
    from vistrieve.recipes.shapes.data import shapes_rewrite_pairs
    from vistrieve.training.tasks import RewriterFinetuneTask, read_rewrite_pairs

    base: str = args.base
    if base == "smollm2" or base.startswith("smollm2:"):
        llm = load_smollm2(base[8:] or None)
    else:
        llm = HFChatLLM.from_pretrained(base)
    from vistrieve.llm.prompts import CIREVL, DIALOG_SUMMARY

    dialog = args.prompt == "dialog-summary" or args.data == "shapes-dialogs"
    if args.data == "shapes-dialogs":
        from vistrieve.data.shapes import ShapesWorld
        from vistrieve.recipes.shapes.data import shapes_dialog_pairs

        pairs = shapes_dialog_pairs(ShapesWorld(seed=0, n_dialogs=args.n_train or 1000), "train")
        val = shapes_dialog_pairs(ShapesWorld(seed=0), "val")[: args.n_val]
    elif args.data == "shapes":
        from vistrieve.data.shapes import ShapesWorld
        from vistrieve.recipes.shapes.captioner import load_shapes_captioner

        captioner = load_shapes_captioner()
        world = ShapesWorld(seed=0, n_composed=args.n_train or 2000)
        pairs = shapes_rewrite_pairs(world, "train", captioner=captioner)
        val = shapes_rewrite_pairs(ShapesWorld(seed=0), "val", captioner=captioner)
        val = val[: args.n_val]
    elif args.data.startswith("manifest:"):
        pairs = read_rewrite_pairs(args.data[9:])
        if not args.val:
            raise ValueError("--data manifest:PATH needs --val manifest:PATH (held-out pairs)")
        val = read_rewrite_pairs(args.val.removeprefix("manifest:"))
    else:
        raise ValueError(
            f"unknown --data {args.data!r}; use shapes, shapes-dialogs or manifest:PAIRS.jsonl"
        )
    if dialog:
        return RewriterFinetuneTask(
            llm.model,
            llm.tokenizer,
            pairs,
            val_pairs=val,
            name=llm.name,
            prompt=DIALOG_SUMMARY,
            answer_field="Description",
            field_names=("caption", "dialog"),
        )
    return RewriterFinetuneTask(
        llm.model, llm.tokenizer, pairs, val_pairs=val, name=llm.name, prompt=CIREVL
    )


# ------------------------------------------------------------------------------- reranker
def reranker_task(args: argparse.Namespace) -> FinetuneTask:
    """The ``reranker`` stage: ``--base`` a directory written by the shapes Q-Former
    training (``vistrieve train qformer``) or ``embedded``; ``--data
    shapes-heldout``, ``shapes`` (negatives mined by shapes-clip; captions that also
    describe a mined image count as its positives) or ``manifest:PATH`` with ``--val
    manifest:PATH`` (your images and captions; only a caption's own image is its positive)."""
    from vistrieve.encoders import create_encoder
    from vistrieve.rerankers.qformer import load_qformer_reranker
    from vistrieve.training.tasks import RerankerFinetuneTask

    if args.data not in ("shapes", "shapes-heldout") and not args.data.startswith("manifest:"):
        raise ValueError(
            f"unknown --data {args.data!r} for the reranker; use shapes, shapes-heldout or "
            "manifest:PATH"
        )
    train, val, _ = _pair_data(args)
    both = {**dict(train.items()), **dict(val.items())}
    reranker = load_qformer_reranker(args.base, both)
    # Negatives are mined by the dual encoder the Q-Former reads (its saved image tower).
    encoder = create_encoder(reranker.image_tower or {}, progress=False)
    positives_of = None
    if not args.data.startswith("manifest:"):
        from vistrieve.data.shapes import Scene, caption_signature

        scenes = {i: Scene.from_dict(it.metadata["scene"]) for i, it in both.items()}

        def positives_of(caption: str, owner: str, mined: list[str]) -> set[str]:
            sig = caption_signature(scenes[owner], caption)
            return {i for i in mined if caption_signature(scenes[i], caption) == sig}

    return RerankerFinetuneTask(
        reranker, encoder, train, val, positives_of=positives_of, base=args.base
    )


# ----------------------------------------------------------------------------------- hash
def hash_task(args: argparse.Namespace) -> FinetuneTask:
    """The ``hash`` stage: ``--base`` a saved hash model directory (``vistrieve train
    hash`` writes OUT/model); ``--data wiki:MAT``, ``paired:DIR`` or ``shapes`` (features of
    the embedded encoder), with the label loss when the data has labels."""
    import numpy as np

    from vistrieve.hashing.heads import CMSEH
    from vistrieve.hashing.losses import CMSEHLoss, HashLossConfig
    from vistrieve.recipes.shapes.hashing import shapes_data
    from vistrieve.training.hashing import paired_data, wiki_data
    from vistrieve.training.tasks import HashFinetuneTask

    model = CMSEH.load(args.base)
    kind, _, path = args.data.partition(":")
    if kind == "wiki" and path:
        data = wiki_data(path)
    elif kind == "paired" and path:
        data = paired_data(path, n_train=args.n_train or 500)
    elif kind == "shapes":
        data = shapes_data(cache_dir=str(Path(args.out) / "features"))
    else:
        raise ValueError(f"unknown --data {args.data!r}; use wiki:MAT, paired:DIR or shapes")
    labels = data.train_labels
    semantic: Any = "dcmh" if labels is not None and model.config.hashing else "none"
    n_classes = None
    if labels is not None:
        lab = np.asarray(labels)
        n_classes = int(lab.shape[1]) if lab.ndim == 2 else int(lab.max()) + 1
    loss_fn = CMSEHLoss(HashLossConfig(semantic=semantic, n_classes=n_classes), model.bits)
    return HashFinetuneTask(model, loss_fn, data, base=str(args.base))


# ---------------------------------------------------------------------------------- grace
def grace_task(args: argparse.Namespace) -> FinetuneTask:
    """The ``grace`` stage: ``--base`` a saved GRACE retriever (``vistrieve train grace``
    writes OUT/model); ``--data shapes`` (new pseudo-queries of its shapes images; the
    images' own first captions validate) or ``manifest:PAIRS.jsonl`` (lines
    ``{"query": ..., "id": ...}``; ``--val`` another such file)."""
    from vistrieve.generative.retriever import GraceRetriever
    from vistrieve.training.tasks import GraceFinetuneTask

    retriever = GraceRetriever.load(args.base)
    if args.data == "shapes":
        from vistrieve.data.shapes import Scene, ShapesWorld
        from vistrieve.recipes.shapes.grace import pseudo_queries

        world = ShapesWorld(seed=0)
        corpus = None
        for split in ("test", "val", "train"):  # `vistrieve train grace` indexes test
            c = world.corpus(split)
            if set(retriever.identifiers.by_item) <= set(c.ids):
                corpus = c.subset(list(retriever.identifiers.by_item))
                break
        if corpus is None:
            raise ValueError(f"{args.base} does not index a shapes split; use --data manifest:")
        scenes = {i: Scene.from_dict(it.metadata["scene"]) for i, it in corpus.items()}
        pairs = pseudo_queries(corpus, scenes, per_image=4, seed=4321)
        val = [(it.captions[0], i) for i, it in list(corpus.items())[: args.n_val]]
    elif args.data.startswith("manifest:"):
        if not args.val:
            raise ValueError("--data manifest:PATH needs --val manifest:PATH (held-out pairs)")
        pairs = _query_pairs(args.data[9:])
        val = _query_pairs(args.val.removeprefix("manifest:"))
    else:
        raise ValueError(f"unknown --data {args.data!r}; use shapes or manifest:PAIRS.jsonl")
    return GraceFinetuneTask(retriever, pairs, val, base=str(args.base))


def _query_pairs(path: str) -> list[tuple[str, str]]:
    from vistrieve.utils.io import iter_jsonl

    out = []
    for n, row in iter_jsonl(path):
        try:
            out.append((str(row["query"]), str(row["id"])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: need a JSON object with query and id ({exc})") from None
    return out


TASKS: dict[str, Callable[[argparse.Namespace], FinetuneTask]] = {
    "clip": clip_task,
    "hash": hash_task,
    "reranker": reranker_task,
    "rewriter": rewriter_task,
    "grace": grace_task,
}

_HELP = {
    "clip": "a dual encoder: open_clip (shapes-clip, any architecture) or the LiT baseline",
    "hash": "a trained CMSEH hash model",
    "reranker": "the Q-Former cross-encoder reranker",
    "rewriter": "a causal chat LM as the CIReVL or dialog-summary rewriter",
    "grace": "a GRACE generative retriever's language model",
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {"data": "shapes-heldout"},
    "reranker": {"data": "shapes-heldout"},
    "rewriter": {"base": "smollm2", "data": "shapes"},
    "grace": {"data": "shapes"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``finetune`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage in STAGES:
        doc = " ".join((TASKS[stage].__doc__ or "").replace("``", "'").split())
        p = sub.add_parser(stage, help=_HELP[stage], description=doc)
        d = _DEFAULTS.get(stage, {})
        p.add_argument(
            "--base",
            default=d.get("base"),
            required="base" not in d,
            help=f"base model (default: {d.get('base')})",
        )
        p.add_argument(
            "--data",
            default=d.get("data"),
            required="data" not in d,
            help=f"training data (default: {d.get('data')})",
        )
        p.add_argument("--val", help="validation data (manifest:PATH) for manifest training")
        p.add_argument("--image-root", help="base folder of relative image paths in manifests")
        p.add_argument("--n-train", type=int, help="training examples generated (shapes data)")
        p.add_argument("--n-val", type=int, default=200, help="validation examples")
        p.add_argument("--n-test", type=int, default=1000, help="test examples (shapes data)")
        p.add_argument(
            "--hard-negatives",
            action="store_true",
            help="clip: add attribute-swapped captions as negatives",
        )
        p.add_argument(
            "--fresh-heads",
            action="store_true",
            help="clip, lit base: start from new heads; --n-val training images select",
        )
        p.add_argument(
            "--frozen-tower",
            action="store_true",
            help="clip, lit base, --method full: train the heads only (the control)",
        )
        p.add_argument(
            "--prompt",
            choices=["cirevl", "dialog-summary"],
            default="cirevl",
            help="rewriter: the prompt the LM learns to answer",
        )
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--no-resume", action="store_true", help="ignore an earlier checkpoint")
        p.add_argument("--no-progress", action="store_true")
        for f in fields(FinetuneConfig):
            flag = "--" + f.name.replace("_", "-")
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(
                flag,
                type=kind,
                default=None,
                help=f"{f.metadata.get('help', '')} (default {f.default})",
            )
        p.set_defaults(func=run_cli)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the stage's task from ``args`` and fine-tune; returns the result record."""
    task = TASKS[args.stage](args)
    config = config_from_args(args)
    argv = getattr(args, "cli_argv", None) or sys.argv[1:]
    command = "vistrieve " + " ".join(shlex.quote(a) for a in argv)
    return finetune(
        task,
        config,
        args.out,
        resume=not args.no_resume,
        progress=not args.no_progress,
        command=command,
    )


def run_cli(args: argparse.Namespace) -> int:
    """``vistrieve finetune STAGE``: prints a summary of the result as JSON."""
    import os

    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary under a distributed launcher
        summary = {k: v for k, v in result.items() if k != "history"}
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
