"""The shapes world's simulated user: answers questions from an image's scene graph."""

from __future__ import annotations

from typing import Any


class SceneAnswerer:
    """Answers questions about a shapes-world image from its scene graph (simulated user)."""

    def __init__(self, world: Any, image_id: str) -> None:
        self.world = world
        self.image_id = image_id

    def __call__(self, question: str) -> str:
        return str(self.world.answer(self.image_id, question))
