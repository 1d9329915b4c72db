"""Hypothesis strategies for :func:`run_schedule`: settings, arrivals, batch outcomes."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from .._front.batcher import Batcher
from .._strategies import ByLength, ByPriority, Fifo
from ._records import CLOSE_KINDS, OUTCOME_KINDS, Arrival, BatchOutcome, Schedule, item_key

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

__all__ = ["arrival_schedules", "batcher_settings", "fn_outcomes"]


def _default_settings() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "batch_size": st.integers(1, 8),
        # "auto": the wait chosen per batch, at most 10 ms (the checks know both).
        "timeout_ms": st.integers(0, 10) | st.just("auto"),
        "max_batch_length": st.none() | st.integers(5, 30),
        "strategy": st.sampled_from((Fifo(), ByLength(), ByPriority())),
        "small_batch_threshold": st.integers(0, 3),
        "max_wait_ms": st.integers(0, 50),
        "max_queue_size": st.none() | st.integers(1, 6),
        "max_concurrent_batches": st.integers(1, 3),
        "isolate_errors": st.booleans(),
    }


def batcher_settings(**fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Valid keyword settings for ``batched.Batcher(fn, **settings)``.

    Draws ``batch_size`` 1-8, ``timeout_ms`` 0-10 or ``"auto"`` and ``max_wait_ms`` 0-50
    (whole milliseconds, so events coincide), ``max_batch_length`` None or 5-30, ``strategy``,
    ``small_batch_threshold`` 0-3, ``max_queue_size`` None or 1-6,
    ``max_concurrent_batches`` 1-3 and ``isolate_errors``. A keyword fixes a setting to
    a value or to your own strategy: ``batcher_settings(batch_size=st.just(32),
    length_fn=len)``.

    :raises TypeError: for a keyword ``Batcher`` does not take
    """
    known = set(inspect.signature(Batcher.__init__).parameters) - {"self", "fn"}
    parts = _default_settings()
    for name, value in fixed.items():
        if name not in known:
            msg = f"Batcher takes no setting {name!r}; known: {sorted(known)}"
            raise TypeError(msg)
        parts[name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
    return st.fixed_dictionaries(parts)


@st.composite
def arrival_schedules(
    draw: st.DrawFn,
    items: st.SearchStrategy[Any] | None = None,
    *,
    max_callers: int = 10,
    max_arrival_ms: int = 30,
    max_items: int = 3,
    priorities: st.SearchStrategy[float] | None = None,
    cancellations: bool = True,
    no_wait_calls: bool = False,
    unique_by: Callable[[Any], Hashable] | None = None,
    closes: bool = False,
) -> Schedule:
    """A :class:`Schedule` of 1 to ``max_callers`` callers.

    Each arrives at a whole millisecond up to ``max_arrival_ms``, sends one item (or,
    with ``max_items > 1``, sometimes ``b.many`` of up to ``max_items``), with a
    priority from ``priorities`` (default 0-3); with ``cancellations`` one in three is
    cancelled 0-20 ms after it calls; with ``no_wait_calls`` one in four calls with
    ``wait=False``. Items come from ``items`` (default integers) and are distinct across
    the schedule by ``unique_by`` (default: the item if hashable, else its repr), so the
    strategy must offer enough distinct values. With ``closes``, one schedule in three
    has the owner end its block early, at a whole millisecond up to ``max_arrival_ms +
    10``, by ``exit``, ``cancel`` or ``raise`` alike (see :class:`Schedule`).
    """
    elements = st.integers() if items is None else items
    n = draw(st.integers(1, max_callers))
    many = [max_items > 1 and draw(st.booleans()) for _ in range(n)]
    sizes = [draw(st.integers(1, max_items)) if m else 1 for m in many]
    total = sum(sizes)
    pool = draw(st.lists(elements, min_size=total, max_size=total, unique_by=unique_by or item_key))
    chosen = st.integers(0, 3) if priorities is None else priorities
    arrivals: list[Arrival] = []
    start = 0
    for m, size in zip(many, sizes, strict=True):
        cancel = st.none() | st.none() | st.integers(0, 20) if cancellations else st.none()
        arrivals.append(
            Arrival(
                at_ms=draw(st.integers(0, max_arrival_ms)),
                items=pool[start : start + size],
                many=m,
                priority=draw(chosen),
                cancel_after_ms=draw(cancel),
                wait=draw(st.sampled_from((True, True, True, False))) if no_wait_calls else True,
            )
        )
        start += size
    kind = draw(st.sampled_from((None,) * 6 + CLOSE_KINDS)) if closes else None
    if kind is None:
        return Schedule(arrivals)
    at_ms = draw(st.integers(0, max_arrival_ms + 10))
    return Schedule(arrivals, close_at_ms=at_ms, close_by=kind)


# Weighted: sampled_from is uniform and shrinks towards the first element ("ok").
_WEIGHTS = {
    "ok": 28,
    "raise": 4,
    "short": 2,
    "long": 2,
    "wrong_type": 3,
    "item_failure": 3,
    "base_exception": 1,
}


def fn_outcomes(
    *, kinds: Iterable[str] = OUTCOME_KINDS, max_batches: int = 12, max_duration_ms: int = 10
) -> st.SearchStrategy[tuple[BatchOutcome, ...]]:
    """What the successive calls of the batch function do, for :func:`run_schedule`.

    Up to ``max_batches`` :class:`BatchOutcome` (calls beyond them return results after
    1 ms), each lasting 0 to ``max_duration_ms`` whole milliseconds; mostly ``ok``, the
    other ``kinds`` now and then. ``kinds`` may add ``base_exception`` to
    :data:`OUTCOME_KINDS`. Shrinks towards no plan: every call ``ok`` after 1 ms.
    """
    chosen = list(dict.fromkeys(kinds))
    unknown = set(chosen) - set(_WEIGHTS)
    if unknown or not chosen:
        msg = f"'kinds' must be some of {(*OUTCOME_KINDS, 'base_exception')}: {chosen!r}"
        raise ValueError(msg)
    weighted = [kind for kind in _WEIGHTS if kind in chosen for _ in range(_WEIGHTS[kind])]
    outcome = st.builds(
        BatchOutcome,
        duration_ms=st.integers(0, max_duration_ms),
        kind=st.sampled_from(weighted),
    )
    return st.lists(outcome, max_size=max_batches).map(tuple)
