"""``vistrieve search`` (one query, a batch file, or an interactive loop that loads the
models once) and ``vistrieve pipeline check``.

Search takes a saved retriever directory or a pipeline spec (``--pipeline SPEC``). Batch
mode reads one query per line of ``--queries FILE`` (plain text, or a JSON object
``{"text", "image", "dialog", "id"}``) and writes one JSON line per query: its id, the hits
with every stage's score, and the time of each stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from vistrieve.types import Hit, Query


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def load_target(args: argparse.Namespace) -> Any:
    """The retriever or pipeline a search/serve/eval command names."""
    if getattr(args, "pipeline", None):
        from vistrieve.pipeline import RetrievalPipeline

        return RetrievalPipeline.from_spec(args.pipeline, device=args.device)
    if not args.index_dir:
        raise SystemExit("give a saved retriever directory or --pipeline SPEC")
    from vistrieve.retrievers import load_retriever

    return load_retriever(args.index_dir, device=args.device)


def parse_line(line: str, n: int) -> Query:
    """One query of a batch file: plain text, or a JSON object.

    Raises:
        ValueError: a malformed JSON object (the line number is named).
    """
    text = line.strip()
    if text.startswith("{"):
        try:
            return Query.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"query line {n}: {exc}") from exc
    return Query(text=text, id=str(n))


def hit_record(hit: Hit) -> dict[str, Any]:
    """A hit as JSON: id, final score, every stage's score and its metadata (rank, caption,
    image path ...)."""
    return {"id": hit.id, "score": hit.score, "scores": dict(hit.scores), **dict(hit.metadata)}


def _batches(lines: Iterable[str], size: int) -> Iterator[list[tuple[int, str]]]:
    batch: list[tuple[int, str]] = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            batch.append((n, line))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def search_lines(
    target: Any, lines: Iterable[str], out: TextIO, *, k: int, batch_size: int = 256, **kw: Any
) -> int:
    """Answer every query line, writing one JSON line each; returns the number answered."""
    done = 0
    for batch in _batches(lines, batch_size):
        queries = [parse_line(line, n) for n, line in batch]
        t0 = time.perf_counter()
        hits = target.retrieve(queries, k=k, **kw)
        seconds = time.perf_counter() - t0
        timings = dict(getattr(target, "last_timings", {}) or {"retrieve": seconds})
        for q, (n, _), hs in zip(queries, batch, hits, strict=True):
            record = {
                "query": q.id if q.id is not None else str(n),
                "hits": [hit_record(h) for h in hs],
                "batch_seconds": timings,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        done += len(batch)
    return done


def cmd_search(args: argparse.Namespace) -> int:
    """Run ``vistrieve search``."""
    if args.pipeline and args.index_dir and not args.text:
        args.text, args.index_dir = args.index_dir, None  # `search --pipeline SPEC "a dog"`
    if args.k < 1:
        raise SystemExit(f"-k must be positive, got {args.k}")
    target = load_target(args)
    # Only retrievers with a caption index take target="text" (GRACE answers with images).
    kw = {"target": args.target} if args.target != "image" else {}
    if args.queries:
        with open(args.queries, encoding="utf-8") as src:
            if args.output:
                with open(args.output, "w", encoding="utf-8") as dst:
                    n = search_lines(target, src, dst, k=args.k, **kw)
                sys.stderr.write(f"answered {n} queries into {args.output}\n")
            else:
                search_lines(target, src, sys.stdout, k=args.k, **kw)
        return 0
    if args.interactive:
        sys.stderr.write("models loaded; one query per line (text or JSON), Ctrl-D to quit\n")
        for n, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                query = parse_line(line, n)
                hits = target.retrieve([query], k=args.k, **kw)[0]
            except (ValueError, KeyError, TypeError) as exc:
                sys.stderr.write(f"error: {exc}\n")
                continue
            _print_hits(query, hits, args)
        return 0
    if args.image and args.text:
        query = Query(text=args.text, image=args.image)
    elif args.image:
        query = Query(image=args.image)
    elif args.text:
        query = Query(text=args.text)
    else:
        raise SystemExit(
            "give a query text, --image PATH, or both (composed query); or --queries FILE / "
            "--interactive"
        )
    _print_hits(query, target.retrieve([query], k=args.k, **kw)[0], args)
    return 0


def _print_hits(query: Query, hits: list[Hit], args: argparse.Namespace) -> None:
    if args.json:
        _out(json.dumps([hit_record(h) for h in hits], indent=2, ensure_ascii=False))
        return
    _out(f"{query.kind} query -> top {len(hits)} {args.target}s")
    for r, h in enumerate(hits):
        extra = h.metadata.get("caption") or h.metadata.get("uri") or ""
        stages = (
            "  ".join(f"{k}={v:+.3f}" for k, v in h.scores.items()) if len(h.scores) > 1 else ""
        )
        _out(f"{r + 1:>3}. {h.score:+.4f}  {h.id}  {extra}" + (f"  [{stages}]" if stages else ""))


def add_search_parser(sub: Any) -> None:
    """Add ``vistrieve search`` to the CLI's subparsers."""
    p = sub.add_parser(
        "search",
        help="search a saved index or a pipeline (one query, a batch file, or interactively)",
    )
    p.add_argument("index_dir", nargs="?", help="a directory written by `vistrieve index`")
    p.add_argument("text", nargs="?", help="query text (the modification with --image)")
    p.add_argument("--pipeline", metavar="SPEC", help="a pipeline spec (.toml/.json)")
    p.add_argument("--image", help="query image (reference image with a text)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--target", choices=["image", "text"], default="image")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    p.add_argument("--queries", metavar="FILE", help="batch: one query per line (text or JSON)")
    p.add_argument("--output", metavar="FILE", help="batch: JSON lines here (default stdout)")
    p.add_argument(
        "--interactive", action="store_true", help="load the models once, read queries on stdin"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_search)


