"""The ``vistrieve`` command line (the only place that parses command-line options).

``main(argv)`` returns an exit code so tests can call it; ``python -m vistrieve.cli`` runs
it too (as ``accelerate launch -m vistrieve.cli finetune ...`` does).
"""

from __future__ import annotations

from vistrieve.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
