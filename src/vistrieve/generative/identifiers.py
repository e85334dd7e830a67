"""Image identifiers for generative retrieval (GRACE).

Every image in the corpus gets a short text identifier that a language model learns to
generate. Five schemes, as in GRACE (Li et al., 2024):

* ``numeric``: a random integer per image ("1207");
* ``string``: a random fixed-length letter string per image ("qkdw");
* ``semantic``: the content words of a caption ("red circle blue square");
* ``structured``: the path of the image in a hierarchical k-means tree over its image
  embedding ("3 0 7"), so that similar images share prefixes;
* ``atomic``: one new vocabulary token per image ("<img_17>").

Identifiers are unique within a corpus; where a scheme produces the same text for two images
(``semantic``, deep ``structured`` leaves) the later image in corpus order gets a
deterministic suffix (" 2", " 3", ...). Every builder is deterministic given its inputs and
seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMES = ("numeric", "string", "semantic", "structured", "atomic")
_STOP = frozenset("a an the and of is are with there in on to it its this that".split())


class IdentifierError(ValueError):
    """An identifier scheme cannot be built or does not fit a tokenizer."""


@dataclass
class Identifiers:
    """A one-to-one map between corpus item ids and identifier texts.

    Args:
        scheme: Which builder made them (one of :data:`SCHEMES`).
        by_item: Item id -> identifier text, in corpus order.
        new_tokens: Tokens the scheme adds to a tokenizer (``atomic`` only).
        params: The builder's settings, for reports and for extending the map later.
    """

    scheme: str
    by_item: dict[str, str]
    new_tokens: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._item: dict[str, str] = {}
        for item, ident in self.by_item.items():
            if ident in self._item:
                raise IdentifierError(
                    f"identifier {ident!r} is given to both {self._item[ident]!r} and {item!r}"
                )
            self._item[ident] = item

    def __len__(self) -> int:
        return len(self.by_item)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.by_item

    def __getitem__(self, item_id: str) -> str:
        try:
            return self.by_item[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} has no identifier") from None

    def item_of(self, identifier: str) -> str | None:
        """The item an identifier names, or None."""
        return self._item.get(identifier)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (see :meth:`from_dict`)."""
        return {
            "scheme": self.scheme,
            "by_item": dict(self.by_item),
            "new_tokens": list(self.new_tokens),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identifiers:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                scheme=str(data["scheme"]),
                by_item={str(k): str(v) for k, v in data["by_item"].items()},
                new_tokens=[str(t) for t in data.get("new_tokens", [])],
                params=dict(data.get("params", {})),
            )
        except KeyError as exc:
            raise IdentifierError(f"identifier file lacks the field {exc}") from None


def _check_ids(item_ids: Sequence[str]) -> list[str]:
    ids = [str(i) for i in item_ids]
    seen: set[str] = set()
    dup = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if dup:
        raise IdentifierError(
            f"duplicate image ids {sorted(set(dup))[:5]}: every image needs its own id"
        )
    if not ids:
        raise IdentifierError("no images to give identifiers to")
    return ids


def _dedupe(texts: Sequence[str], taken: set[str] | None = None) -> list[str]:
    """Suffix repeats with " 2", " 3", ... in order, skipping texts already taken."""
    used = set(taken or ())
    out = []
    for t in texts:
        cand, n = t, 1
        while cand in used:
            n += 1
            cand = f"{t} {n}"
        used.add(cand)
        out.append(cand)
    return out


