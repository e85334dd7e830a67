"""vistrieve.query_rewriting."""

from __future__ import annotations
