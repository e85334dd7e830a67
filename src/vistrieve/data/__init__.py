"""vistrieve.data."""

from __future__ import annotations
