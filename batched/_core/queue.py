"""The rules of forming batches, as plain synchronous code.

One :class:`Core` per open batcher holds what waits: two pools made by the strategy (items
of small calls, items of large calls), an intake in front of a user's own pools, the calls
waiting for queue room, and the batches running. It takes calls in (``call_one``, the
per-item path of every front; ``submit`` for calls made elsewhere), answers the questions a
driver asks — is a batch due, and if not, when? — makes the cut (``cut.py``), hands the
outcomes back (``handback.py``) and lets callers leave (``abandon``). It never awaits and
imports no backend: drivers move data and wake tasks around it.
"""

from __future__ import annotations

import math
from collections import deque
from contextvars import copy_context
from threading import get_ident
from typing import TYPE_CHECKING, Any, final

from .._errors import BatcherClosed, QueueFull
from .._strategies import BUILTIN_POOLS, ByDeadline
from . import deadlines, handback
from .auto import CAP, Auto
from .calls import CANCELLED, INTAKE, QUEUED, ROOM, CallCore, SharedCall, owner
from .cut import cut_padded, cut_summed, preferred_size
from .items import check_priority, length_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._settings import Settings
    from .._strategies import Entry, Pool
    from .counts import Counts

__all__ = ["REASONS", "STOPPED", "Core", "Cut"]

# Why a batch was cut, as ``batched.Batch.reason`` gives it. "deadline" is issue 16's
# (a partial batch sent early so that a caller meets its deadline): ``Core.reason``
# is where it plugs in.
REASONS = ("full", "budget", "overdue", "timeout", "closing", "deadline")

STOPPED = "the batcher has stopped accepting calls (stop_accepting() was called)"


def _no_deadline(*_: object) -> float:
    return math.inf


def _refusal(core: Core) -> Exception:
    """Why ``call_one`` refuses a call: the batcher is closed, or (the likelier misuse to
    name) the call comes from another thread than the one whose event loop serves it."""
    if get_ident() != core.thread:
        msg = (
            "this batcher is served by the event loop of another thread (the one that "
            "opened it): call it from that loop, e.g. through anyio.from_thread.run() or "
            "asyncio.run_coroutine_threadsafe() from this thread"
        )
        return RuntimeError(msg)
    return BatcherClosed(STOPPED if core.stopped else "the batcher is closed")


@final
class Cut:
    """A cut batch, from the cut until its callers have their outcomes."""

    __slots__ = ("abandons", "cut_at", "entries", "reason", "waiting")

    def __init__(self, entries: list[Any], abandons: int, reason: str) -> None:
        self.entries = entries
        self.abandons = abandons  # the core's count of departures at the cut
        self.reason = reason  # one of REASONS
        self.waiting = 0  # items accepted and left waiting by the cut (for on_batch)
        self.cut_at = 0.0  # when it was cut (timeout_ms="auto" guesses its end from it)


