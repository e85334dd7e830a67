"""vistrieve.encoders."""

from __future__ import annotations
