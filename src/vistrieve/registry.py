"""A generic name -> factory registry with fnmatch listing and close-match suggestions.

Adapted from the pattern of timm's ``_registry.py``: one instance per stage, a decorator to
register a factory under a name, ``create(name, **overrides)`` to build one, and an error
for unknown names that suggests the closest registered names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories that build objects of one stage.

    Args:
        kind: What the registry holds, used in messages ("retriever", "index", ...).

    Example:
        >>> REG: Registry[object] = Registry("thing")
        >>> @REG.register("dummy")
        ... def make_dummy(size: int = 1) -> object:
        ...     return [0] * size
        >>> REG.create("dummy", size=2)
        [0, 0]
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(
        self, name: str, *, help: str | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``.

        Raises:
            ValueError: ``name`` is already registered.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            doc = (factory.__doc__ or "").strip().splitlines()
            self._help[name] = help or (doc[0] if doc else "")
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a no-op when it is not registered), e.g. a plugin's test entry."""
        self._factories.pop(name, None)
        self._help.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``.

        Raises:
            KeyError: unknown name; the message lists close matches.
        """
        try:
            return self._factories[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._factories), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (registered: {known})") from None

    def create(self, name: str, /, **overrides: Any) -> T:
        """Build the object registered under ``name`` with keyword overrides."""
        return self.get(name)(**overrides)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch ``pattern``, sorted."""
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        """One-line description of a registered name."""
        self.get(name)
        return self._help[name]
