"""The shapes world's dialog parts: its simulated users and its attribute vocabulary.

* :class:`SceneAnswerer` / :class:`SceneUser`: answer questions from an image's scene graph.
* :class:`ShapesAttributes`: the attributes the candidate-grounded agent asks about
  (colours, shapes, colour-shape pairs, and each of those in a slot: "a red circle on the
  left"), read from the captions; data for the generic
  :class:`~vistrieve.query_rewriting.dialog_agent.DialogAgent`.
"""

from __future__ import annotations

import re
from typing import Any

from vistrieve.data.shapes import COLOURS, SHAPES

_COLOURS = "|".join(COLOURS)
_SHAPES = "|".join(SHAPES)
_OBJECT = re.compile(
    rf"\b(?:(?:small|large)\s+)?(?:({_COLOURS})\s+)?({_SHAPES})s?\b"
    r"(?:\s+(?:on the|in the)\s+(left|middle|right))?"
)
_COLOUR_ALONE = re.compile(rf"\b({_COLOURS})\b(?!\s+(?:{_SHAPES}))")
_COLOUR_PLACE = re.compile(rf"\b({_COLOURS})\s+shapes?\s+(?:on the|in the)\s+(left|middle|right)\b")
_PLACE_WORDS = frozenset({"on", "the", "in", "shape", "something"})


class SceneAnswerer:
    """Answers questions about a shapes-world image from its scene graph (simulated user)."""

    def __init__(self, world: Any, image_id: str) -> None:
        self.world = world
        self.image_id = image_id

    def __call__(self, question: str) -> str:
        return str(self.world.answer(self.image_id, question))


class SceneUser:
    """The :class:`~vistrieve.evals.dialog.SimulatedUser` of the shapes world: answers any
    target's questions from its scene graph (deterministic, so dialogs replay)."""

    name = "scene-graph"

    def __init__(self, world: Any) -> None:
        self.world = world

    def answer(self, target_id: str, question: str) -> str:
        """The scene graph's answer (``"I don't know"`` for what it cannot parse)."""
        return str(self.world.answer(target_id, question))


def _where(position: str) -> str:
    return "in the middle" if position == "middle" else f"on the {position}"


class ShapesAttributes:
    """The shapes world's attribute vocabulary for the candidate-grounded agent.

    Attributes: ``"red"``, ``"circle"``, ``"red circle"``, ``"circle on the left"``,
    ``"red shape on the left"``, ``"red circle on the left"``. Sizes are left out (the
    scene-graph user ignores size in yes/no questions).
    """

    name = "shapes"
    exact = True
    """Captions drawn from scene graphs: an attribute one caption names is in the image."""

    def attributes(self, text: str) -> frozenset[str]:
        """Attributes named in ``text`` (a caption, a question or an answer)."""
        t = text.lower()
        out: set[str] = set()
        for m in _OBJECT.finditer(t):
            colour, shape, pos = m.group(1), m.group(2), m.group(3)
            out.add(shape)
            if colour:
                out.update({colour, f"{colour} {shape}"})
            if pos:
                out.add(f"{shape} {_where(pos)}")
                if colour:
                    out.update({f"{colour} shape {_where(pos)}", f"{colour} {shape} {_where(pos)}"})
        for m in _COLOUR_PLACE.finditer(t):
            out.add(f"{m.group(1)} shape {_where(m.group(2))}")
        for m in _COLOUR_ALONE.finditer(t):
            out.add(m.group(1))
        return frozenset(out)

    def question(self, attribute: str) -> str:
        """``"is there a red circle on the left?"``; ``"is there anything red?"``."""
        if attribute in COLOURS:
            return f"is there anything {attribute}?"
        return f"is there {'an' if attribute[0] in 'aeiou' else 'a'} {attribute}?"

    def phrase(self, attribute: str) -> str:
        """``"a red circle on the left"``; ``"something red"``."""
        if attribute in COLOURS:
            return f"something {attribute}"
        return f"{'an' if attribute[0] in 'aeiou' else 'a'} {attribute}"

    def parts(self, attribute: str) -> frozenset[str]:
        """Colour, shape and slot words of the attribute."""
        return frozenset(w for w in attribute.split() if w not in _PLACE_WORDS)


__all__ = ["SceneAnswerer", "SceneUser", "ShapesAttributes", "shapes_dialogs"]


def shapes_dialogs(world: Any, split: str, n_dialogs: int | None = None) -> Any:
    """The world's dialogs of ``split`` as a :class:`~vistrieve.evals.dialog.DialogSetup`:
    the opening captions of its dialogs, the scene-graph user, and the gallery's captions
    (drawn from the scene graphs) as the agent's evidence."""
    from vistrieve.evals.dialog import DialogSetup

    data = world.dialogs(split)
    examples = list(data.examples)[:n_dialogs] if n_dialogs else list(data.examples)
    corpus = data.corpus

    def evidence(item_id: str) -> tuple[str, ...]:
        item = corpus.get(item_id)
        return tuple(item.captions) if item is not None else ()

    notes = [
        f"{len(examples)} dialogs of shapes-{split}; the user answers from the target's scene "
        "graph; the agent reads every gallery image's captions"
    ]
    return DialogSetup(
        [e.caption for e in examples],
        [e.target_id for e in examples],
        SceneUser(world),
        evidence,
        notes,
    )
