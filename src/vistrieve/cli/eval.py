"""The ``vistrieve eval`` command: evaluate retrievers side by side and write a report.

Each method is a dense retriever, built on the fly from an encoder (``--encoder``, repeatable)
or loaded from a saved index (``--index-dir``, repeatable); every method runs through the
same evaluators (:mod:`vistrieve.evals.runner`) and the report (``report.json``,
``report.md``, PNG plots) goes to ``--out``. The command follows open_clip_train's
``main(args)`` pattern: the library does the work, the command only parses options.

Datasets: ``shapes`` (the built-in shapes world; ``--task retrieval|composed|dialog``),
``flickr8k`` (a folder with ``captions.txt``, split by image with ``--n-train``),
``karpathy`` (a Karpathy ``dataset_{flickr30k,coco}.json`` with ``--image-root``),
``coco`` (an MS-COCO ``captions_*.json`` with ``--captions`` and ``--images``), ``csv`` (a
folder of images and a captions CSV with ``image,caption`` rows: ``--captions``,
``--images``), ``manifest`` (a CSV/TSV/JSONL manifest) and ``embeddings`` (precomputed
``.npy`` image and
text embeddings, scored exactly without any model).

Examples::

    # the embedded model on every shapes task
    vistrieve eval --dataset shapes --split test --task retrieval --task composed \\
        --task dialog --encoder shapes-clip --out runs/eval-shapes

    # two methods side by side; a saved index is a method too
    vistrieve eval --dataset shapes --encoder shapes-clip --encoder clip-tiny-test \\
        --index-dir runs/idx --out runs/cmp

    # real photos: COCO val2017 with the zero-shot real-photo encoder
    vistrieve eval --dataset coco --captions captions_val2017.json --images val2017 \\
        --encoder bridge-lite1 --out runs/coco-bridge

    # the dual encoder alone and followed by the shipped Q-Former over its top 16
    vistrieve eval --dataset shapes --encoder shapes-clip --rerank embedded --out runs/rr

Reproducing open_clip's published zero-shot Flickr30k numbers (needs the OpenAI ViT-B-32
weights available to open_clip, the Flickr30k images and the Karpathy split file)::

    vistrieve eval --dataset karpathy --karpathy-json dataset_flickr30k.json \\
        --image-root flickr30k-images --split test --encoder open_clip --model ViT-B-32 \\
        --pretrained openai --out runs/flickr30k-vitb32

Expected on the 1K test split, 5 captions per image (open_clip's / CLIP_benchmark's
table): text->image R@1 58.8, image->text R@1 78.9.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATASETS = ("shapes", "flickr8k", "karpathy", "coco", "csv", "manifest", "embeddings")
TASKS = ("retrieval", "composed", "dialog")
SHAPES_SPLITS = ("train", "val", "test")
QUESTIONERS = ("candidate", "llm", "generic")
REFORMULATORS = ("rules", "llm", "concat")
SCORINGS = ("accumulate", "last")
WEIGHTS = {"shapes": (2.0, 2.0), "photos": (2.0, 2.0)}
"""Default (confirm, deny) weights of the agent; the photos' pair was chosen on the Flickr8k
train split with bridge-lite1 (docs/benchmarks.md, the candidate-grounded chat agent)."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"cut-offs must be positive integers, got {text!r}")
    return ks


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to an ``argparse`` subparsers object.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``eval`` parser; its ``func`` default is :func:`cmd_eval`.
    """
    p = subparsers.add_parser(
        "eval",
        help="evaluate retrievers side by side and write a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, default="shapes", help="what to evaluate on")
    d.add_argument("--split", default="test", help="split (shapes/karpathy); default test")
    d.add_argument(
        "--task",
        action="append",
        choices=TASKS,
        help="shapes tasks (repeatable; default retrieval)",
    )
    d.add_argument(
        "--data",
        help="flickr8k folder, Karpathy JSON, manifest file, or embeddings folder",
    )
    d.add_argument("--karpathy-json", help="Karpathy dataset_*.json (same as --data)")
    d.add_argument("--captions", help="coco: captions_*.json; csv: the captions CSV")
    d.add_argument("--images", help="coco/csv: image folder (csv: default the CSV's folder)")
    d.add_argument("--image-root", help="image folder of a Karpathy JSON or a manifest")
    d.add_argument("--n-train", type=int, default=800, help="flickr8k: training images (skipped)")
    d.add_argument("--shapes-n", type=int, help="shapes: images in the split")
    d.add_argument("--seed", type=int, default=0, help="shapes world / flickr8k split seed")
    d.add_argument("--text-to-image", help="embeddings: .npy with the image row of each text")
    d.add_argument("--normalize", action="store_true", help="embeddings: L2-normalise rows")

    m = p.add_argument_group("methods")
    m.add_argument(
        "--encoder",
        action="append",
        help=(
            "method: an encoder NAME (bridge-lite1, real-photo, shapes-clip, clip-tiny-test, "
            "open_clip, hf) or bridge-lite1:HEADS_DIR, open_clip:ARCH[:TAG], hf:NAME_OR_PATH, "
            "lit:HEADS_DIR (repeatable)"
        ),
    )
    m.add_argument("--model", help="architecture of a bare open_clip (or model of a bare hf)")
    m.add_argument("--pretrained", help="pretrained tag or checkpoint of a bare open_clip")
    m.add_argument(
        "--index-dir",
        action="append",
        help="method: a saved retriever of any kind (dense, hash, GRACE; repeatable)",
    )
    m.add_argument(
        "--pipeline",
        action="append",
        metavar="SPEC",
        help="method: a pipeline spec (.toml/.json) with all its stages (repeatable)",
    )
    m.add_argument(
        "--grace", action="append", help="method: a saved GRACE generative retriever (repeatable)"
    )
    m.add_argument("--grace-beams", type=int, default=10, help="beam width of --grace methods")
    m.add_argument(
        "--rerank",
        metavar="DIR",
        help=(
            "also evaluate every --encoder / --index-dir method followed by this reranker "
            "(a saved Q-Former or BLIP-2 directory, 'embedded', or a JSON spec such as "
            '\'{"kind": "blip2", "path": "DIR", "mode": "itm"}\'; text -> image, retrieval task)'
        ),
    )
    m.add_argument("--rerank-k", type=int, default=16, help="candidates the reranker re-scores")
    m.add_argument(
        "--fusion",
        choices=("replace", "weighted", "rrf"),
        default="replace",
        help="how the reranker's score combines with the first stage's (pipeline fusion)",
    )
    m.add_argument("--index", default="exact", help="index built for --encoder methods")
    m.add_argument("--device", help="encoder device (default cpu)")
    m.add_argument("--batch-size", type=int, help="encoder batch size")
    m.add_argument("--num-workers", type=int, help="image decoding workers")

    e = p.add_argument_group("evaluation")
    e.add_argument("--ks", type=_ks, default=(1, 5, 10), help="retrieval R@K cut-offs, e.g. 1,5,10")
    e.add_argument("--dialog-k", type=int, default=10, help="dialog: Hits@K cut-off")
    e.add_argument("--rounds", type=int, help="dialog: last round (default: all)")
    a = p.add_argument_group(
        "live dialogs (--task dialog): the chat agent against a simulated user; every "
        "questioner x reformulator x scoring combination runs on every method"
    )
    a.add_argument(
        "--questioner",
        action="append",
        choices=QUESTIONERS,
        help="candidate (information gain over the candidates' attributes, no LLM), llm "
        "(an LLM picks and phrases from the same evidence), generic (fixed list); repeatable",
    )
    a.add_argument(
        "--reformulator",
        action="append",
        choices=REFORMULATORS,
        help="rules (caption + confirmed attributes), llm, concat (ChatIR); repeatable",
    )
    a.add_argument(
        "--scoring",
        action="append",
        choices=SCORINGS,
        help="accumulate (every round's scores + answer consistency) or last (last round "
        "only); repeatable",
    )
    a.add_argument("--llm", default="smollm2", help="LLM spec of the llm questioner/reformulator")
    a.add_argument("--llm-cache", help="replay cache directory of the LLM")
    a.add_argument("--dialogs", type=int, default=200, help="live dialogs (first N)")
    a.add_argument("--confirm-weight", type=float, help="bonus per confirmed attribute")
    a.add_argument("--deny-weight", type=float, help="penalty per denied attribute")
    a.add_argument(
        "--no-live-dialogs", action="store_true", help="dialog: only the scripted dialogs"
    )
    e.add_argument(
        "--continue-on-error",
        action="store_true",
        help="record a failing method in the report and go on (exit code 1)",
    )
    e.add_argument("--out", default="runs/eval", help="report directory")
    p.set_defaults(func=cmd_eval)
    return p


# ----------------------------------------------------------------------------- data
def _shapes(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from vistrieve.data.shapes import ShapesWorld
    from vistrieve.evals.runner import ComposedEvaluator, DialogEvaluator, RetrievalEvaluator

    if args.split not in SHAPES_SPLITS:
        raise SystemExit(
            f"--dataset shapes has splits {', '.join(SHAPES_SPLITS)}, not {args.split!r}"
        )
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.shapes_n is not None:
        n = args.shapes_n
        if n < 2:
            raise SystemExit(f"--shapes-n must be at least 2, got {n}")
        overrides.update(
            {f"n_{args.split}": n, "n_composed": min(500, n // 2), "n_dialogs": n // 2}
        )
    world = ShapesWorld(**overrides)
    corpus = world.corpus(args.split)
    tag = f"shapes-{args.split}"
    evaluators: list[Any] = []
    for task in dict.fromkeys(args.task or ["retrieval"]):
        if task == "retrieval":
            evaluators.append(RetrievalEvaluator(corpus, name=tag, ks=args.ks))
        elif task == "composed":
            evaluators.append(ComposedEvaluator(world.composed(args.split), name=f"{tag}-cir"))
        else:
            evaluators.append(
                DialogEvaluator(
                    world.dialogs(args.split),
                    name=f"{tag}-chat",
                    rounds=args.rounds,
                    k=args.dialog_k,
                )
            )
    return corpus, evaluators


def _corpus(args: argparse.Namespace) -> Any:
    """The corpus of a file-based image-text dataset."""
    if args.dataset == "flickr8k":
        from vistrieve.evals.datasets import load_flickr8k, split_by_image

        if not args.data:
            raise SystemExit("--dataset flickr8k needs --data DIR (the folder with captions.txt)")
        train, test = split_by_image(load_flickr8k(args.data), args.n_train, seed=args.seed)
        if args.split not in ("train", "test"):
            raise SystemExit(f"--dataset flickr8k has splits train and test, not {args.split!r}")
        return test if args.split == "test" else train
    if args.dataset == "coco":
        from vistrieve.evals.datasets import load_coco_captions

        captions = args.captions or args.data
        if not captions or not args.images:
            raise SystemExit("--dataset coco needs --captions captions_*.json and --images DIR")
        return load_coco_captions(captions, args.images)
    if args.dataset == "csv":
        from vistrieve.evals.datasets import load_captions_csv

        captions = args.captions or args.data
        if not captions:
            raise SystemExit("--dataset csv needs --captions FILE.csv (and --images DIR)")
        return load_captions_csv(captions, args.images)
    if args.dataset == "karpathy":
        from vistrieve.evals.datasets import load_karpathy

        json_path = args.karpathy_json or args.data
        if not json_path or not args.image_root:
            raise SystemExit(
                "--dataset karpathy needs --karpathy-json dataset_*.json and --image-root DIR"
            )
        return load_karpathy(json_path, args.image_root, split=args.split)
    from vistrieve.data.manifest import corpus_from_manifest

    if not args.data:
        raise SystemExit("--dataset manifest needs --data MANIFEST (.csv/.tsv/.jsonl)")
    return corpus_from_manifest(args.data, image_root=args.image_root).corpus


# ----------------------------------------------------------------------------- methods
def _encoder_args(spec: str, args: argparse.Namespace) -> tuple[str, dict[str, Any], str]:
    """(registered name, factory kwargs, method label) of one ``--encoder`` value (the syntax
    of :func:`vistrieve.encoders.parse_encoder_spec`; a bare ``open_clip`` or ``hf`` takes
    ``--model`` / ``--pretrained``)."""
    from vistrieve.encoders import parse_encoder_spec

    try:
        parsed = parse_encoder_spec(spec)
    except (KeyError, ValueError) as exc:
        raise SystemExit(str(exc.args[0] if exc.args else exc)) from None
    name = str(parsed.pop("name"))
    kw: dict[str, Any] = parsed
    label = spec
    if name == "open_clip" and "model" not in kw:
        kw.update(model=args.model or "ViT-B-32", pretrained=args.pretrained)
        label = ":".join(x for x in ("open_clip", kw["model"], kw["pretrained"]) if x)
    elif name == "open_clip":
        kw.setdefault("pretrained", None)
    elif name == "hf" and "name_or_path" not in kw:
        if not args.model:
            raise SystemExit("--encoder hf needs a model: hf:NAME_OR_PATH or --model NAME_OR_PATH")
        kw["name_or_path"] = args.model
        label = f"hf:{args.model}"
    elif name == "lit" and "heads" not in kw:
        raise SystemExit("the lit encoder needs its trained heads: --encoder lit:HEADS_DIR")
    for key in ("device", "batch_size", "num_workers"):
        value = getattr(args, key)
        if value is not None:
            kw[key] = value
    return name, kw, label


def _unique(label: str, taken: dict[str, Any]) -> str:
    out, n = label, 1
    while out in taken:
        n += 1
        out = f"{label}#{n}"
    return out


def _method_specs(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], str]]:
    """Check the method options before any data is loaded; one entry per ``--encoder``."""
    specs = list(args.encoder or [])
    if (args.model or args.pretrained) and not any(s in ("open_clip", "hf") for s in specs):
        raise SystemExit("--model/--pretrained apply to a bare --encoder open_clip or hf")
    if not specs and not args.index_dir and not args.grace and not args.pipeline:
        raise SystemExit(
            "give at least one method: --encoder SPEC, --index-dir DIR, --pipeline SPEC or "
            "--grace DIR"
        )
    if args.rerank:
        if not specs and not args.index_dir:
            raise SystemExit("--rerank needs a first stage: --encoder SPEC or --index-dir DIR")
        if set(args.task or ["retrieval"]) != {"retrieval"}:
            raise SystemExit("--rerank applies to --task retrieval (text -> image) only")
        if args.rerank_k <= 0:
            raise SystemExit(f"--rerank-k must be positive, got {args.rerank_k}")
    return [_encoder_args(spec, args) for spec in specs]


def _methods(
    specs: list[tuple[str, dict[str, Any], str]], args: argparse.Namespace, corpus: Any
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Method name -> retriever, and method name -> notes about how it was built."""
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.dense import DenseRetriever

    methods: dict[str, Any] = {}
    notes: dict[str, list[str]] = {}
    for name, kw, label in specs:
        label = _unique(label, methods)
        retriever = DenseRetriever.build(create_encoder(name, **kw), corpus, index=args.index)
        methods[label] = retriever
        notes[label] = _build_notes(retriever)
    runtime = {
        key: getattr(args, key)
        for key in ("device", "batch_size", "num_workers")
        if getattr(args, key) is not None
    }
    for directory in args.index_dir or []:
        from vistrieve.retrievers import load_retriever

        loaded: Any = load_retriever(directory, **runtime)
        label = _unique(str(directory), methods)
        methods[label] = loaded
        notes[label] = _index_notes(loaded, corpus, directory)
    if args.rerank:
        import json

        from vistrieve.pipeline import RerankStage, RetrievalPipeline
        from vistrieve.rerankers import load_reranker

        source: Any = args.rerank
        if source.lstrip().startswith("{"):
            try:
                source = json.loads(source)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"--rerank {args.rerank!r} is not valid JSON: {exc}") from None
        reranker = load_reranker(source, corpus)
        kind = str(getattr(reranker, "name", type(reranker).__name__))
        for first in list(methods):
            label = _unique(f"{first} + {kind} (k={args.rerank_k}, {args.fusion})", methods)
            stage = RerankStage(reranker, k=args.rerank_k, fusion=args.fusion)
            methods[label] = RetrievalPipeline(methods[first], [stage], k_retrieve=args.rerank_k)
            notes[label] = [
                f"the reranker {args.rerank} re-scores the top {args.rerank_k} of {first}"
            ]
    for spec in args.pipeline or []:
        from vistrieve.pipeline import RetrievalPipeline

        pipe = RetrievalPipeline.from_spec(spec, **runtime)
        label = _unique(f"pipeline:{pipe.name}", methods)
        methods[label] = pipe
        notes[label] = [f"pipeline spec {spec}"] + _index_notes(pipe.retriever, corpus, spec)
    for directory in args.grace or []:
        from vistrieve.generative import GraceRetriever

        grace = GraceRetriever.load(directory, num_beams=args.grace_beams)
        label = _unique(f"grace:{directory}", methods)
        methods[label] = grace
        unknown = [i for i in corpus if i not in grace.identifiers]
        notes[label] = (
            [f"{len(unknown)} evaluation images have no identifier (they count as misses)"]
            if unknown
            else []
        )
    return methods, notes


