"""Error types shared by every layer.

`InputError` is the one class the CLI turns into "exit code 2, one clear message":
anything a user can fix by editing their input (a spec, a geometry file, a query).
"""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad user input. The message names what is wrong and where (file, field)."""

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


def shorten(value: Any, limit: int = 80, *, quote: bool = True) -> str:
    """`repr(value)` (or `str` with quote=False) cut to about `limit` characters, saying how
    long it was: a 100,000-character basis name must not become a 100,000-character error."""
    shown = repr(value) if quote else str(value)
    if len(shown) <= limit:
        return shown
    length = f" ({len(value):,} characters)" if isinstance(value, str | bytes) else ""
    return f"{shown[:max(limit - 3, 1)]}...{length}"
