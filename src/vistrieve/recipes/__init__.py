"""Recipes: the experiments and shipped models built on the library (the shapes world's).

Recipes sit above the library and training layers: they may name concrete datasets,
models and settings; nothing in the library imports them.
"""

from __future__ import annotations
