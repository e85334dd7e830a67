"""vistrieve: image-text retrieval where multimodal and large language models augment a fast first stage."""

from __future__ import annotations

from vistrieve.types import (
    Corpus as Corpus,
    DialogTurn as DialogTurn,
    Hit as Hit,
    Item as Item,
    Query as Query,
)

__version__ = "0.1.0"
