"""The HTTP service and the chat image-search web page (``vistrieve serve``)."""

from __future__ import annotations
