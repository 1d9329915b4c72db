"""Typing helpers that cost nothing at runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["deprecated"]

if TYPE_CHECKING:
    # typing_extensions is no runtime dependency: type checkers bring their own stubs.
    from typing_extensions import deprecated
else:

    def deprecated(message, /, *, category=None, stacklevel=1):
        """At runtime a no-op: the mark is for type checkers, on overloads only. Type
        checkers show ``message`` only when it is a string literal at the call."""
        return lambda fn: fn

