"""Run one experiment from its config and publish the table it produced.

Usage::

    python experiments/run.py rerank-shapes            # runs, then rewrites its table
    python experiments/run.py rerank-shapes --dry-run  # prints the commands only
    python experiments/run.py --list

Every result table in ``docs/benchmarks.md`` that an experiment produces sits between
``<!-- experiment NAME: ... -->`` and ``<!-- /experiment NAME -->`` markers, and
``experiments/configs/NAME.toml`` says how to produce it::

    doc = "docs/benchmarks.md"          # where the table goes
    table = "runs/eval-x/report.md"     # the file the last step writes
    demote = 2                          # headings in it go 2 levels down (optional)
    steps = [                           # run in order; "python" and "vistrieve" resolve
      ["vistrieve", "train", "hash", "--out", "runs/hash"],   # to this interpreter
      ["python", "experiments/eval_x.py", "--out", "runs/eval-x"],
    ]

The table is published only when every step succeeds, so a failed run never leaves a
half-written table behind; no number reaches the documentation by hand.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from vistrieve.evals.report import publish_table

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
_HEADING = re.compile(r"^(#+) ", re.MULTILINE)


def load_config(name: str) -> dict[str, Any]:
    """Read and check ``configs/NAME.toml``."""
    path = CONFIGS / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.toml")))
        raise SystemExit(f"no experiment {name!r} (no {path}); known: {known}")
    with path.open("rb") as fh:
        cfg = tomllib.load(fh)
    for key in ("doc", "table", "steps"):
        if key not in cfg:
            raise SystemExit(f"{path}: missing key {key!r}")
    steps = cfg["steps"]
    if not steps or not all(
        isinstance(s, list) and s and all(isinstance(a, str) for a in s) for s in steps
    ):
        raise SystemExit(f"{path}: 'steps' must be a non-empty list of argument lists")
    return cfg


def resolve(step: list[str]) -> list[str]:
    """``python`` and ``vistrieve`` run in this interpreter's environment."""
    head, rest = step[0], step[1:]
    if head == "python":
        return [sys.executable, *rest]
    if head == "vistrieve":
        return [sys.executable, "-m", "vistrieve.cli", *rest]
    return list(step)


def demote(markdown: str, levels: int) -> str:
    """Push every markdown heading ``levels`` levels down (at most ``######``)."""
    if levels <= 0:
        return markdown
    return _HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown)


def run(name: str, *, dry_run: bool = False) -> int:
    """Run experiment ``name``'s steps, then publish its table; returns an exit status."""
    cfg = load_config(name)
    for step in cfg["steps"]:
        argv = resolve(step)
        print("$ " + shlex.join(step), flush=True)
        if dry_run:
            continue
        t0 = time.perf_counter()
        code = subprocess.call(argv, cwd=ROOT)
        print(f"  ({time.perf_counter() - t0:.0f} s, exit {code})", flush=True)
        if code:
            print(f"experiment {name}: step failed; the table was not published", file=sys.stderr)
            return code
    if dry_run:
        return 0
    table = ROOT / cfg["table"]
    if not table.is_file():
        print(f"experiment {name}: the steps did not write {table}", file=sys.stderr)
        return 1
    text = demote(table.read_text(encoding="utf-8"), int(cfg.get("demote", 0)))
    replaced = publish_table(
        ROOT / cfg["doc"], name, text, command=f"python experiments/run.py {name}"
    )
    print(f"{'replaced' if replaced else 'added'} table {name!r} in {cfg['doc']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="experiment (a file in experiments/configs/)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    p.add_argument("--list", action="store_true", help="list the experiments")
    args = p.parse_args(argv)
    if args.list or not args.name:
        for path in sorted(CONFIGS.glob("*.toml")):
            first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
            print(f"{path.stem:24s} {first}")
        return 0
    return run(args.name, dry_run=args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
