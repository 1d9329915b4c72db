"""Strategies order the items that wait; each ``Batcher`` makes its own pool from one.

A pool holds :class:`Entry` objects and cuts batches from them. The rules that apply
around every strategy (overdue items first, small calls before bulk ones) live in the
batcher, not here, so a user's strategy only decides the order.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, final, runtime_checkable

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ByDeadline",
    "ByLength",
    "ByPriority",
    "Entry",
    "Fifo",
    "Pool",
    "PriorityStrategy",
    "Strategy",
]


class Entry:
    """One waiting item, as a pool sees it.

    A batcher may hand a pool instances of private subclasses; a pool only reads the
    attributes below.

    :param item: the item itself
    :param length: its length, as counted against ``max_batch_length``
    :param priority: its caller's priority (lower is more urgent)
    :param arrival: when it was accepted, on the anyio clock
    :param seq: its place in arrival order (unique within one batcher)
    :param deadline: its caller's deadline on the anyio clock (``math.inf`` when none);
        set before the entry enters a pool only under :class:`ByDeadline`
    """

    __slots__ = (
        "_call",
        "_index",
        "_pool",
        "arrival",
        "deadline",
        "item",
        "length",
        "priority",
        "seq",
    )

    def __init__(
        self,
        item: Any,
        length: int = 1,
        priority: float = 0,
        arrival: float = 0.0,
        seq: int = 0,
        deadline: float = math.inf,
    ) -> None:
        self.item = item
        self.length = length
        self.priority = priority
        self.arrival = arrival
        self.seq = seq
        self.deadline = deadline
        self._call: Any = None
        self._index = 0
        self._pool: Any = None  # managed by the batcher

    def __repr__(self) -> str:
        return (
            f"Entry({self.item!r}, length={self.length}, priority={self.priority}, "
            f"arrival={self.arrival}, seq={self.seq})"
        )


@runtime_checkable
class Pool(Protocol):
    """The entries waiting in one batcher, in a strategy's order.

    A batcher calls these from one task only; none of them may block.
    """

    def add(self, entry: Entry) -> None:
        """Take in a new entry. Entries arrive in ``seq`` order."""

    def remove(self, entry: Entry) -> None:
        """Let go of an entry that is in the pool (its caller left, or it leaves overdue)."""

    def __len__(self) -> int:
        """The number of entries in the pool."""

    def oldest(self) -> Entry | None:
        """The entry that arrived first (lowest ``seq``), or ``None`` when empty."""

    def cut(self, max_items: int, budget: float) -> list[Entry]:
        """Remove and return the next entries in the strategy's order.

        Take at most ``max_items``; stop at the first entry whose ``length`` exceeds what
        is left of ``budget`` (never skip it: it stays first for the next cut).
        """


@runtime_checkable
class Strategy(Protocol):
    """Configuration that makes a fresh :class:`Pool` for each batcher."""

    def new_pool(self) -> Pool:
        """Return a new, empty pool."""


@final
class _FifoPool:
    # A deque with lazy removal: removals are rare (cancelled callers), pops are not,
    # and a dict used as a queue rescans its deleted prefix on every pop. Removed entries
    # are dropped for good once they outnumber the live ones: behind a live entry that
    # stays first they would otherwise be kept, however many callers come and leave.
    __slots__ = ("_queue", "_removed", "add")

    def __init__(self) -> None:
        self._queue: deque[Entry] = deque()
        self._removed: set[Entry] = set()
        # add() is the deque's own append: no frame of ours per item.
        self.add: Callable[[Entry], None] = self._queue.append

    def remove(self, entry: Entry) -> None:
        removed = self._removed
        removed.add(entry)
        if 2 * len(removed) > len(self._queue):  # amortised O(1) per removal
            self._compact()

    def _compact(self) -> None:
        queue, removed = self._queue, self._removed
        live = [entry for entry in queue if entry not in removed]
        queue.clear()  # in place: add() is bound to this deque
        queue.extend(live)
        removed.clear()

    def __len__(self) -> int:
        return len(self._queue) - len(self._removed)

    def _skip_removed(self) -> None:
        queue, removed = self._queue, self._removed
        while removed and queue and queue[0] in removed:
            removed.discard(queue.popleft())

    def oldest(self) -> Entry | None:
        self._skip_removed()
        return self._queue[0] if self._queue else None

    def cut(self, max_items: int, budget: float) -> list[Entry]:
        queue, removed = self._queue, self._removed
        if not removed and budget == math.inf:
            # Nothing to skip and no budget to stop at: the common case, in one pass.
            if max_items >= len(queue):
                everything = list(queue)
                queue.clear()
                return everything
            popleft = queue.popleft
            return [popleft() for _ in range(max_items)]
        out: list[Entry] = []
        while queue and len(out) < max_items:
            entry = queue[0]
            if removed and entry in removed:
                removed.discard(queue.popleft())
                continue
            if entry.length > budget:
                break
            budget -= entry.length
            out.append(queue.popleft())
        return out


@final
class _KeyedPool:
    # A heap ordered by (key, seq) keeps equal keys in arrival order; a deque in arrival
    # order answers oldest(). Both drop entries lazily, checked against ``_live``, and are
    # rebuilt once they hold more dead entries (removed, or cut: the deque) than live
    # ones, so that memory follows what waits: a live entry that stays on top of the heap
    # or at the head of the deque would otherwise keep everything behind it.
    __slots__ = ("_arrivals", "_heap", "_key", "_live")

    def __init__(self, key: Callable[[Entry], Any]) -> None:
        self._key = key
        self._heap: list[tuple[Any, int, Entry]] = []
        self._arrivals: deque[Entry] = deque()
        self._live: dict[int, Entry] = {}

    def add(self, entry: Entry) -> None:
        self._live[entry.seq] = entry
        heapq.heappush(self._heap, (self._key(entry), entry.seq, entry))
        self._arrivals.append(entry)

    def remove(self, entry: Entry) -> None:
        live = self._live
        live.pop(entry.seq, None)
        if len(self._heap) > 2 * len(live):  # amortised O(1) per removal
            self._heap = [node for node in self._heap if node[1] in live]
            heapq.heapify(self._heap)
            self._compact_arrivals()

    def _compact_arrivals(self) -> None:
        arrivals, live = self._arrivals, self._live
        kept = [entry for entry in arrivals if entry.seq in live]
        arrivals.clear()
        arrivals.extend(kept)

    def __len__(self) -> int:
        return len(self._live)

    def oldest(self) -> Entry | None:
        arrivals, live = self._arrivals, self._live
        while arrivals and arrivals[0].seq not in live:
            arrivals.popleft()
        return arrivals[0] if arrivals else None

    def cut(self, max_items: int, budget: float) -> list[Entry]:
        heap, live = self._heap, self._live
        out: list[Entry] = []
        while heap and len(out) < max_items:
            _, seq, entry = heap[0]
            if seq not in live:
                heapq.heappop(heap)
                continue
            if entry.length > budget:
                break
            heapq.heappop(heap)
            del live[seq]
            budget -= entry.length
            out.append(entry)
        if not live:
            # Everything left is dead: drop it now rather than on later pops.
            heap.clear()
            self._arrivals.clear()
        elif len(self._arrivals) > 2 * len(live):  # cut entries behind an old live one
            self._compact_arrivals()
        return out


# The pools of the built-in strategies: they never raise, so calls go straight in.
BUILTIN_POOLS = (_FifoPool, _KeyedPool)


def _by_length(entry: Entry) -> Any:
    return entry.length


def _by_priority(entry: Entry) -> Any:
    return entry.priority


def _by_deadline(entry: Entry) -> Any:
    return entry.deadline


@final
@attrs.frozen
class Fifo:
    """Items leave in arrival order."""

    def new_pool(self) -> Pool:
        """Return a new, empty arrival-ordered pool."""
        return _FifoPool()


@final
@attrs.frozen
class ByLength:
    """Shortest items first, so a batch holds items of similar length (less padding).

    Equal lengths leave in arrival order; ``max_wait_ms`` keeps long items from starving.
    """

    def new_pool(self) -> Pool:
        """Return a new, empty pool ordered by length."""
        return _KeyedPool(_by_length)


@final
@attrs.frozen
class ByPriority:
    """Lowest ``priority`` value first; equal priorities leave in arrival order."""

    def new_pool(self) -> Pool:
        """Return a new, empty pool ordered by priority."""
        return _KeyedPool(_by_priority)


@final
@attrs.frozen
class ByDeadline:
    """Earliest deadline first (EDF): a caller's deadline is its own cancel scopes'
    effective deadline when it calls (``with anyio.fail_after(0.05): await b(x)``).

    Items without a deadline leave after those with one; equal deadlines leave in
    arrival order. The deadline is read at call time for this strategy (about a
    microsecond a call); with any strategy, a partial batch leaves early for a deadline
    and an item whose deadline has passed never reaches ``fn``.
    """

    def new_pool(self) -> Pool:
        """Return a new, empty pool ordered by deadline."""
        return _KeyedPool(_by_deadline)


@final
class PriorityStrategy(enum.Enum):
    """The seed library's names for the built-in strategies."""

    NONE = "none"
    LENGTH = "length"
    PRIORITY = "priority"

    def to_strategy(self) -> Strategy:
        """The strategy object this name stands for."""
        return _ENUM_MAP[self]


_ENUM_MAP: dict[PriorityStrategy, Strategy] = {
    PriorityStrategy.NONE: Fifo(),
    PriorityStrategy.LENGTH: ByLength(),
    PriorityStrategy.PRIORITY: ByPriority(),
}
