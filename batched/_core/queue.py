"""The rules of forming batches, as plain synchronous code.

One :class:`Core` per open batcher holds what waits: the intake (accepted calls not yet
sorted), two pools made by the strategy (items of small calls, items of large calls),
the calls waiting for queue room, and the batches running. It answers the questions a
driver asks — is a batch due, and if not, when? — and makes the cut. It never awaits
and imports no backend: drivers move data and wake tasks around it.

Rules of the cut, around any strategy: (1) overdue items (waited ``max_wait_ms``) leave
before every item that arrived after them; (2) items of calls with at most
``small_batch_threshold`` items leave before items of larger calls; (3) the strategy's
order. The length budget stops the cut at the first item that does not fit; that item
stays first for the next cut. An item over the whole budget travels alone.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, final

from .._errors import BatcherClosed, Failure, QueueFull
from .._strategies import BUILTIN_POOLS
from .calls import CANCELLED, DONE, INTAKE, QUEUED, ROOM, CallCore, SharedCall, owner
from .items import check_priority, length_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from .._settings import Settings
    from .._strategies import Entry, Pool
    from .counts import Counts

__all__ = ["Batch", "Core"]


@final
class Batch:
    """A cut batch, from the cut until its callers have their outcomes."""

    __slots__ = ("abandons", "entries")

    def __init__(self, entries: list[Any], abandons: int) -> None:
        self.entries = entries
        self.abandons = abandons  # the core's count of departures at the cut


@final
class Core:
    """Admission, intake, pools, due, cut and outcomes of one open batcher."""

    __slots__ = (
        "abandons",
        "accepting",
        "batch_size",
        "budget",
        "bulk",
        "cause",
        "clock",
        "counts",
        "direct",
        "draining",
        "fast",
        "first",
        "inflight",
        "intake",
        "keyed",
        "length_fn",
        "lengths",
        "max_len",
        "max_queue",
        "max_wait",
        "on_fault",
        "padded",
        "queued",
        "room",
        "room_waiting",
        "running",
        "seq",
        "small",
        "threshold",
        "timeout",
        "waiting",
        "waiting_len",
        "wake_at",
        "wakeup",
    )

    def __init__(self, settings: Settings, counts: Counts, clock: Callable[[], float]) -> None:
        self.counts = counts
        self.clock = clock
        self.batch_size = settings.batch_size
        self.timeout = settings.timeout_ms / 1000.0
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_len: float = (
            math.inf if settings.max_batch_length is None else settings.max_batch_length
        )
        self.max_queue = settings.max_queue_size
        self.threshold = settings.small_batch_threshold
        self.length_fn = settings.length_fn  # None where nothing reads lengths
        self.budget = self.max_len != math.inf  # waiting lengths are counted
        self.padded = settings.padded and self.budget
        # Padded with a budget: how many waiting items have each length, so the padded
        # size of what waits (longest x items) is known without a scan.
        self.lengths: dict[int, int] | None = {} if self.padded else None
        # Keyed (cache or dedupe): only shared items enter the queue, and their callers
        # are counted by the keyed layer, each as the call it is.
        self.keyed = settings.cache is not None or settings.dedupe
        self.inflight: dict[Any, SharedCall] | None = {} if settings.dedupe else None
        self.small: Pool = settings.strategy.new_pool()
        self.bulk: Pool = settings.strategy.new_pool()
        self.first = self.small if self.threshold else self.bulk  # a call of one item's
        # Calls go straight into the built-in pools. A user's pool gets them from the
        # intake, in the driver's task, so that a fault in it closes the batcher instead
        # of failing the caller that happened to arrive.
        self.direct = type(self.small) in BUILTIN_POOLS and type(self.bulk) in BUILTIN_POOLS
        self.intake: deque[CallCore] = deque()
        # The per-item path needs no check but the priority's: no lengths, room unbounded.
        self.fast = self.direct and self.length_fn is None and self.max_queue is None
        # Called (once, then cleared) when a call is accepted and at least ``wake_at``
        # items wait: the driver's wake-up (1: any arrival; batch_size: a full batch).
        self.wakeup: Callable[[], None] | None = None
        self.wake_at = 1
        self.accepting = True  # new calls are taken
        self.draining = False  # no new calls: what waits leaves without waiting
        self.queued = 0  # items accepted and not yet cut: intake and pools
        self.waiting = 0  # items in the pools
        self.waiting_len = 0  # their summed length; kept exact only under a length budget
        # Calls waiting for queue room, FIFO, with when they began to wait.
        self.room: deque[tuple[CallCore, float]] = deque()
        self.room_waiting = 0
        self.running: set[Batch] = set()
        self.seq = 0
        self.abandons = 0  # callers that left, so that a batch knows to re-check its own
        self.cause: BaseException | None = None  # what BatcherClosed is chained to
        # A fault met where nothing may raise (a backend's cancellation hook): the
        # driver's, to end the batcher with.
        self.on_fault: Callable[[BaseException], None] | None = None

    # -- admission ---------------------------------------------------------------------

    def call_one(
        self, make: Callable[[], CallCore], item: Any, priority: float, wait: bool
    ) -> CallCore:
        """Make, check and queue a call of one item: the per-item path of every front.

        ``make`` is the driver's kind of call (awaited directly, or parked on). A
        refusal is counted before it is raised.

        :raises BatcherClosed: the batcher takes no new calls
        :raises TypeError, ValueError: a bad priority, or ``length_fn`` failed
        :raises QueueFull: no room and ``wait=False``
        """
        if not self.accepting:
            self.counts.refused(1)
            msg = "the batcher is closed"
            raise BatcherClosed(msg)
        call = make()
        call.core = self
        call.item = item
        call.state = QUEUED
        if not self.fast or priority or type(priority) is not int:
            try:
                if type(priority) is not int:
                    check_priority(priority)
                if priority:
                    call.priority = priority
                length_fn = self.length_fn
                if length_fn is not None:
                    call.length = length_of(length_fn, item)
            except BaseException:
                self.counts.refused(1)
                raise
            if self.max_queue is not None or not self.direct:
                call._pool = INTAKE
                self.submit(call, wait)
                return call
        # Room is unbounded and the pools are built in: straight into the first pool.
        self.counts.submitted += 1
        call.arrival = self.clock()
        call.seq = self.seq
        self.seq += 1
        self.queued += 1
        self.waiting += 1
        pool = self.first
        pool.add(call)  # type: ignore[arg-type]
        call._pool = pool
        if self.budget:
            self._count_length(call.length)
        wakeup = self.wakeup
        if wakeup is not None and self.queued >= self.wake_at:
            self.wakeup = None
            wakeup()
        return call

    # -- admission: calls made elsewhere (of many items, shared, from threads) ---------

    def submit(self, call: CallCore, wait: bool) -> None:
        """Accept the call, or queue it for room; ``QueueFull`` if it may not wait."""
        max_queue = self.max_queue
        if max_queue is not None and (
            self.room_waiting or (self.queued and self.queued + call.n > max_queue)
        ):
            if not wait:
                if not self.keyed:
                    self.counts.rejected_now(call.n)
                msg = (
                    f"no room for {call.n} item(s): {self.queued} of max_queue_size="
                    f"{max_queue} are taken and {self.room_waiting} call(s) wait for room"
                )
                raise QueueFull(msg)
            call.state = ROOM
            self.room.append((call, self.clock()))
            self.room_waiting += 1
            if not self.keyed:
                self.counts.submitted += call.n
            return
        if not self.keyed:
            self.counts.submitted += call.n
        self.accept(call, self.clock())

    def accept(self, call: CallCore, now: float) -> None:
        """Take the call in (it has room): into its pool, or the intake for a user's pool."""
        entries = call.entries
        if entries is None:
            call.arrival = now
            call.seq = self.seq
            self.seq += 1
            self.queued += 1
        else:
            seq = self.seq
            for entry in entries:
                entry.arrival = now
                entry.seq = seq
                entry._pool = INTAKE
                seq += 1
            self.seq = seq
            self.queued += call.n
        if self.direct:
            self._pool_call(call)
        else:
            self.intake.append(call)
        wakeup = self.wakeup
        if wakeup is not None and self.queued >= self.wake_at:
            self.wakeup = None
            wakeup()

    def _count_length(self, length: int) -> None:
        self.waiting_len += length
        lengths = self.lengths
        if lengths is not None:
            lengths[length] = lengths.get(length, 0) + 1

    def _grant_room(self) -> None:
        room, max_queue = self.room, self.max_queue
        assert max_queue is not None
        now = self.clock()
        while room:
            call, since = room[0]
            if call.state != ROOM:
                room.popleft()
                continue
            if self.queued and self.queued + call.n > max_queue:
                return
            room.popleft()
            self.room_waiting -= 1
            call.state = QUEUED
            # Its latency runs from the call: the wait for room is part of it.
            call.room_wait = now - since
            self.accept(call, now)

    def close_room(self) -> None:
        """Calls waiting for queue room get ``BatcherClosed``."""
        room = self.room
        while room:
            call, _ = room.popleft()
            if call.state == ROOM:
                call.fail_closed()
        self.room_waiting = 0

    def abandon(self, call: CallCore) -> None:
        """The caller left (cancelled): drop its waiting items and free their room."""
        shared = call.shared
        if shared is not None:
            # A keyed caller: the shared item goes only with its last caller.
            call.leave()
            subscribers = shared.subscribers
            subscribers.pop(call, None)
            if not subscribers and shared.state <= QUEUED:
                if shared.state == QUEUED and shared._pool is None:
                    # Cut into a batch: fn computes it (and the cache keeps it) anyway, so
                    # an equal call may still join it until it settles.
                    return
                shared.forget()
                self.abandon(shared)
            return
        state = call.leave()
        if state == CANCELLED:
            return
        self.abandons += 1
        if state == ROOM:
            self.room_waiting -= 1
        elif state == QUEUED:
            self._withdraw(call)
        if self.room and self.accepting:
            self._grant_room()

    def _withdraw(self, call: CallCore) -> None:
        """Take a call's waiting items out of the intake and the pools, freeing their
        room: its caller left, or has its outcome already."""
        for entry in call.entries or (call,):
            pool = entry._pool
            if pool is None:
                continue  # already cut into a batch
            if pool is not INTAKE:
                pool.remove(entry)
                self.waiting -= 1
                if self.budget:
                    self.waiting_len -= entry.length
                    if self.lengths is not None:
                        self._forget_lengths((entry,))  # type: ignore[arg-type]
            entry._pool = None
            self.queued -= 1

    def abandon_safely(self, call: CallCore) -> None:
        """``abandon``, from a backend's cancellation hook, which must not raise: a fault
        (a user's pool raising in ``remove``) goes to the driver, which closes the
        batcher with it."""
        try:
            self.abandon(call)
        except BaseException as exc:  # reported by the driver, not here
            on_fault = self.on_fault
            if on_fault is None:
                raise
            on_fault(exc)

    # -- pools -----------------------------------------------------------------------------

    def _pool_call(self, call: CallCore) -> None:
        if call.state != QUEUED:
            return  # its caller left while it was in the intake
        pool = self.small if call.n <= self.threshold else self.bulk
        entries = call.entries
        if entries is None:
            pool.add(call)  # type: ignore[arg-type]
            call._pool = pool
            self.waiting += 1
            if self.budget:
                self._count_length(call.length)
            return
        added = 0
        try:
            for entry in entries:
                pool.add(entry)
                entry._pool = pool
                added += 1
        except BaseException:
            # A user's pool refused one midway: it gives back those it took, and the
            # call goes back to the intake whole (see drain).
            for entry in entries[:added]:
                entry._pool = INTAKE
                pool.remove(entry)
            raise
        if self.budget:
            for entry in entries:
                self._count_length(entry.length)
        self.waiting += call.n

    def drain(self) -> None:
        """Move what the intake holds into the pools (a user's pools only: calls go
        straight into the built-in ones). A pool that raises in ``add`` leaves the call
        at the head of the intake, where closing the batcher finds it."""
        intake = self.intake
        while intake:
            call = intake.popleft()
            try:
                self._pool_call(call)
            except BaseException:
                if call._pool is INTAKE:
                    intake.appendleft(call)
                raise

    def oldest(self) -> Entry | None:
        a, b = self.small.oldest(), self.bulk.oldest()
        if a is None or (b is not None and b.seq < a.seq):
            return b
        return a

    # -- when ------------------------------------------------------------------------------

    def due(self, now: float) -> float | None:
        """None when the waiting items make a batch now (full, overdue, or draining);
        else the time they will. Call it after ``drain`` with items waiting."""
        if (
            self.draining
            or self.waiting >= self.batch_size
            or self.waiting_len >= self.max_len
            or (self.lengths is not None and max(self.lengths) * self.waiting >= self.max_len)
        ):
            # Padded, a batch is full once the longest waiting item times the items
            # waiting reaches the budget: a cut then stops on it, or fills it exactly.
            return None
        oldest = self.oldest()
        assert oldest is not None
        deadline = oldest.arrival + self.timeout
        return None if now >= deadline else deadline

    def full(self) -> bool:
        """Whether what has been accepted fills a batch (read by the caller-driven leader
        while it waits for the deadline)."""
        return self.queued >= self.batch_size or self.max_len != math.inf

    # -- the cut ---------------------------------------------------------------------------

    def cut(self, now: float) -> Batch:
        """Cut the next batch (a slot is free); it counts as running from now."""
        entries = self._cut_padded(now) if self.padded else self._cut_summed(now)
        batch = Batch(entries, self.abandons)
        self.running.add(batch)
        if self.room:
            self._grant_room()
        return batch

    def _cut_summed(self, now: float) -> list[Any]:
        """The cut where the length budget counts summed lengths."""
        room, budget = self.batch_size, self.max_len
        batch: list[Any] = []
        limit = now - self.max_wait
        while room:
            entry = self.oldest()
            if entry is None or entry.arrival > limit:
                break
            if entry.length > budget:
                if not batch:
                    batch.append(entry)  # oversize: it travels alone
                    entry._pool.remove(entry)
                room = 0
                break
            entry._pool.remove(entry)
            batch.append(entry)
            room -= 1
            budget -= entry.length
        for pool in (self.small, self.bulk):
            if not room:
                break
            got = pool.cut(room, budget)
            batch += got
            room -= len(got)
            if budget != math.inf:
                budget -= sum(entry.length for entry in got)
            if room and len(pool):
                # The pool stopped on the budget; the whole cut stops with it.
                if not batch:
                    batch = pool.cut(1, math.inf)
                break
        for entry in batch:
            entry._pool = None
        self.waiting -= len(batch)
        if self.budget:
            self.waiting_len -= sum([entry.length for entry in batch])
        self.queued -= len(batch)
        return batch

    def _cut_padded(self, now: float) -> list[Any]:
        """The cut where the length budget counts the padded size: longest x items.

        An item fits when the batch with it stays within the budget: with ``k`` items
        taken and the longest ``m`` long, the next may be at most ``budget // (k + 1)``
        long, and none fits once ``m * (k + 1)`` exceeds the budget. Asking the pool for
        one entry within that length keeps its rule: the cut stops at the first item
        (in its order) that does not fit.
        """
        room, budget = self.batch_size, self.max_len
        batch: list[Any] = []
        longest = 0
        limit = now - self.max_wait
        stopped = False
        while room:
            entry = self.oldest()
            if entry is None or entry.arrival > limit:
                break
            k = len(batch) + 1
            if longest * k > budget or entry.length * k > budget:
                if not batch:
                    batch.append(entry)  # oversize: it travels alone
                    entry._pool.remove(entry)
                stopped = True
                break
            entry._pool.remove(entry)
            batch.append(entry)
            longest = max(longest, entry.length)
            room -= 1
        if not stopped:
            for pool in (self.small, self.bulk):
                while room and len(pool):
                    k = len(batch) + 1
                    if longest * k > budget:
                        stopped = True
                        break
                    got = pool.cut(1, budget // k)
                    if not got:
                        if not batch:
                            batch = pool.cut(1, math.inf)  # oversize: it travels alone
                        stopped = True
                        break
                    batch += got
                    longest = max(longest, got[0].length)
                    room -= 1
                if stopped or not room:
                    break
        for entry in batch:
            entry._pool = None
        self.waiting -= len(batch)
        self.waiting_len -= sum([entry.length for entry in batch])
        self.queued -= len(batch)
        self._forget_lengths(batch)
        return batch

    def _forget_lengths(self, entries: Iterable[Entry]) -> None:
        lengths = self.lengths
        assert lengths is not None
        for entry in entries:
            left = lengths[entry.length] - 1
            if left:
                lengths[entry.length] = left
            else:
                del lengths[entry.length]

    # -- outcomes --------------------------------------------------------------------------

    def live(self, batch: Batch) -> list[Any]:
        """The batch's entries whose callers are still there."""
        entries = batch.entries
        if batch.abandons != self.abandons:  # a caller left since the cut
            return [entry for entry in entries if owner(entry).state == QUEUED]
        return entries

    def deliver(self, entries: list[Any], results: Sequence[Any]) -> None:
        """Hand each entry's caller its result (a ``Failure`` fails that caller alone)."""
        done = 0
        for entry, value in zip(entries, results, strict=True):
            call = entry._call
            if call is None:  # a call of one item: settled here, counted below
                if entry.state == QUEUED:
                    if type(value) is Failure:
                        exc = value.exception
                        entry.put_error(0, exc, exc.__traceback__)
                    else:
                        entry.state = DONE
                        entry.deliver(value)
                        done += 1
            elif call.state == QUEUED:
                if type(value) is Failure:
                    exc = value.exception
                    call.put_error(entry._index, exc, exc.__traceback__)
                else:
                    call.put_result(entry._index, value)
        if done and not self.keyed:
            self.counts.completed += done

    def fail(self, entries: list[Any], error: BaseException) -> None:
        """Every caller of ``entries`` gets ``error``."""
        tb = error.__traceback__
        for entry in entries:
            call = entry._call or entry
            if call.state == QUEUED:
                call.put_error(entry._index, error, tb)

    def close_batch(self, batch: Batch) -> None:
        """A batch that cannot finish (its slot was cancelled): ``BatcherClosed``. A call
        of many items is settled whole: its items elsewhere are dropped (those waiting
        leave the pools, those in other running batches are skipped)."""
        withdrawn = False
        for entry in batch.entries:
            call = owner(entry)
            if call.state == QUEUED:
                call.fail_closed()
                if call.entries is not None:
                    self._withdraw(call)
                    withdrawn = True
        if withdrawn:
            self.abandons += 1
            if self.room and self.accepting:
                self._grant_room()

    def done(self, batch: Batch) -> None:
        self.running.discard(batch)

    # -- closing ---------------------------------------------------------------------------

    def close_intake(self) -> None:
        """No new calls; what was accepted is still cut, without waiting."""
        self.accepting = False
        self.draining = True
        self.close_room()
        self._wake()

    def hurry(self) -> None:
        """Send what waits without waiting out ``timeout_ms`` (the front is closing);
        calls waiting for queue room get ``BatcherClosed``."""
        self.timeout = 0.0
        self.close_room()
        self._wake()

    def _wake(self) -> None:
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            wakeup()

    def fail_all(self, cause: BaseException | None = None) -> list[BaseException]:
        """Release every caller still waiting with ``BatcherClosed``, now.

        Returns what a user's pool raised while it was emptied (a fault in a pool must
        not keep its callers waiting): the driver reports a ``BaseException`` there.
        """
        self.accepting = False
        self.abandons += 1
        if cause is not None and self.cause is None:
            self.cause = cause
        self.close_room()
        intake = self.intake
        while intake:
            call = intake.popleft()
            if call.state == QUEUED:
                call.fail_closed()
        faults: list[BaseException] = []
        for pool in (self.small, self.bulk):
            for entry in self._empty(pool, faults):
                entry._pool = None
                call = owner(entry)
                if call.state == QUEUED:
                    call.fail_closed()
        for batch in self.running:
            self.close_batch(batch)
        self.queued = self.waiting = self.waiting_len = 0
        if self.lengths is not None:
            self.lengths.clear()
        return faults

    def _empty(self, pool: Pool, faults: list[BaseException]) -> list[Entry]:
        """Every entry of a pool, even of one whose ``cut`` fails: then one
        ``oldest``/``remove`` at a time."""
        try:
            return pool.cut(len(pool), math.inf)
        except BaseException as exc:  # the fault is reported where it happened
            faults.append(exc)
        entries: list[Entry] = []
        try:
            for _ in range(self.waiting + 1):
                entry = pool.oldest()
                if entry is None:
                    break
                pool.remove(entry)
                entries.append(entry)
        except BaseException as exc:  # nothing more can be taken from it
            faults.append(exc)
        return entries