@final
class Core:
    """Admission, intake, pools, due, cut and outcomes of one open batcher."""

    __slots__ = (
        "abandons",
        "accepting",
        "auto",
        "batch_size",
        "budget",
        "bulk",
        "cause",
        "clock",
        "closing",
        "counts",
        "dates",
        "deadline_now",
        "deadline_of",
        "direct",
        "draining",
        "edf",
        "fast",
        "first",
        "fresh",
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
        "seen",
        "seq",
        "sizes",
        "slots",
        "small",
        "stopped",
        "thread",
        "threshold",
        "timeout",
        "urgent_at",
        "waiting",
        "waiting_len",
        "wake_at",
        "wakeup",
    )

    def __init__(self, settings: Settings, counts: Counts, clock: Callable[[], float]) -> None:
        self.counts = counts
        self.clock = clock
        self.batch_size = settings.batch_size
        self.slots = settings.max_concurrent_batches
        self.auto: Auto | None = None  # timeout_ms="auto": the wait is chosen per batch
        self.timeout = self._timeout(settings)
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_len: float = (
            math.inf if settings.max_batch_length is None else settings.max_batch_length
        )
        self.max_queue = settings.max_queue_size
        self.threshold = settings.small_batch_threshold
        self.length_fn = settings.length_fn  # None where nothing reads lengths
        # Waiting lengths are counted: under a budget, or one that configure() lifted.
        self.budget = self.max_len != math.inf or settings.counted
        self.padded = settings.padded and self.budget
        # Sizes the function runs best at (a compiled model's): the cut rounds to them.
        self.sizes = settings.batch_sizes
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
        # Callers' deadlines (deadlines.py), once a driver that can read them asks for
        # them (track_deadlines): the calls accepted since the driver's last look, and
        # the finite deadlines of waiting items. ByDeadline reads them at call time.
        self.fresh: list[CallCore] | None = None
        self.dates: list[tuple[float, int, Any]] = []
        self.deadline_of: Callable[[CallCore], float] = _no_deadline
        self.deadline_now: Callable[[], float] = _no_deadline
        self.edf = isinstance(settings.strategy, ByDeadline)
        self.urgent_at = math.inf  # when the waiting items must leave for a deadline
        self.seen = False  # a caller has had a deadline: every caller's is read
        # The per-item path needs no check but the priority's: no lengths, room unbounded.
        self.fast = self._fast()
        # Called (once, then cleared) when a call is accepted and at least ``wake_at``
        # items wait: the driver's wake-up (1: any arrival; batch_size: a full batch).
        self.wakeup: Callable[[], None] | None = None
        self.wake_at = 1
        self.accepting = True  # new calls are taken
        self.stopped = False  # stop_accepting(): refused, while what was accepted is served
        self.draining = False  # no new calls: what waits leaves without waiting
        self.closing = False  # the front is closing: what waits leaves without waiting
        self.queued = 0  # items accepted and not yet cut: intake and pools
        self.waiting = 0  # items in the pools
        self.waiting_len = 0  # their summed length; kept exact only under a length budget
        # Calls waiting for queue room, FIFO, with when they began to wait.
        self.room: deque[tuple[CallCore, float]] = deque()
        self.room_waiting = 0
        self.running: set[Cut] = set()
        self.seq = 0
        self.abandons = 0  # callers that left, so that a batch knows to re-check its own
        self.cause: BaseException | None = None  # what BatcherClosed is chained to
        # A fault met where nothing may raise (a backend's cancellation hook): the
        # driver's, to end the batcher with.
        self.on_fault: Callable[[BaseException], None] | None = None
        # The thread whose event loop serves this core: a call from another thread's
        # loop would park where no wake-up reaches it, so it is refused.
        self.thread = get_ident()

    def _fast(self) -> bool:
        return self.direct and self.length_fn is None and self.max_queue is None and not self.edf

    def track_deadlines(
        self, deadline_of: Callable[[CallCore], float], deadline_now: Callable[[], float]
    ) -> None:
        """Honour callers' deadlines (a driver whose callers are tasks): ``deadline_of``
        reads the deadline of the task awaiting a call, ``deadline_now`` the current
        task's."""
        self.deadline_of = deadline_of
        self.deadline_now = deadline_now
        self.fresh = []

    # -- admission ---------------------------------------------------------------------

    def call_one(
        self, make: Callable[[], CallCore], item: Any, priority: float, wait: bool
    ) -> CallCore:
        """Make, check and queue a call of one item: the per-item path of every front.

        ``make`` is the driver's kind of call (awaited directly, or parked on). A
        refusal is counted before it is raised.

        :raises BatcherClosed: the batcher takes no new calls
        :raises RuntimeError: the call comes from another thread's event loop
        :raises TypeError, ValueError: a bad priority, or ``length_fn`` failed
        :raises QueueFull: no room and ``wait=False``
        """
        if not self.accepting or get_ident() != self.thread:
            if get_ident() == self.thread:
                self.counts.refused(1)
            else:  # counted in the caller's thread, while the serving thread counts
                self.counts.refused_anywhere(1)
            raise _refusal(self)
        call = make()
        call.core = self
        call.item = item
        call.state = QUEUED
        # A context copy is O(1) (it shares the caller's immutable map): ~1 % of this
        # path. The deadline is not read here (0.1-0.5 us, and even keeping the calling
        # task costs ~13 % on asyncio): the driver reads it later (deadlines.py).
        call.ctx = copy_context()
        if not self.fast or priority or type(priority) is not int:
            try:
                if type(priority) is not int:
                    priority = check_priority(priority)
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
            if self.edf:  # ByDeadline orders by it as the call enters the pool
                call.deadline = self.deadline_now()
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
        fresh = self.fresh
        if fresh is not None:
            fresh.append(call)
        wakeup = self.wakeup
        if wakeup is not None and self.queued >= self.wake_at:
            self.wakeup = None
            wakeup()
        return call

    # -- admission: calls made elsewhere (of many items, shared, from threads) ---------

    def submit(self, call: CallCore, wait: bool) -> None:
        """Accept the call, or queue it for room; ``QueueFull`` if it may not wait.

        :raises RuntimeError: the call comes from another thread's event loop
        """
        if get_ident() != self.thread:
            if not self.keyed:
                self.counts.refused_anywhere(call.n)  # in the caller's thread
            raise _refusal(self)
        if self.edf:  # read in the caller's task: ByDeadline orders by it
            deadline = call.deadline = self.deadline_now()
            for entry in call.entries or ():
                entry.deadline = deadline
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

    def check_thread(self) -> None:
        """Refuse a call from another thread's event loop (a front's per-call check, for
        calls that reach the core's state before ``submit``: a keyed call may join an
        item already queued)."""
        if get_ident() != self.thread:
            raise _refusal(self)

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
        fresh = self.fresh
        if fresh is not None:
            fresh.append(call)
        wakeup = self.wakeup
        if wakeup is not None and self.queued >= self.wake_at:
            self.wakeup = None
            wakeup()

    def _count_length(self, length: int) -> None:
        self.waiting_len += length
        lengths = self.lengths
        if lengths is not None:
            lengths[length] = lengths.get(length, 0) + 1

    def grant_room(self) -> None:
        room, max_queue = self.room, self.max_queue
        now = self.clock()
        while room:
            call, since = room[0]
            if call.state != ROOM:
                room.popleft()
                continue
            # None: configure() lifted the bound, and everyone waiting gets in.
            if max_queue is not None and self.queued and self.queued + call.n > max_queue:
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
            self.withdraw(call)
            if self.fresh is not None:
                deadlines.compact(self)
        if self.room and self.accepting:
            self.grant_room()

    def withdraw(self, call: CallCore) -> None:
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
                        self.forget_lengths((entry,))  # type: ignore[arg-type]
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
        waiting = self.waiting
        made = self._made()
        urgent = self._deadline_due(now, not made)
        if not self.waiting:
            return now  # every waiting item's deadline had passed: ask again
        if made and self.waiting < waiting and not self._made():
            # Items whose deadline passed were dropped and the rest make no batch: they
            # would wait, so every one's deadline counts.
            made = False
            urgent = self._deadline_due(now, True)
        if made:
            return None
        oldest = self.oldest()
        assert oldest is not None
        # Inline for a fixed timeout: due() runs at every wake-up of the driver.
        deadline = oldest.arrival + (self.timeout if self.auto is None else self._wait(now, oldest))
        if urgent < deadline:
            deadline = urgent
        return None if now >= deadline else deadline

    def _made(self) -> bool:
        """Whether the waiting items make a batch now: full, at the budget, or draining."""
        # Padded, a batch is full once the longest waiting item times the items
        # waiting reaches the budget: a cut then stops on it, or fills it exactly.
        return (
            self.draining
            or self.waiting >= self.batch_size
            or self.waiting_len >= self.max_len
            or (self.lengths is not None and max(self.lengths) * self.waiting >= self.max_len)
        )

    def _deadline_due(self, now: float, partial: bool) -> float:
        """When a caller's deadline makes the waiting items due (``math.inf``: never);
        items whose deadline has passed are dropped first (deadlines.py). ``partial``:
        the batch would wait."""
        if self.fresh is None:
            return math.inf
        self.urgent_at = urgent = deadlines.dispatch_at(self, now, partial)
        return urgent

    # -- timeout_ms="auto" (auto.py) ---------------------------------------------------------

    def _timeout(self, settings: Settings) -> float:
        """The fixed wait in seconds; for "auto", its cap (what callers of ``timeout``
        may count on), with the measured rate kept across ``configure()``."""
        if settings.timeout_ms == "auto":
            if self.auto is None:
                self.auto = Auto()
            return CAP
        self.auto = None
        return settings.timeout_ms / 1000.0

    def _wait(self, now: float, oldest: Entry) -> float:
        """How long the ``oldest`` waiting item may wait from its arrival: ``timeout_ms``,
        or the wait "auto" chooses now (auto.py): for company on the last free slot; with
        several slots, also until enough items wait for the batches to keep up."""
        auto = self.auto
        if auto is None:
            return self.timeout
        cost = self.counts.cost
        slots = self.slots
        if slots == 1:
            return auto.wait(now, self.seq, self.waiting, cost, math.inf)
        free_in = math.inf  # until another slot is expected to free up
        busy = 0
        for batch in self.running:
            # A batch past its expected end is taken as ending: likely the one whose
            # slot asks (it is still counted running while the next is cut).
            left = batch.cut_at + cost.estimate(len(batch.entries)) - now
            if left > 0.0:
                busy += 1
                free_in = min(free_in, left)
        # With another slot free, an item arriving meanwhile starts a batch there at once:
        # waiting for company buys nothing.
        wait = 0.0 if busy + 1 < slots else auto.wait(now, self.seq, self.waiting, cost, free_in)
        fill = auto.fill(now, self.seq, self.waiting, cost, slots, self.batch_size, oldest.arrival)
        return fill if fill > wait else wait

    def full(self) -> bool:
        """Whether what has been accepted fills a batch (read by the caller-driven leader
        while it waits for the deadline)."""
        return self.queued >= self.batch_size or self.max_len != math.inf

    # -- the cut ---------------------------------------------------------------------------

    def reason(self, now: float) -> str:
        """Why a batch cut now leaves: read before the cut, per batch (not per item)."""
        if self.waiting >= self.batch_size:
            return "full"
        if self.budget and (
            self.waiting_len >= self.max_len
            or (self.lengths is not None and max(self.lengths) * self.waiting >= self.max_len)
        ):
            return "budget"
        if self.draining or self.closing:
            return "closing"
        oldest = self.oldest()
        if oldest is not None and now - oldest.arrival >= self.max_wait:
            return "overdue"
        # A partial batch sent early so that a caller meets its deadline.
        urgent = self.urgent_at
        if urgent <= now and (oldest is None or urgent < oldest.arrival + self._wait(now, oldest)):
            return "deadline"
        return "timeout"

    def cut(self, now: float) -> Cut:
        """Cut the next batch (a slot is free); it counts as running from now. Items
        whose deadline has passed are dropped first: the batch may come out empty."""
        self._deadline_due(now, False)
        reason = self.reason(now)
        if self.auto is not None:
            self.auto.observe(now, self.seq)
        room = self.batch_size
        if self.sizes:
            # Once per batch, never per item: the hot path does not see it.
            room = preferred_size(self.sizes, min(self.waiting, room))
        entries = cut_padded(self, now, room) if self.padded else cut_summed(self, now, room)
        if not self.queued and self.dates:
            self.dates.clear()  # every deadline in it was cut: none waits
        batch = Cut(entries, self.abandons, reason)
        batch.cut_at = now
        self.running.add(batch)
        if self.room:
            self.grant_room()
        batch.waiting = self.queued
        return batch

    def join(self, now: float, room: int, budget: float, alone: bool) -> list[Any]:
        """Cut the items that join a set which runs on (``Continuous``): at most ``room``
        items within ``budget``, by the same rules as a batch; an item over the budget
        joins only ``alone`` (the set is empty). Not counted as a running batch."""
        self._deadline_due(now, False)
        if self.auto is not None:
            self.auto.observe(now, self.seq)
        entries = cut_summed(self, now, room, budget, alone)
        if self.room:
            self.grant_room()
        return entries

    def forget_lengths(self, entries: Iterable[Entry]) -> None:
        """Cut or dropped entries no longer count in the padded lengths that wait."""
        lengths = self.lengths
        assert lengths is not None
        for entry in entries:
            left = lengths[entry.length] - 1
            if left:
                lengths[entry.length] = left
            else:
                del lengths[entry.length]

    # -- outcomes --------------------------------------------------------------------------

    # The hand-back, in handback.py: read as methods of the core.
    live = handback.live
    deliver = handback.deliver
    fail = handback.fail
    close_batch = handback.close_batch

    def done(self, batch: Cut) -> None:
        self.running.discard(batch)

    # -- steering (configure, stop_accepting) ----------------------------------------------

    def check(self, settings: Settings) -> None:
        """Refuse new settings this core cannot keep: a length budget where lengths are
        not counted (items that wait have none; counting them would cost every call).

        :raises ValueError: ``max_batch_length`` set on a core opened without one
        """
        if settings.max_batch_length is not None and not self.budget:
            msg = (
                f"'max_batch_length' cannot be set while the batcher is open without one "
                f"(the lengths of waiting items are not counted): "
                f"{settings.max_batch_length!r}; set it before the batcher opens, or give "
                f"a max_batch_length at construction and change it later"
            )
            raise ValueError(msg)

    def apply(self, settings: Settings) -> None:
        """Take the tunable settings (checked by ``check``); effective from the next cut.

        What waits stays where it is; calls waiting for room get in if it grew. The
        driver is woken to ask ``due`` afresh (a shorter timeout may make a batch due).
        """
        self.batch_size = settings.batch_size
        self.slots = settings.max_concurrent_batches
        if not self.closing:  # closing sends what waits at once: keep it so
            self.timeout = self._timeout(settings)
        self.max_wait = settings.max_wait_ms / 1000.0
        if self.budget:  # lengths stay counted: the budget may be set again later
            limit = settings.max_batch_length
            self.max_len = math.inf if limit is None else limit
        self.threshold = settings.small_batch_threshold
        self.first = self.small if self.threshold else self.bulk
        self.max_queue = settings.max_queue_size
        self.fast = self._fast()
        if self.room and self.accepting:
            self.grant_room()
        self._wake()

    def stop_accepting(self) -> None:
        """Refuse new calls (``BatcherClosed``) while what was accepted is served as
        usual; calls waiting for queue room were not accepted: they get
        ``BatcherClosed`` now."""
        if not self.accepting:
            return
        self.accepting = False
        self.stopped = True
        room = self.room
        while room:
            call, _ = room.popleft()
            if call.state == ROOM:
                call.err = BatcherClosed(STOPPED + " before this call found queue room")
                call.finish()
        self.room_waiting = 0

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
        self.auto = None
        self.closing = True
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
        self.stopped = False  # closed, not just stopped: refusals say so
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
