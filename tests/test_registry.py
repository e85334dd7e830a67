from __future__ import annotations

import pytest

from vistrieve.registry import Registry


def test_register_create_list_and_suggest() -> None:
    reg: Registry[list[int]] = Registry("thing")

    @reg.register("alpha-small")
    def small(n: int = 1) -> list[int]:
        """A small thing."""
        return [0] * n

    reg.register("alpha-large", help="big")(lambda: [1])
    reg.register("beta")(lambda: [2])
    assert reg.create("alpha-small", n=3) == [0, 0, 0]
    assert reg.list("alpha*") == ["alpha-large", "alpha-small"]
    assert reg.list() == ["alpha-large", "alpha-small", "beta"]
    assert reg.describe("alpha-small") == "A small thing."
    assert reg.describe("alpha-large") == "big"
    assert "beta" in reg
    with pytest.raises(KeyError, match="did you mean 'alpha-small'"):
        reg.create("alpha-smal")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("beta")(lambda: [3])