def numeric_identifiers(item_ids: Sequence[str], *, seed: int = 0) -> Identifiers:
    """A random permutation of 0..N-1, written in decimal, one number per image."""
    ids = _check_ids(item_ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    return Identifiers(
        "numeric", {i: str(int(p)) for i, p in zip(ids, perm, strict=True)}, params={"seed": seed}
    )


def _letters(codes: Sequence[int], sep: str) -> str:
    return sep.join(chr(ord("a") + int(c)) for c in codes)


def string_identifiers(
    item_ids: Sequence[str], *, length: int | None = None, seed: int = 0, sep: str = ""
) -> Identifiers:
    """Random lower-case letter strings of one length, unique by construction.

    Args:
        item_ids: Images, in corpus order.
        length: Letters per identifier; default the smallest length with at least 10x more
            strings than images (so identifiers stay sparse).
        seed: Sampling seed.
        sep: Between letters: ``" "`` makes every letter its own word, which a word-level
            vocabulary can spell ("q k d"); identifiers added later keep it.
    """
    ids = _check_ids(item_ids)
    if length is None:
        length = max(2, math.ceil(math.log(10 * len(ids), 26)))
    if 26**length < len(ids):
        raise IdentifierError(
            f"{len(ids)} images do not fit in {26**length} strings of {length} letters; "
            "raise length"
        )
    codes = np.random.default_rng(seed).choice(26**length, size=len(ids), replace=False)

    def digits(n: int) -> list[int]:
        out = []
        for _ in range(length):
            n, r = divmod(n, 26)
            out.append(r)
        return out

    return Identifiers(
        "string",
        {i: _letters(digits(int(c)), sep) for i, c in zip(ids, codes, strict=True)},
        params={"seed": seed, "length": length, "sep": sep},
    )


def semantic_text(caption: str, max_words: int = 8) -> str:
    """The content words of a caption, lower-cased, at most ``max_words``."""
    words = [w for w in re.findall(r"[a-z0-9]+", caption.lower()) if w not in _STOP]
    return " ".join(words[:max_words])


def semantic_identifiers(
    item_ids: Sequence[str],
    captions: Sequence[str],
    *,
    max_words: int = 8,
    taken: set[str] | None = None,
) -> Identifiers:
    """Identifiers from one caption per image: its content words (see :func:`semantic_text`).

    Images whose captions reduce to the same words get " 2", " 3", ... in corpus order.
    """
    ids = _check_ids(item_ids)
    if len(captions) != len(ids):
        raise IdentifierError(f"{len(ids)} images but {len(captions)} captions")
    texts = [semantic_text(c, max_words) or "image" for c in captions]
    return Identifiers(
        "semantic",
        dict(zip(ids, _dedupe(texts, taken), strict=True)),
        params={"max_words": max_words},
    )


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns a label per row."""
    n = len(x)
    centres = [x[int(rng.integers(n))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        idx = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[idx])
        d2 = np.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        dist = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
        new = dist.argmin(1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(0)
    # Renumber clusters by first appearance so that labels do not depend on seeding order.
    order = {int(v): i for i, v in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[int(v)] for v in labels])


def structured_identifiers(
    item_ids: Sequence[str],
    embeddings: np.ndarray,
    *,
    branching: int = 10,
    leaf_size: int | None = None,
    max_depth: int = 6,
    seed: int = 0,
) -> Identifiers:
    """Hierarchical k-means paths over image embeddings (the DSI / GRACE structured id).

    Each level splits a cluster into ``branching`` parts with k-means until a cluster holds
    at most ``leaf_size`` images (default ``branching``), whose members then get their
    position as the last digit. The identifier is the digits joined by spaces ("3 0 7").

    Args:
        item_ids: Images, in the order of ``embeddings``' rows.
        embeddings: (N, d) image embeddings.
        branching: Clusters per level (at least 2).
        leaf_size: Largest cluster that is not split further.
        max_depth: Deepest level; clusters still too large there enumerate their members.
        seed: k-means seed.
    """
    ids = _check_ids(item_ids)
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(ids):
        raise IdentifierError(
            f"embeddings must be (N, d) with N = {len(ids)} images, got {tuple(x.shape)}"
        )
    if branching < 2:
        raise IdentifierError(f"branching must be at least 2, got {branching}")
    leaf = branching if leaf_size is None else leaf_size
    if leaf < 1 or max_depth < 1:
        raise IdentifierError("leaf_size and max_depth must be positive")
    rng = np.random.default_rng(seed)
    paths: list[list[int]] = [[] for _ in ids]

    def split(rows: np.ndarray, depth: int) -> None:
        if len(rows) <= leaf or depth >= max_depth:
            for pos, r in enumerate(rows):
                paths[r].append(pos)
            return
        labels = _kmeans(x[rows], min(branching, len(rows)), rng)
        if len(set(labels.tolist())) == 1:  # identical embeddings: enumerate instead
            for pos, r in enumerate(rows):
                paths[r].append(pos)
            return
        for j in sorted(set(labels.tolist())):
            members = rows[labels == j]
            for r in members:
                paths[r].append(j)
            split(members, depth + 1)

    split(np.arange(len(ids)), 0)
    texts = [" ".join(str(d) for d in p) for p in paths]
    return Identifiers(
        "structured",
        dict(zip(ids, _dedupe(texts), strict=True)),
        params={"branching": branching, "leaf_size": leaf, "max_depth": max_depth, "seed": seed},
    )


def atomic_identifiers(item_ids: Sequence[str], *, start: int = 0) -> Identifiers:
    """One new token per image, ``<img_0>``, ``<img_1>``, ... (added to the tokenizer)."""
    ids = _check_ids(item_ids)
    toks = [f"<img_{start + n}>" for n in range(len(ids))]
    return Identifiers(
        "atomic", dict(zip(ids, toks, strict=True)), new_tokens=toks, params={"start": start}
    )


def build_identifiers(
    scheme: str,
    item_ids: Sequence[str],
    *,
    captions: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    seed: int = 0,
    **options: Any,
) -> Identifiers:
    """Build identifiers with the named scheme (see :data:`SCHEMES`).

    ``semantic`` needs one caption per image; ``structured`` needs image embeddings.
    """
    if scheme == "numeric":
        return numeric_identifiers(item_ids, seed=seed)
    if scheme == "string":
        return string_identifiers(item_ids, seed=seed, **options)
    if scheme == "semantic":
        if captions is None:
            raise IdentifierError("the semantic scheme needs one caption per image (captions=)")
        return semantic_identifiers(item_ids, captions, **options)
    if scheme == "structured":
        if embeddings is None:
            raise IdentifierError("the structured scheme needs image embeddings (embeddings=)")
        return structured_identifiers(item_ids, embeddings, seed=seed, **options)
    if scheme == "atomic":
        return atomic_identifiers(item_ids, **options)
    raise IdentifierError(f"unknown identifier scheme {scheme!r}; choose one of {SCHEMES}")


def extend_identifiers(
    identifiers: Identifiers,
    item_ids: Sequence[str],
    *,
    captions: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    seed: int = 1,
) -> Identifiers:
    """Identifiers for images added after training, disjoint from the existing ones.

    ``numeric`` continues after the largest number; ``string`` draws unused strings;
    ``semantic`` suffixes clashes; ``atomic`` adds new tokens; ``structured`` puts each new
    image under the existing path of its nearest neighbour's parent, as a new leaf
    (``embeddings`` must then hold the new images first and then the existing ones, in
    ``identifiers`` order, so that neighbours can be found).
    """
    new = _check_ids(item_ids)
    clash = [i for i in new if i in identifiers]
    if clash:
        raise IdentifierError(f"images {clash[:5]} already have identifiers")
    taken = set(identifiers.by_item.values())
    out: dict[str, str] = {}
    new_tokens: list[str] = []
    s = identifiers.scheme
    if s == "numeric":
        start = max(int(v) for v in taken) + 1
        out = {i: str(start + n) for n, i in enumerate(new)}
    elif s == "string":
        length = int(identifiers.params["length"])
        sep = str(identifiers.params.get("sep", ""))
        rng = np.random.default_rng(seed)
        for i in new:
            while True:
                cand = _letters(rng.integers(26, size=length).tolist(), sep)
                if cand not in taken:
                    break
            taken.add(cand)
            out[i] = cand
    elif s == "semantic":
        if captions is None:
            raise IdentifierError("new semantic identifiers need captions")
        ext = semantic_identifiers(
            new, captions, max_words=int(identifiers.params.get("max_words", 8)), taken=taken
        )
        out = ext.by_item
    elif s == "atomic":
        start = int(identifiers.params.get("start", 0)) + len(identifiers.new_tokens)
        ext = atomic_identifiers(new, start=start)
        out, new_tokens = ext.by_item, ext.new_tokens
    elif s == "structured":
        if embeddings is None or len(embeddings) != len(new) + len(identifiers):
            raise IdentifierError(
                "new structured identifiers need embeddings of the new images followed by "
                "those of the existing ones"
            )
        e = np.asarray(embeddings, dtype=np.float64)
        old_ids = list(identifiers.by_item)
        d = ((e[: len(new), None] - e[None, len(new) :]) ** 2).sum(-1)
        texts = []
        for r in range(len(new)):
            parent = identifiers.by_item[old_ids[int(d[r].argmin())]].rsplit(" ", 1)[0]
            texts.append(parent)
        # A new leaf under the neighbour's parent: the next free last digit there.
        for i, parent in zip(new, texts, strict=True):
            n = 0
            while f"{parent} {n}" in taken:
                n += 1
            out[i] = f"{parent} {n}"
            taken.add(out[i])
    else:
        raise IdentifierError(f"unknown identifier scheme {s!r}")
    return Identifiers(
        s,
        {**identifiers.by_item, **out},
        new_tokens=[*identifiers.new_tokens, *new_tokens],
        params=dict(identifiers.params),
    )
