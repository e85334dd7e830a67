"""Shapes-world data for the recipes: the held-out-combination split, the attribute
vocabulary, and rewriter / dialog-summary training pairs."""

from __future__ import annotations

from typing import Any

from vistrieve.query_rewriting.chat import format_dialog
from vistrieve.training.tasks import RewritePair

HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "circle"),
    ("blue", "star"),
    ("green", "triangle"),
    ("yellow", "hexagon"),
    ("purple", "square"),
    ("cyan", "diamond"),
)
"""Colour-shape pairs of the shapes world's held-out-combination split (``shapes-heldout``)."""


def shapes_heldout_corpora(
    n_train: int = 2000, n_val: int = 200, n_test: int = 1000
) -> tuple[Any, Any, Any]:
    """Train / val / test corpora of held-out-combination images (each holds at least one of
    :data:`HELDOUT_COMBOS`): the ``heldout`` splits of worlds seeded 1, 2 and 0, so the three
    share no scene stream; the test part is the seed-0 world's ``heldout`` split."""
    from vistrieve.data.shapes import ShapesWorld

    def part(seed: int, n: int) -> Any:
        world = ShapesWorld(
            seed=seed,
            holdout_combos=HELDOUT_COMBOS,
            n_train=0,
            n_val=0,
            n_test=n,
            n_composed=0,
            n_dialogs=0,
        )
        return world.corpus("heldout")

    return part(1, n_train), part(2, n_val), part(0, n_test)


def shapes_vocabulary() -> list[str]:
    from vistrieve.data.shapes import COLOURS, SHAPES

    return [*COLOURS, *SHAPES]


def shapes_rewrite_pairs(
    world: Any, split: str, *, captioner: Any | None = None
) -> list[RewritePair]:
    """Rewriter pairs from a shapes split's composed triplets: the reference's caption (from
    ``captioner`` when given, as at inference; else its first ground-truth caption), the
    modification, and the target image's first caption."""
    data = world.composed(split)
    refs = [ex.reference_id for ex in data.examples]
    if captioner is not None:
        caps = captioner.caption([data.corpus[r].image for r in refs])
    else:
        caps = [data.corpus[r].captions[0] for r in refs]
    return [
        RewritePair(c, ex.modification, data.corpus[ex.target_ids[0]].captions[0])
        for c, ex in zip(caps, data.examples, strict=True)
    ]


def shapes_dialog_pairs(world: Any, split: str) -> list[RewritePair]:
    """Dialog-summary pairs from a shapes split's scripted dialogs: for every dialog and
    every round r >= 1, (the opening caption, the first r question/answer rounds, the
    target image's first caption). Use with ``prompt=DIALOG_SUMMARY``."""
    data = world.dialogs(split)
    pairs = []
    for d in data.examples:
        target = data.corpus[d.target_id].captions[0]
        for r in range(1, len(d.turns) + 1):
            pairs.append(RewritePair(d.caption, format_dialog(d.turns[:r]), target))
    return pairs
