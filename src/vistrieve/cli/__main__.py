"""``python -m vistrieve.cli``: the ``vistrieve`` command."""

from __future__ import annotations

from vistrieve.cli.main import main

raise SystemExit(main())
