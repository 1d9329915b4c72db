"""What a ``Continuous`` step returns for each state: go on, or end."""

from __future__ import annotations

from typing import Generic, TypeVar, final

import attrs

__all__ = ["Last", "Next"]

S = TypeVar("S")
R = TypeVar("R")


@final
@attrs.frozen
class Next(Generic[S, R]):
    """A step's outcome for an item that goes on: ``value`` goes to its reader, and the
    next step gets ``state`` in the item's place.

    :ivar value: what the item's reader receives now
    :ivar state: the item's state for the next step
    """

    value: R
    state: S


@final
@attrs.frozen
class Last(Generic[R]):
    """A step's outcome for an item that ends: ``value`` is the last its reader receives;
    the item leaves before the next step and its stream ends.

    :ivar value: what the item's reader receives last
    """

    value: R
