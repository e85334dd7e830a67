"""vistrieve.retrievers."""

from __future__ import annotations
