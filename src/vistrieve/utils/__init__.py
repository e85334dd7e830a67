"""Small shared helpers: atomic file I/O, image loading, seeding."""

from __future__ import annotations
