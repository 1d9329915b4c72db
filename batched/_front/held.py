"""Items held in a core for someone else to answer: the seed's batch generators.

mixedbread's ``BatchGenerator`` and ``AsyncBatchGenerator`` queue items that carry their
own futures, and hand out lists of them for the user to answer. Here they wait in a
:class:`~batched._core.queue.Core` like any call (pools, rule order, ``due``, the cut),
wrapped in a :class:`Held` entry; the core never settles them: the user does, through
the items' own futures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from .._core.calls import INTAKE, QUEUED, CallCore
from .._core.counts import Counts
from .._core.queue import Core
from .._settings import make_settings
from .._strategies import ByPriority, Fifo

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Held", "held_core", "take_cut"]


@final
class Held(CallCore):
    """One generator item in the core; its outcome is set on the item, not here."""

    __slots__ = (
        "_pool",
        "arrival",
        "core",
        "deadline",
        "item",
        "length",
        "priority",
        "seq",
        "state",
    )

    def __init__(self, core: Core, item: Any, priority: float, length: int) -> None:
        self.core = core
        self.item = item
        self.priority = priority
        self.length = length
        self.state = QUEUED
        self._pool = INTAKE

    def deliver(self, value: Any) -> None:  # never called: the core does not settle it
        raise NotImplementedError

    def wake(self) -> None:
        raise NotImplementedError


def held_core(
    clock: Callable[[], float],
    *,
    batch_size: int,
    timeout_ms: float | str,
    by_priority: bool,
    max_batch_length: int | None = None,
) -> Core:
    """A core for a generator's items (validated like a batcher's settings)."""
    if timeout_ms == "auto":  # from untyped callers
        msg = (
            "'timeout_ms' cannot be 'auto' here: it is chosen from the measured cost of a "
            "batch function, and a generator's batches are answered by you; give a number "
            "of milliseconds"
        )
        raise ValueError(msg)
    settings = make_settings(
        None,
        batch_size=batch_size,
        timeout_ms=timeout_ms,
        strategy=ByPriority() if by_priority else Fifo(),
        max_batch_length=max_batch_length,
    )
    return Core(settings, Counts(), clock)


def hold(core: Core, item: Any, priority: float, length: int, now: float) -> None:
    """Queue one item (room is unbounded; the generator's lock or loop orders calls)."""
    core.accept(Held(core, item, priority, length), now)


def take_cut(core: Core, now: float) -> list[Any]:
    """Cut the next batch: the items themselves, in the rules' order."""
    cut = core.cut(now)
    core.done(cut)  # nothing runs here: the user answers the items
    return [entry.item for entry in cut.entries]
