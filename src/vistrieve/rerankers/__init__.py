"""vistrieve.rerankers."""

from __future__ import annotations
