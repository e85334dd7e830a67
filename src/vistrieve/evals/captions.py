"""Caption quality: BLEU-1..4 and CIDEr-D against human references, by ``pycocoevalcap``.

The scores are the COCO caption evaluation's (``pycocoevalcap``, the package behind the
published numbers), computed on texts tokenised the way its Java PTB tokenizer does for
plain English captions: lower-cased, split into words, punctuation dropped. Only the
Java-free scorers are used (BLEU and CIDEr-D), so no Java runtime is needed; METEOR and SPICE
are not reported. Install with ``pip install "vistrieve[captions]"``.

CIDEr-D's document frequencies come from the references of the evaluated set, as in the
COCO toolkit, so a CIDEr value is only comparable between runs on the same references.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_caption(text: str) -> str:
    """Lower-cased words joined by single spaces, punctuation dropped (``"A dog, running."`` ->
    ``"a dog running"``)."""
    return " ".join(_WORD.findall(str(text).lower()))


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr-D of one predicted caption per image against its references.

    Args:
        predictions: One caption per image.
        references: The human captions of each image (at least one each).

    Returns:
        ``{"BLEU-1": ..., "BLEU-4": ..., "CIDEr": ...}`` on a 0..100 scale (BLEU x 100 and
        CIDEr-D x 100, the convention of captioning papers).

    Raises:
        ValueError: different lengths, no images, an image without references, or an empty
            prediction.
        ImportError: ``pycocoevalcap`` is not installed.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} reference lists; "
            "give one caption per image"
        )
    if not predictions:
        raise ValueError("no captions to score")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as exc:
        raise ImportError(
            'caption metrics need pycocoevalcap: pip install "vistrieve[captions]"'
        ) from exc
    res: dict[str, list[str]] = {}
    gts: dict[str, list[str]] = {}
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        refs_tok = [tokenize_caption(r) for r in refs]
        refs_tok = [r for r in refs_tok if r]
        if not refs_tok:
            raise ValueError(f"image {i} has no reference caption with words")
        pred_tok = tokenize_caption(pred)
        if not pred_tok:
            raise ValueError(f"the prediction for image {i} ({pred!r}) has no words")
        res[str(i)] = [pred_tok]
        gts[str(i)] = refs_tok
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"BLEU-{n + 1}": 100.0 * float(b) for n, b in enumerate(bleu)}
    out["CIDEr"] = 100.0 * float(cider)
    return out


__all__ = ["caption_metrics", "tokenize_caption"]
