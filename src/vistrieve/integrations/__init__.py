"""Adapters to other frameworks (LangChain)."""

from __future__ import annotations
