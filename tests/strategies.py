"""Hypothesis strategies of this suite, built on ``batched.testing``'s (see TESTING.md).

The core property (``tests/test_properties.py``) draws the widest inputs the kit offers:
every setting, items with lengths (so ``max_batch_length`` bites), callers that give up
or refuse to wait, every kind of batch outcome including a ``BaseException``, and now and
then an owner that ends its block early. All times are whole milliseconds, so events
that should coincide do coincide, which is where the edge cases live.

Everything shrinks towards the simplest run: one caller at 0 ms, every batch ``ok``
after 1 ms, no cancellation, no early close.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from batched.testing import OUTCOME_KINDS, arrival_schedules, batcher_settings, fn_outcomes

if TYPE_CHECKING:
    from batched.testing import BatchOutcome, Schedule

__all__ = ["ITEMS", "core_outcomes", "core_schedules", "core_settings", "item_length"]

ITEMS = st.tuples(st.integers(0, 99), st.integers(1, 10))
"""An item: ``(id, length)``; items are distinct across a schedule."""

item_length = operator.itemgetter(1)
"""The ``length_fn`` of the core property: an item's second element."""


def core_settings(**fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Every setting ``batcher_settings`` draws, lengths measured by ``item_length``."""
    return batcher_settings(**{"length_fn": item_length, **fixed})


def core_schedules(max_callers: int = 14) -> st.SearchStrategy[Schedule]:
    """Up to ``max_callers`` callers of one or more items, cancellations, ``wait=False``
    calls, and one schedule in three that closes the block early (exit, cancel, raise)."""
    return arrival_schedules(ITEMS, max_callers=max_callers, no_wait_calls=True, closes=True)


def core_outcomes(max_batches: int = 12) -> st.SearchStrategy[tuple[BatchOutcome, ...]]:
    """Every kind of batch outcome, ``base_exception`` included."""
    return fn_outcomes(kinds=(*OUTCOME_KINDS, "base_exception"), max_batches=max_batches)
