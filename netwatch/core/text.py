"""Values quoted in messages. Pure."""

from __future__ import annotations

from typing import Any


def shown(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: an error message never echoes 64 KiB back,
    and its control characters are escaped."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