def _build_notes(retriever: Any) -> list[str]:
    report = retriever.build_report
    if report is None:
        return []
    notes = [
        f"index built in {report.seconds:.1f}s ({report.n_indexed} images, "
        f"{report.n_captions} captions; not in the cost table)"
    ]
    if report.skipped:
        notes.append(
            f"{len(report.skipped)} unreadable images were skipped; their captions count as misses"
        )
    return notes


def _index_notes(retriever: Any, corpus: Any, directory: str) -> list[str]:
    index = getattr(retriever, "image_index", None)
    indexed = set(index.ids if index is not None else getattr(retriever, "ids", ()))
    wanted = [i for i, it in corpus.items() if it.image is not None]
    missing = [i for i in wanted if i not in indexed]
    if len(missing) == len(wanted):
        raise SystemExit(
            f"--index-dir {directory} indexes none of the {len(wanted)} evaluation images "
            f"(e.g. {wanted[:2]}); index this dataset's images with `vistrieve index`"
        )
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} evaluation images are not in this index (they count as misses)"
        )
    extra = len(indexed) - (len(wanted) - len(missing))
    if extra:
        notes.append(f"the index holds {extra} images beyond the evaluation set (larger gallery)")
    return notes


# ----------------------------------------------------------------------------- command
def _info(args: argparse.Namespace, corpus: Any | None) -> dict[str, Any]:
    info: dict[str, Any] = {"dataset": args.dataset, "split": args.split}
    if args.dataset == "shapes":
        info["tasks"] = ", ".join(dict.fromkeys(args.task or ["retrieval"]))
        info["seed"] = args.seed
    if corpus is not None:
        texts, _ = corpus.caption_pairs()
        info["images"] = sum(1 for it in corpus.values() if it.image is not None)
        info["captions"] = len(texts)
    return info


