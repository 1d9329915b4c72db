"""Checks of what a caller hands in with an item: its priority and its length."""

from __future__ import annotations

import math
import numbers
import operator
from typing import TYPE_CHECKING, Any

from .._settings import check_length

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["check_priority", "length_of"]


def check_priority(priority: object) -> float:
    """A priority is a real number, not a bool, not NaN; the error names the setting.

    Returns it as the pools compare it: an int for any integer (numpy's too), else a
    float, so that priorities of mixed types order together.
    """
    if isinstance(priority, bool) or not isinstance(priority, int | float | numbers.Real):
        msg = f"'priority' must be a real number (lower is more urgent): {priority!r}"
        raise TypeError(msg)
    if isinstance(priority, numbers.Integral):
        return operator.index(priority)
    value = float(priority)
    if math.isnan(value):
        msg = f"'priority' must not be NaN: {priority!r}"
        raise ValueError(msg)
    return value


def length_of(length_fn: Callable[[Any], Any], item: Any) -> int:
    """``length_fn(item)``, checked; an error names the function and the item."""
    try:
        return check_length(length_fn(item), item, length_fn)
    except Exception as exc:
        exc.add_note(f"raised by length_fn={length_fn!r} for item {item!r}")
        raise
