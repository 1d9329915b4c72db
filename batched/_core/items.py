"""Checks of what a caller hands in with an item: its priority and its length."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._settings import check_length

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["check_priority", "length_of"]


def check_priority(priority: object) -> None:
    """A priority is a number, not a bool, not NaN; the error names the setting."""
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        msg = f"'priority' must be a number (lower is more urgent): {priority!r}"
        raise TypeError(msg)
    if math.isnan(priority):
        msg = f"'priority' must not be NaN: {priority!r}"
        raise ValueError(msg)


def length_of(length_fn: Callable[[Any], Any], item: Any) -> int:
    """``length_fn(item)``, checked; an error names the function and the item."""
    try:
        return check_length(length_fn(item), item, length_fn)
    except Exception as exc:
        exc.add_note(f"raised by length_fn={length_fn!r} for item {item!r}")
        raise
