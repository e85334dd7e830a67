"""The shapes world's recipes: the embedded CLIP (``shapes-clip``), its Q-Former reranker,
captioner, GRACE model, hashing benchmark, held-out-combination split and simulated user.

The shapes world itself is a dataset (:mod:`vistrieve.data.shapes`); these modules train and
evaluate models on it (``vistrieve train shapes-clip|qformer|captioner|grace``).
"""

from __future__ import annotations