# ----------------------------------------------------------------------------- pipeline
def cmd_pipeline_check(args: argparse.Namespace) -> int:
    """``vistrieve pipeline check SPEC``: validate, build, and describe every stage."""
    from vistrieve.pipeline import RetrievalPipeline
    from vistrieve.pipeline.spec import load_spec

    spec = load_spec(args.spec)  # fails fast, naming the bad key, before any model loads
    pipe = RetrievalPipeline.from_spec(args.spec, device=args.device)
    _out(f"pipeline {spec['name']!r}: {args.spec} is valid")
    for row in pipe.parts.describe():
        extra = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("stage", "kind"))
        _out(f"  {row['stage']:<22} {row['kind']}" + (f"  ({extra})" if extra else ""))
    from vistrieve.evals.runner import read_counters

    counters = read_counters(pipe)
    _out("cost counters (cumulative, read by `vistrieve eval`): " + (", ".join(counters) or "none"))
    if args.query:
        hits = pipe.retrieve([Query(text=args.query)], k=args.k)[0]
        _out(f"trial query {args.query!r}: " + ", ".join(h.id for h in hits))
        _out("stage seconds: " + json.dumps({k: round(v, 4) for k, v in pipe.last_timings.items()}))
    return 0


def add_pipeline_parser(sub: Any) -> None:
    """Add ``vistrieve pipeline check`` to the CLI's subparsers."""
    p = sub.add_parser("pipeline", help="pipeline specs: check one")
    psub = p.add_subparsers(dest="action", required=True)
    c = psub.add_parser("check", help="validate a spec, build it and print its stages")
    c.add_argument("spec", help="a pipeline spec (.toml/.json)")
    c.add_argument("--query", help="also run this text query through the pipeline")
    c.add_argument("-k", type=int, default=5)
    c.add_argument("--device", default="cpu")
    c.set_defaults(func=cmd_pipeline_check)


__all__ = ["add_pipeline_parser", "add_search_parser", "hit_record", "load_target", "search_lines"]
