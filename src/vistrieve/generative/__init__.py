"""vistrieve.generative."""

from __future__ import annotations