def _embeddings(args: argparse.Namespace) -> Any:
    from vistrieve.evals.datasets import load_paired_embeddings
    from vistrieve.evals.runner import evaluate_embedding_sets

    if not args.data:
        raise SystemExit("--dataset embeddings needs --data DIR (image and text .npy files)")
    if args.encoder or args.index_dir or args.grace:
        raise SystemExit("--dataset embeddings scores the stored embeddings; drop --encoder")
    emb = load_paired_embeddings(
        args.data, text_to_image=args.text_to_image, normalize=args.normalize
    )
    info = {
        "dataset": "embeddings",
        "source": str(args.data),
        "images": int(emb.image.shape[0]),
        "texts": int(emb.text.shape[0]),
    }
    return evaluate_embedding_sets(
        {emb.name: emb}, name=emb.name, ks=args.ks, title=f"embeddings {emb.name}", info=info
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``vistrieve eval``; returns the exit code (1 when a method failed).

    Args:
        args: Options parsed by the parser of :func:`add_eval_parser`.
    """
    from vistrieve.evals.runner import evaluate

    tasks = set(args.task or ["retrieval"])
    if args.dataset == "flickr8k" and tasks - {"retrieval", "dialog"}:
        raise SystemExit("--dataset flickr8k has the retrieval and dialog tasks")
    if args.dataset not in ("shapes", "flickr8k") and tasks != {"retrieval"}:
        raise SystemExit(f"--dataset {args.dataset} only has the retrieval task")
    report: Any = None
    methods: dict[str, Any] = {}
    corpus: Any = None
    if args.dataset == "embeddings":
        report = _embeddings(args)
    else:
        specs = _method_specs(args)
        if args.dataset == "shapes":
            corpus, evaluators = _shapes(args)
        else:
            from vistrieve.evals.runner import RetrievalEvaluator

            corpus = _corpus(args)
            evaluators = []
            if "retrieval" in tasks:
                evaluators.append(
                    RetrievalEvaluator(corpus, name=f"{args.dataset}-{args.split}", ks=args.ks)
                )
        methods, notes = _methods(specs, args, corpus)
        if evaluators:
            report = evaluate(
                methods,
                evaluators,
                continue_on_error=args.continue_on_error,
                title=f"{args.dataset} {args.split}",
                info=_info(args, corpus),
            )
            for method, extra in notes.items():
                report.methods[method].notes[:0] = extra
    files = report.save(Path(args.out)) if report is not None else []
    if report is not None:
        _out(report.to_markdown())
    if args.dataset in ("shapes", "flickr8k") and "dialog" in tasks and not args.no_live_dialogs:
        files += _live_dialogs(args, methods, corpus)
    _out("wrote " + ", ".join(str(f) for f in files))
    failed = report is not None and any(r.failed for r in report.methods.values())
    return 1 if failed else 0


# ----------------------------------------------------------------------------- live dialogs
def _agent_parts(
    questioner: str,
    reformulator: str,
    scoring: str,
    args: argparse.Namespace,
    vocab: Any,
    evidence: Any,
    weights: tuple[float, float],
    llm: Any,
) -> dict[str, Any]:
    from vistrieve.query_rewriting.chat import FALLBACK_QUESTIONS
    from vistrieve.query_rewriting.dialog_agent import (
        CandidateQuestioner,
        ConcatReformulator,
        LLMCandidateQuestioner,
        LLMReformulator,
        RuleReformulator,
    )

    base = CandidateQuestioner(evidence)
    q: Any
    if questioner == "candidate":
        q = base
    elif questioner == "llm":
        q = LLMCandidateQuestioner(llm(), base)
    else:

        def q(caption: str, turns: Any, ranking: Any) -> str:
            return FALLBACK_QUESTIONS[len(turns) % len(FALLBACK_QUESTIONS)]

    r: Any
    if reformulator == "rules":
        r = RuleReformulator(vocab)
    elif reformulator == "llm":
        r = LLMReformulator(llm(), vocab)
    else:
        r = ConcatReformulator()
    confirm, deny = weights
    if args.confirm_weight is not None:
        confirm = args.confirm_weight
    if args.deny_weight is not None:
        deny = args.deny_weight
    if scoring == "last":
        confirm = deny = 0.0
    return {
        "questioner": q,
        "reformulator": r,
        "accumulate": scoring == "accumulate",
        "confirm_weight": confirm,
        "deny_weight": deny,
    }


def _live_dialogs(args: argparse.Namespace, methods: dict[str, Any], corpus: Any) -> list[Path]:
    """Live agent dialogs for every method and combination; writes ``dialog_agent.md``/``.json``."""
    import itertools
    import json

    from vistrieve.evals.dialog import CachedUser, caption_dialogs, dialog_table, run_agent_dialogs
    from vistrieve.query_rewriting.dialog_agent import CandidateEvidence, DialogAgent

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "shapes":
        from vistrieve.data.shapes import ShapesWorld
        from vistrieve.recipes.shapes.dialog import ShapesAttributes, shapes_dialogs

        overrides: dict[str, Any] = {"seed": args.seed}
        if args.shapes_n is not None:
            n = args.shapes_n
            overrides.update(
                {f"n_{args.split}": n, "n_composed": min(500, n // 2), "n_dialogs": n // 2}
            )
        setup = shapes_dialogs(ShapesWorld(**overrides), args.split, args.dialogs)
        vocab: Any = ShapesAttributes()
        weights = WEIGHTS["shapes"]
    else:
        from vistrieve.query_rewriting.dialog_agent import CaptionWords

        setup = caption_dialogs(corpus, n_dialogs=args.dialogs, seed=args.seed)
        vocab = CaptionWords()
        weights = WEIGHTS["photos"]
    user = CachedUser(setup.user, out / "dialog_answers.json")
    evidence = CandidateEvidence(vocab, setup.evidence_texts)
    shared: list[Any] = []

    def llm() -> Any:
        if not shared:
            from vistrieve.llm import CachedLLM, ReplayCache, create_llm

            cache = ReplayCache(args.llm_cache) if args.llm_cache else None
            shared.append(CachedLLM(create_llm(args.llm), cache))
        return shared[0]

    combos = list(
        itertools.product(
            dict.fromkeys(args.questioner or ["candidate"]),
            dict.fromkeys(args.reformulator or ["rules"]),
            dict.fromkeys(args.scoring or ["accumulate"]),
        )
    )
    results: dict[str, Any] = {}
    for method, retriever in methods.items():
        for q, r, s in combos:
            parts = _agent_parts(q, r, s, args, vocab, evidence, weights, llm)
            agent = DialogAgent(retriever, evidence=evidence, pool=len(corpus), **parts)
            name = f"{method}, questioner {q}, reformulator {r}, scoring {s}"
            results[name] = run_agent_dialogs(
                agent,
                setup.captions,
                setup.targets,
                user,
                rounds=args.rounds or 5,
                n_gallery=len(corpus),
                progress=False,
            )
    user.save()
    title = (
        f"live dialogs, {args.dataset} {args.split}: {len(corpus)} images, user "
        f"{setup.user.name}; " + "; ".join(setup.notes)
    )
    table = dialog_table(results, k=args.dialog_k, title=title)
    _out(table)
    md = out / "dialog_agent.md"
    md.write_text(table, encoding="utf-8")
    js = out / "dialog_agent.json"
    record = {
        n: {
            **res.metrics(args.dialog_k),
            "seconds": res.seconds,
            "cost": res.cost,
            "example": {
                "caption": setup.captions[0],
                "target": setup.targets[0],
                "turns": [[t.question, t.answer] for t in res.dialogs[0]],
                "queries": res.queries[0],
                "ranks": res.ranks[0].tolist(),
            },
        }
        for n, res in results.items()
    }
    js.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return [md, js]


__all__ = ["DATASETS", "SHAPES_SPLITS", "TASKS", "add_eval_parser", "cmd_eval"]
