"""Composed-retrieval sets mined from captioned photos: one-word caption edits.

Real composed benchmarks (CIRR, FashionIQ) need annotators to write modification texts. A
captioned photo collection gives a small substitute: when a caption of a reference photo
and a caption of another photo differ in exactly one content word (``"two dogs wrestle in
the grass"`` / ``"two dogs stand in the grass"``), the second photo is a target for the
reference with the modification ``"stand instead of wrestle"``.

Construction (:func:`caption_edit_queries`):

* words are lower-cased alphabetic tokens; *content words* are those outside a short list
  of articles, prepositions, pronouns and auxiliaries;
* a caption pair qualifies when each side has exactly one content word the other lacks,
  they share at least ``min_shared`` content words, and the two words are not forms of one
  another (``bench`` / ``benches``, ``run`` / ``running``);
* all gallery photos reachable from one reference by the same edit are its targets (several
  per query where they exist, as in CIRCO), which removes some false negatives.

Limits, to keep in mind when reading numbers on such a set: the reference and the target
are different photos and differ in much more than the edited word; a gallery photo that fits
the edit but whose captions do not say so counts as a miss; annotators' word choices make
some edits synonyms rather than visual changes (``women`` / ``girls``); and the sets are
small (about a hundred queries from Flickr8k-1k), so differences of a few points are noise.
"""

from __future__ import annotations

import re
from collections import defaultdict

from vistrieve.data.tasks import ComposedDataset, ComposedExample
from vistrieve.types import Corpus, Item

_WORD = re.compile(r"[a-z]+")
STOPWORDS = frozenset(
    """a an the and or of in on at to into onto over under near by with while for from as
    is are was were be being been has have his her their its it this that these those there
    who which what one some up down out off through""".split()
)
"""Words that never count as the edited content word."""


def content_words(caption: str) -> frozenset[str]:
    """The caption's lower-cased words outside :data:`STOPWORDS`."""
    return frozenset(w for w in _WORD.findall(caption.lower()) if w not in STOPWORDS)


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _forms_of_one_word(a: str, b: str) -> bool:
    sa, sb = _stem(a), _stem(b)
    return sa == sb or sa.startswith(sb) or sb.startswith(sa)


def caption_edit(source: str, target: str, min_shared: int = 2) -> tuple[str, str] | None:
    """``(old, new)`` when the captions differ in exactly one content word, else ``None``."""
    a, b = content_words(source), content_words(target)
    gone, added = a - b, b - a
    if len(gone) != 1 or len(added) != 1 or len(a & b) < min_shared:
        return None
    (old,), (new,) = gone, added
    if _forms_of_one_word(old, new):
        return None
    return old, new


def caption_edit_queries(
    references: Corpus,
    gallery: Corpus,
    *,
    min_shared: int = 2,
    name: str = "caption-edits",
) -> ComposedDataset:
    """A composed-retrieval set from one-word caption edits (see the module notes).

    Args:
        references: Captioned photos the queries start from.
        gallery: Captioned photos the targets come from (may be the same corpus; a photo is
            never its own target).
        min_shared: Content words the two captions must share.
        name: Dataset name.

    Returns:
        A dataset whose corpus is the gallery plus the references used (the evaluator drops
        each query's reference from its ranking); modifications read ``"NEW instead of
        OLD"``; each example's metadata holds the edit and one caption pair behind it.

    Raises:
        ValueError: no caption pair qualifies.
    """
    gallery_words = [
        (item_id, cap, content_words(cap))
        for item_id in gallery.ids
        for cap in gallery[item_id].captions
    ]
    by_word: defaultdict[str, list[int]] = defaultdict(list)
    for row, (_, _, words) in enumerate(gallery_words):
        for w in words:
            by_word[w].append(row)
    edits: dict[tuple[str, str, str], dict[str, tuple[str, str]]] = {}
    for ref_id in references.ids:
        for ref_cap in references[ref_id].captions:
            words = content_words(ref_cap)
            # Candidate targets share at least one content word: look only at those rows.
            rows: set[int] = set()
            for w in words:
                rows.update(by_word.get(w, ()))
            for row in sorted(rows):
                tgt_id, tgt_cap, _ = gallery_words[row]
                if tgt_id == ref_id:
                    continue
                edit = caption_edit(ref_cap, tgt_cap, min_shared)
                if edit is None:
                    continue
                edits.setdefault((ref_id, *edit), {}).setdefault(tgt_id, (ref_cap, tgt_cap))
    if not edits:
        raise ValueError(
            f"no caption pair of {len(references)} reference and {len(gallery)} gallery photos "
            f"differs in exactly one content word (min_shared={min_shared}); use larger "
            "corpora or a smaller min_shared"
        )
    examples = []
    used: dict[str, Item] = {}
    for (ref_id, old, new), targets in sorted(edits.items()):
        ref_cap, tgt_cap = next(iter(targets.values()))
        examples.append(
            ComposedExample(
                id=f"{ref_id}:{old}>{new}",
                reference_id=ref_id,
                modification=f"{new} instead of {old}",
                target_ids=tuple(sorted(targets)),
                metadata={"edit": [old, new], "reference_caption": ref_cap,
                          "target_caption": tgt_cap},
            )
        )  # fmt: skip
        used[ref_id] = references[ref_id]
    items = {i: gallery[i] for i in gallery.ids}
    for ref_id, item in used.items():
        items.setdefault(ref_id, item)
    return ComposedDataset(Corpus(items), examples, name)


__all__ = [
    "STOPWORDS",
    "caption_edit",
    "caption_edit_queries",
    "content_words",
]
