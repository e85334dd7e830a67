"""The chat-model interface every LLM backend implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": text}``."""


@runtime_checkable
class ChatLLM(Protocol):
    """A chat model that turns messages into one answer."""

    @property
    def name(self) -> str: ...

    @property
    def decoding(self) -> Mapping[str, Any]: ...

    def complete(self, messages: Sequence[Message]) -> str: ...


def check_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Validated copies of chat messages (a role and text content each).

    Raises:
        ValueError: no messages, or a message without a known role and text content.
    """
    if not messages:
        raise ValueError("no messages to send to the LLM")
    out = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ValueError(f"bad chat message {dict(m)!r}: need a role and text content")
        out.append({"role": str(role), "content": content})
    return out
