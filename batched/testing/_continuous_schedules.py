"""Hypothesis strategies for :func:`run_continuous`: settings and schedules."""

from __future__ import annotations

import inspect
from typing import Any

from hypothesis import strategies as st

from .._front.continuous import Continuous
from .._strategies import ByLength, ByPriority, Fifo
from ._continuous_records import LEAVE_KINDS, ContinuousSchedule, ReaderPlan
from ._records import CLOSE_KINDS

__all__ = ["continuous_schedules", "continuous_settings"]


def continuous_settings(**fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Valid keyword settings for ``batched.Continuous(step, **settings)``.

    Draws ``batch_size`` 1-6, ``timeout_ms`` 0-10 (whole milliseconds) or ``"auto"``,
    ``max_batch_length`` None or 4-20, ``strategy`` and ``max_queue_size`` None or 1-6.
    A keyword fixes a setting to a value or to your own strategy.

    :raises TypeError: for a keyword ``Continuous`` does not take
    """
    known = set(inspect.signature(Continuous.__init__).parameters) - {"self", "step"}
    parts: dict[str, st.SearchStrategy[Any]] = {
        "batch_size": st.integers(1, 6),
        "timeout_ms": st.integers(0, 10) | st.just("auto"),
        "max_batch_length": st.none() | st.integers(4, 20),
        "strategy": st.sampled_from((Fifo(), ByLength(), ByPriority())),
        "max_queue_size": st.none() | st.integers(1, 6),
    }
    for name, value in fixed.items():
        if name not in known:
            msg = f"Continuous takes no setting {name!r}; known: {sorted(known)}"
            raise TypeError(msg)
        parts[name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
    return st.fixed_dictionaries(parts)


@st.composite
def _reader(draw: st.DrawFn, max_arrival_ms: int, max_values: int, leaves: bool) -> ReaderPlan:
    values = draw(st.integers(1, max_values))
    leave_after = draw(st.none() | st.none() | st.integers(0, values)) if leaves else None
    return ReaderPlan(
        at_ms=draw(st.integers(0, max_arrival_ms)),
        values=values,
        length=draw(st.integers(1, 8)),
        growth=draw(st.sampled_from((0, 0, 1))),
        fail_at=draw(st.none() | st.none() | st.none() | st.integers(0, values - 1)),
        leave_after=leave_after,
        leave_by=draw(st.sampled_from(LEAVE_KINDS)),
        cancel_after_ms=draw(st.none() | st.none() | st.integers(0, 30)) if leaves else None,
        call=draw(st.sampled_from((False, False, True))),
        priority=draw(st.integers(0, 3)),
        wait=draw(st.sampled_from((True, True, True, False))),
    )


@st.composite
def continuous_schedules(
    draw: st.DrawFn,
    *,
    max_readers: int = 8,
    max_arrival_ms: int = 30,
    max_values: int = 8,
    max_step_ms: int = 5,
    leaves: bool = True,
    step_errors: bool = True,
    closes: bool = False,
) -> ContinuousSchedule:
    """A :class:`ContinuousSchedule` of 1 to ``max_readers`` readers.

    Each calls at a whole millisecond up to ``max_arrival_ms`` for an item of 1 to
    ``max_values`` values, of length 1-8 (growing by 0 or 1 per value), failing now and
    then at a random value; with ``leaves``, some stop reading after a random number of
    values (closing or dropping the stream) or are cancelled 0-30 ms after they call;
    some await ``c(item)`` instead, some call with ``wait=False``. Steps last 0 to
    ``max_step_ms`` whole milliseconds; with ``step_errors`` some raise. With
    ``closes``, one schedule in three has the owner end its block early.
    """
    n = draw(st.integers(1, max_readers))
    readers = [draw(_reader(max_arrival_ms, max_values, leaves)) for _ in range(n)]
    step_ms = draw(st.lists(st.integers(0, max_step_ms), max_size=20))
    raises = draw(st.frozensets(st.integers(0, 30), max_size=3)) if step_errors else frozenset()
    kind = draw(st.sampled_from((None,) * 6 + CLOSE_KINDS)) if closes else None
    if kind is None:
        return ContinuousSchedule(readers, step_ms=step_ms, step_raises=raises)
    return ContinuousSchedule(
        readers,
        step_ms=step_ms,
        step_raises=raises,
        close_at_ms=draw(st.integers(0, max_arrival_ms + 10)),
        close_by=kind,
    )
