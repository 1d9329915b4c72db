"""Test code that uses batching: virtual time, hypothesis strategies and invariants.

Needs the ``test`` extra (pytest, hypothesis, trio); ``import batched`` never imports it.

- Instant, deterministic time on asyncio and trio: :func:`virtual_time_backends`, the
  :func:`anyio_backend` fixture and :func:`settle`.
- Hypothesis strategies: :func:`batcher_settings`, :func:`arrival_schedules` and
  :func:`fn_outcomes`.
- :func:`run_schedule` plays a schedule of callers against your batcher on virtual time
  and records what happened; :func:`check_invariants` checks what must hold of any run.
- :func:`check_batch_invariant` checks that your batch function gives an item the same
  result whatever batch it travels in.

Together: ``run_schedule`` shows the batcher hands each caller what the batch function
computed for its own items, and ``check_batch_invariant`` that this is what the item
would get alone. Example::

    from hypothesis import given, settings
    import batched
    from batched.testing import arrival_schedules, check_invariants, run_schedule

    @settings(deadline=None)
    @given(schedule=arrival_schedules())
    def test_my_settings(schedule):
        result = run_schedule(lambda fn: batched.Batcher(fn, batch_size=4), schedule)
        check_invariants(result)
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import math
import types
import warnings
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ._core.items import length_of
from ._core.results import check_results
from ._errors import BatchSizeMismatch, Failure, QueueFull
from ._front.batcher import Batcher
from ._settings import is_async_callable
from ._strategies import ByLength, ByPriority, Fifo
from ._virtual_time import BACKEND_NAMES, VirtualTimeLoop, fresh_backend_options, real_time

if TYPE_CHECKING:
    from ._stats import BatchStats

__all__ = [
    "OUTCOME_KINDS",
    "Arrival",
    "BatchOutcome",
    "BatchRecord",
    "CallerOutcome",
    "PlannedError",
    "Schedule",
    "ScheduleResult",
    "VirtualTimeLoop",
    "anyio_backend",
    "arrival_schedules",
    "batcher_settings",
    "check_batch_invariant",
    "check_invariants",
    "fn_outcomes",
    "fresh_backend_options",
    "real_time",
    "run_schedule",
    "settle",
    "virtual_time_backends",
]

#: What one call of the batch function may do in :func:`run_schedule`: return a result
#: per item (``ok``), raise :exc:`PlannedError` (``raise``), return one result too few
#: (``short``) or too many (``long``), return a mapping, set, iterator or ``None``
#: (``wrong_type``), or return ``batched.Failure(PlannedError)`` for the items at even
#: positions of the batch (``item_failure``).
OUTCOME_KINDS: Final = ("ok", "raise", "short", "long", "wrong_type", "item_failure")

_HANG_GUARD_S = 3600.0  # virtual seconds: a run still going after this counts as a hang
_BatchFn = Callable[[list[Any]], Awaitable[Any]]


# -- virtual time ----------------------------------------------------------------------


def virtual_time_backends() -> list[tuple[str, dict[str, Any]]]:
    """``(backend, backend_options)`` for asyncio and trio, both on instant virtual time.

    asyncio runs on a ``VirtualTimeLoop``, trio on ``MockClock(autojump_threshold=0)``:
    when every task waits, the clock jumps to the next deadline, so a one-hour sleep takes
    no real time and runs are deterministic. Each call builds fresh options (a clock
    keeps its time): call it per run. Worker threads (a sync batch function) let virtual
    time jump while they work. Example::

        for backend, options in virtual_time_backends():
            anyio.run(main, backend=backend, backend_options=options)
    """
    return [(name, fresh_backend_options(name)) for name in BACKEND_NAMES]


@pytest.fixture(params=list(BACKEND_NAMES))
def anyio_backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """anyio's ``anyio_backend`` fixture on virtual time: asyncio, then trio.

    Fresh options per test. On asyncio the test also fails if anything reached the
    loop's exception handler ("Task was destroyed but it is pending!"). Opt in from your
    ``conftest.py`` (or a test module)::

        from batched.testing import anyio_backend  # noqa: F401
    """
    name: str = request.param
    if name != "asyncio":
        yield name, fresh_backend_options(name)
        return
    loops: list[VirtualTimeLoop] = []

    def loop_factory() -> VirtualTimeLoop:
        loop = VirtualTimeLoop()
        loops.append(loop)
        return loop

    yield "asyncio", {"loop_factory": loop_factory}
    _drain_reports(loops)
    errors = [context for loop in loops for context in loop.recorded_errors]
    assert not errors, f"event loop exception handler was called: {errors!r}"


def _drain_reports(loops: list[VirtualTimeLoop]) -> None:
    for loop in loops:
        # anyio's runner handler would swallow late reports that carry an exception.
        loop.set_exception_handler(None)
    gc.collect()  # abandoned pending tasks report when collected


async def settle() -> None:
    """Return once every other task waits on something, without moving virtual time.

    ``anyio.wait_all_tasks_blocked()`` polls with ``sleep(0.1)`` on asyncio, which on
    virtual time jumps the clock (firing batch deadlines on the way); this does not.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio: its wait_all_tasks_blocked takes no time
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        if all(task is this or _blocked(task) for task in asyncio.all_tasks()):
            return
    msg = "tasks never settled: some task keeps running"
    raise AssertionError(msg)


def _blocked(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)  # what the task awaits (CPython, uvloop)
    return waiter is not None and not waiter.done()


# -- plans -----------------------------------------------------------------------------


def _to_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(values)


@final
class PlannedError(Exception):
    """What a planned ``raise`` batch raises, or what ``item_failure`` gives an item.

    :ivar batch: the index of the batch function call
    :ivar position: the failing item's position in that batch (``None``: the whole batch)
    """

    def __init__(self, batch: int, position: int | None = None) -> None:
        where = "" if position is None else f", item at position {position}"
        super().__init__(f"planned failure of batch {batch}{where}")
        self.batch = batch
        self.position = position


@final
@attrs.frozen
class Arrival:
    """One caller in a :class:`Schedule`.

    :ivar at_ms: when it calls, in milliseconds after the start
    :ivar items: what it sends: one item calls ``b(item)``; ``many=True`` calls
        ``b.many(items)``. Items must be distinct across a schedule.
    :ivar many: send ``items`` with ``b.many``
    :ivar priority: the ``priority`` of the call
    :ivar cancel_after_ms: cancel the caller this long after it calls (``None``: never)
    :ivar wait: ``False`` calls with ``wait=False`` (``QueueFull`` when there is no room)
    """

    at_ms: float
    items: tuple[Any, ...] = attrs.field(converter=_to_tuple)
    many: bool = False
    priority: float = 0
    cancel_after_ms: float | None = None
    wait: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.many and len(self.items) != 1:
            msg = f"'items' must hold exactly one item unless many=True: {self.items!r}"
            raise ValueError(msg)

    def describe(self) -> str:
        """The call as code, e.g. ``b.many([1, 2]) at 3 ms, cancelled after 2 ms``."""
        call = f"b.many({list(self.items)!r}" if self.many else f"b({self.items[0]!r}"
        extra = "".join(
            [
                f", priority={self.priority!r}" if self.priority else "",
                "" if self.wait else ", wait=False",
            ]
        )
        cancel = (
            "" if self.cancel_after_ms is None else f", cancelled after {self.cancel_after_ms} ms"
        )
        return f"{call}{extra}) at {self.at_ms} ms{cancel}"


@final
@attrs.frozen
class Schedule:
    """The callers :func:`run_schedule` plays, each an :class:`Arrival`."""

    arrivals: tuple[Arrival, ...] = attrs.field(converter=_to_tuple)


@final
@attrs.frozen
class BatchOutcome:
    """What one call of the batch function does: wait ``duration_ms``, then ``kind``.

    :ivar kind: one of :data:`OUTCOME_KINDS`
    """

    duration_ms: float = 1.0
    kind: str = attrs.field(default="ok", validator=attrs.validators.in_(OUTCOME_KINDS))


# -- records ---------------------------------------------------------------------------


@final
@attrs.frozen
class CallerOutcome:
    """What one caller got in a run of :func:`run_schedule`. Times in ms from the start.

    :ivar kind: ``"result"``, ``"error"`` (``QueueFull`` included), ``"cancelled"`` (its
        own cancellation), or ``"missing"`` (no outcome: a hang, or it never called)
    :ivar result: its result (a list for ``many``), else ``None``
    :ivar exception: the exception it got, else ``None``
    :ivar lengths: its items' lengths as the batcher measures them (``None``: length_fn raised)
    :ivar queue_size_before: ``stats.queue_size`` just before the call
    """

    index: int
    arrival: Arrival
    kind: str
    result: Any
    exception: BaseException | None
    submitted_ms: float
    done_ms: float | None
    lengths: tuple[int | None, ...]
    queue_size_before: int

    @property
    def cancelled(self) -> bool:
        """Whether its own cancellation ended the call."""
        return self.kind == "cancelled"


@final
@attrs.frozen
class BatchRecord:
    """One call of the batch function in a run of :func:`run_schedule`.

    :ivar items: the items it got, in order
    :ivar outcome: the :class:`BatchOutcome` it played
    :ivar results: what it returned per item for ``ok`` and ``item_failure`` (a
        ``batched.Failure`` in a failing slot), else ``None``
    :ivar error: what it raised, else ``None``
    :ivar cancelled: it was cancelled while it ran
    :ivar retry_of: with ``isolate_errors``, the failed call whose items this retries
    """

    index: int
    items: tuple[Any, ...]
    start_ms: float
    end_ms: float
    outcome: BatchOutcome
    results: tuple[Any, ...] | None
    error: BaseException | None
    cancelled: bool
    retry_of: int | None


@final
@attrs.frozen
class ScheduleResult:
    """Everything :func:`run_schedule` saw; :func:`check_invariants` judges it.

    :ivar settings: the batcher's settings (``batch_size``, ``timeout_ms``, ...)
    :ivar escaped: what left ``async with batcher``, else ``None``
    :ivar hung: the virtual one-hour hang guard fired
    :ivar tasks_left: tasks still running after the block, beyond those before it
    :ivar loop_errors: reports to asyncio's exception handler and ``ResourceWarning``\\ s
    """

    schedule: Schedule
    backend: str
    settings: Mapping[str, Any]
    callers: tuple[CallerOutcome, ...]
    batches: tuple[BatchRecord, ...]
    stats: BatchStats
    hung: bool
    escaped: BaseException | None
    tasks_left: int
    loop_errors: tuple[str, ...]


# -- strategies ------------------------------------------------------------------------


def _default_settings() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "batch_size": st.integers(1, 8),
        "timeout_ms": st.integers(0, 10),
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

    Draws ``batch_size`` 1-8, ``timeout_ms`` 0-10 and ``max_wait_ms`` 0-50 (whole
    milliseconds, so events coincide), ``max_batch_length`` None or 5-30, ``strategy``,
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


def _item_key(item: Any) -> Hashable:
    """What tells items apart: the item if hashable, else its type and repr."""
    try:
        hash(item)
    except TypeError:
        return (1, type(item).__qualname__, repr(item))
    return (0, item)


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
) -> Schedule:
    """A :class:`Schedule` of 1 to ``max_callers`` callers.

    Each arrives at a whole millisecond up to ``max_arrival_ms``, sends one item (or,
    with ``max_items > 1``, sometimes ``b.many`` of up to ``max_items``), with a
    priority from ``priorities`` (default 0-3); with ``cancellations`` one in three is
    cancelled 0-20 ms after it calls; with ``no_wait_calls`` one in four calls with
    ``wait=False``. Items come from ``items`` (default integers) and are distinct across
    the schedule by ``unique_by`` (default: the item if hashable, else its repr), so the
    strategy must offer enough distinct values.
    """
    elements = st.integers() if items is None else items
    n = draw(st.integers(1, max_callers))
    many = [max_items > 1 and draw(st.booleans()) for _ in range(n)]
    sizes = [draw(st.integers(1, max_items)) if m else 1 for m in many]
    total = sum(sizes)
    pool = draw(
        st.lists(elements, min_size=total, max_size=total, unique_by=unique_by or _item_key)
    )
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
    return Schedule(arrivals)


# Weighted: sampled_from is uniform and shrinks towards the first element ("ok").
_WEIGHTS = {"ok": 28, "raise": 4, "short": 2, "long": 2, "wrong_type": 3, "item_failure": 3}


def fn_outcomes(
    *, kinds: Iterable[str] = OUTCOME_KINDS, max_batches: int = 12, max_duration_ms: int = 10
) -> st.SearchStrategy[tuple[BatchOutcome, ...]]:
    """What the successive calls of the batch function do, for :func:`run_schedule`.

    Up to ``max_batches`` :class:`BatchOutcome` (calls beyond them return results after
    1 ms), each lasting 0 to ``max_duration_ms`` whole milliseconds; mostly ``ok``, the
    other ``kinds`` now and then. Shrinks towards no plan: every call ``ok`` after 1 ms.
    """
    chosen = list(dict.fromkeys(kinds))
    unknown = set(chosen) - set(OUTCOME_KINDS)
    if unknown or not chosen:
        msg = f"'kinds' must be some of {OUTCOME_KINDS}: {chosen!r}"
        raise ValueError(msg)
    weighted = [kind for kind in OUTCOME_KINDS if kind in chosen for _ in range(_WEIGHTS[kind])]
    outcome = st.builds(
        BatchOutcome,
        duration_ms=st.integers(0, max_duration_ms),
        kind=st.sampled_from(weighted),
    )
    return st.lists(outcome, max_size=max_batches).map(tuple)


# -- playing a schedule ----------------------------------------------------------------


class _Caller:
    def __init__(self, index: int, arrival: Arrival) -> None:
        self.index = index
        self.arrival = arrival
        self.kind = "missing"
        self.result: Any = None
        self.exception: BaseException | None = None
        self.submitted = -1  # µs
        self.done: int | None = None
        self.q_before = -1
        self.lengths: tuple[int | None, ...] = ()


class _Batch:
    def __init__(self, index: int, items: tuple[Any, ...], outcome: BatchOutcome, start: int):
        self.index = index
        self.items = items
        self.outcome = outcome
        self.start = start  # µs
        self.end = start
        self.results: tuple[Any, ...] | None = None
        self.error: BaseException | None = None
        self.cancelled = False


def _count_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not asyncio
        import trio.lowlevel

        return trio.lowlevel.current_statistics().tasks_living


class _Player:
    """Runs one schedule; ``result()`` freezes what it saw."""

    def __init__(
        self,
        factory: Callable[[_BatchFn], Batcher[Any, Any]],
        schedule: Schedule,
        outcomes: Sequence[BatchOutcome],
        item_fn: Callable[[Any], Any],
    ) -> None:
        self.factory = factory
        self.schedule = schedule
        self.outcomes = outcomes
        self.item_fn = item_fn
        self.callers = [_Caller(i, a) for i, a in enumerate(schedule.arrivals)]
        self.batches: list[_Batch] = []
        self.batcher: Batcher[Any, Any] | None = None
        self.settings: dict[str, Any] = {}
        self.t0 = 0.0
        self.left = len(self.callers)
        self.all_done: anyio.Event | None = None
        self.hung = False
        self.escaped: BaseException | None = None
        self.tasks_left = 0

    def now(self) -> int:
        return round((anyio.current_time() - self.t0) * 1e6)

    async def fn(self, items: list[Any]) -> Any:
        k = len(self.batches)
        plan = self.outcomes[k] if k < len(self.outcomes) else BatchOutcome()
        rec = _Batch(k, tuple(items), plan, self.now())
        self.batches.append(rec)
        try:
            await anyio.sleep(plan.duration_ms / 1000)
            out = self._output(rec)
        except anyio.get_cancelled_exc_class():
            rec.end, rec.cancelled = self.now(), True
            raise
        except BaseException as exc:
            rec.end, rec.error = self.now(), exc
            raise
        rec.end = self.now()
        return out

    def _output(self, rec: _Batch) -> Any:
        kind, k = rec.outcome.kind, rec.index
        if kind == "raise":
            raise PlannedError(k)
        results = [self.item_fn(item) for item in rec.items]
        if kind == "item_failure":
            for pos in range(0, len(results), 2):
                results[pos] = Failure(PlannedError(k, pos))
        if kind in ("ok", "item_failure"):
            rec.results = tuple(results)
            return results
        if kind == "short":
            return results[:-1]
        if kind == "long":
            return [*results, None]
        # wrong_type: of the right length where it has one; only the type is wrong
        wrong: list[Any] = [dict(enumerate(results)), set(range(len(results))), iter(results)]
        return [*wrong, None][k % 4]

    async def caller(self, b: Batcher[Any, Any], rec: _Caller) -> None:
        arrival = rec.arrival
        await anyio.sleep_until(self.t0 + arrival.at_ms / 1000)
        rec.submitted = self.now()
        cancel = arrival.cancel_after_ms
        scope = anyio.CancelScope() if cancel is None else anyio.move_on_after(cancel / 1000)
        with scope:
            rec.q_before = b.stats.queue_size  # no await between this and the call
            try:
                if arrival.many:
                    value: Any = await b.many(
                        arrival.items, priority=arrival.priority, wait=arrival.wait
                    )
                else:
                    value = await b(arrival.items[0], priority=arrival.priority, wait=arrival.wait)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # an outcome for the checks to judge
                rec.kind, rec.exception = "error", exc
            else:
                rec.kind, rec.result = "result", value
            rec.done = self.now()
        if scope.cancelled_caught:
            rec.kind, rec.done = "cancelled", self.now()
        self.left -= 1
        if self.left == 0 and self.all_done is not None:
            self.all_done.set()

    async def main(self) -> None:
        self.t0 = anyio.current_time()
        before = _count_tasks()
        with anyio.move_on_after(_HANG_GUARD_S) as guard:
            await self.body()
        self.hung = guard.cancelled_caught
        await anyio.lowlevel.checkpoint()  # let finished tasks be reaped
        self.tasks_left = _count_tasks() - before

    async def body(self) -> None:
        b: object = self.factory(self.fn)
        if not isinstance(b, Batcher):
            msg = f"batcher_factory must return a batched.Batcher, not {type(b).__qualname__}"
            raise TypeError(msg)
        s = b._settings
        if s.cache is not None or s.dedupe:
            msg = "run_schedule needs a Batcher without cache or dedupe (fn sees every item)"
            raise ValueError(msg)
        self.batcher = b
        self.settings = {
            name: getattr(s, name)
            for name in (
                "batch_size",
                "timeout_ms",
                "max_batch_length",
                "length_fn",
                "strategy",
                "small_batch_threshold",
                "max_wait_ms",
                "max_queue_size",
                "max_concurrent_batches",
                "isolate_errors",
            )
        }
        for rec in self.callers:
            rec.lengths = tuple(self._length(b, item) for item in rec.arrival.items)
        self.all_done = anyio.Event()
        if not self.callers:
            self.all_done.set()
        # The callers live outside the batcher's block: they may outlive it.
        async with anyio.create_task_group() as tg:
            try:
                async with b:
                    for rec in self.callers:
                        tg.start_soon(self.caller, b, rec)
                    await self.all_done.wait()
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                self.escaped = exc

    @staticmethod
    def _length(b: Batcher[Any, Any], item: Any) -> int | None:
        length_fn = b._settings.length_fn
        if length_fn is None:
            return 1
        try:
            return length_of(length_fn, item)
        except Exception:
            return None

    def play(self, backend: str) -> ScheduleResult:
        options = fresh_backend_options(backend)
        loops: list[VirtualTimeLoop] = []
        if backend == "asyncio":

            def loop_factory() -> VirtualTimeLoop:
                loops.append(VirtualTimeLoop())
                return loops[-1]

            options = {"loop_factory": loop_factory}
        # Older objects are frozen, so the collection that makes abandoned tasks and
        # unclosed streams report only walks what this run made.
        gc.freeze()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                anyio.run(self.main, backend=backend, backend_options=options)
                _drain_reports(loops)
        finally:
            gc.unfreeze()
        reports = [
            str(context.get("message")) for loop in loops for context in loop.recorded_errors
        ]
        for w in caught:
            if issubclass(w.category, ResourceWarning):
                reports.append(f"ResourceWarning: {w.message}")
            else:  # not ours to swallow
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self.result(backend, tuple(reports))

    def result(self, backend: str, reports: tuple[str, ...]) -> ScheduleResult:
        assert self.batcher is not None
        isolate = bool(self.settings.get("isolate_errors"))
        records: list[BatchRecord] = []
        seen: dict[Hashable, int] = {}  # item -> the latest call that got it
        for rec in self.batches:
            keys = [_item_key(item) for item in rec.items]
            retry_of = seen.get(keys[0]) if keys else None
            if retry_of is not None:
                prev = self.batches[retry_of]
                prev_keys = {_item_key(item) for item in prev.items}
                legit = isolate and prev.error is not None and len(prev.items) > 1
                if not (legit and prev_keys.issuperset(keys)):
                    retry_of = None
            seen.update((key, rec.index) for key in keys)
            records.append(
                BatchRecord(
                    index=rec.index,
                    items=rec.items,
                    start_ms=rec.start / 1000,
                    end_ms=rec.end / 1000,
                    outcome=rec.outcome,
                    results=rec.results,
                    error=rec.error,
                    cancelled=rec.cancelled,
                    retry_of=retry_of,
                )
            )
        callers = tuple(
            CallerOutcome(
                index=rec.index,
                arrival=rec.arrival,
                kind=rec.kind,
                result=rec.result,
                exception=rec.exception,
                submitted_ms=rec.submitted / 1000,
                done_ms=None if rec.done is None else rec.done / 1000,
                lengths=rec.lengths,
                queue_size_before=rec.q_before,
            )
            for rec in self.callers
        )
        return ScheduleResult(
            schedule=self.schedule,
            backend=backend,
            settings=types.MappingProxyType(self.settings),
            callers=callers,
            batches=tuple(records),
            stats=self.batcher.stats,
            hung=self.hung,
            escaped=self.escaped,
            tasks_left=self.tasks_left,
            loop_errors=reports,
        )


def _identity(item: Any) -> Any:
    return item


def run_schedule(
    batcher_factory: Callable[[_BatchFn], Batcher[Any, Any]],
    schedule: Schedule,
    *,
    backend: str = "asyncio",
    outcomes: Sequence[BatchOutcome] | None = None,
    item_fn: Callable[[Any], Any] | None = None,
) -> ScheduleResult:
    """Play ``schedule`` against a batcher on virtual time; return what happened.

    ``batcher_factory(fn)`` builds the batcher around ``fn``, a recording async batch
    function: pass it on unchanged (a ``functools.partial`` is fine) so it sees the
    items as sent. Its k-th call plays ``outcomes[k]`` (default: results after 1 ms);
    a result is ``item_fn(item)`` (default: the item itself; keep it injective, so a
    result handed to the wrong caller shows). Each call runs in a fresh ``anyio.run``
    on ``backend`` ("asyncio" or "trio"): call it from a synchronous test. Example::

        result = run_schedule(lambda fn: Batcher(fn, batch_size=4), schedule)
        check_invariants(result)

    :raises ValueError: for items sent twice in the schedule, or a batcher with a cache
        or dedupe (``fn`` would not see every item)
    """
    if backend not in BACKEND_NAMES:
        msg = f"'backend' must be one of {BACKEND_NAMES}: {backend!r}"
        raise ValueError(msg)
    owners: dict[Hashable, int] = {}
    for index, arrival in enumerate(schedule.arrivals):
        for item in arrival.items:
            first = owners.setdefault(_item_key(item), index)
            if first != index or arrival.items.count(item) > 1:
                msg = f"items must be distinct across a schedule: {item!r} is sent twice"
                raise ValueError(msg)
    player = _Player(batcher_factory, schedule, outcomes or (), item_fn or _identity)
    return player.play(backend)


# -- invariants ------------------------------------------------------------------------


def _us(ms: float) -> int:
    return round(ms * 1000)


def _same(a: Any, b: Any) -> bool:
    """Equality that also compares arrays, tensors and containers of them."""
    if a is b:
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    shape = getattr(a, "shape", None)
    if shape is not None and getattr(b, "shape", None) != shape:
        return False
    try:
        equal = a == b
        if isinstance(equal, bool):
            return equal
        every = getattr(equal, "all", None)
        return bool(every() if callable(every) else equal)
    except Exception:
        return False


class _View:
    """Facts the checks share, times in integer µs."""

    def __init__(self, result: ScheduleResult) -> None:
        self.r = result
        s = result.settings
        self.batch_size: int = s["batch_size"]
        self.timeout = _us(s["timeout_ms"])
        self.max_len: float = math.inf if s["max_batch_length"] is None else s["max_batch_length"]
        self.max_queue: int | None = s["max_queue_size"]
        self.slots: int = s["max_concurrent_batches"]
        self.isolate: bool = s["isolate_errors"]
        self.owner: dict[Hashable, tuple[CallerOutcome, int]] = {}
        for c in result.callers:
            for j, item in enumerate(c.arrival.items):
                self.owner[_item_key(item)] = (c, j)
        self.calls: dict[Hashable, list[BatchRecord]] = {}  # item -> the calls that got it
        self.unknown: list[tuple[BatchRecord, Any]] = []
        for batch in result.batches:
            for item in batch.items:
                key = _item_key(item)
                if key not in self.owner:
                    self.unknown.append((batch, item))
                self.calls.setdefault(key, []).append(batch)
        self.top = [batch for batch in result.batches if batch.retry_of is None]

    def length(self, item: Any) -> int | None:
        c, j = self.owner[_item_key(item)]
        return c.lengths[j] if j < len(c.lengths) else None

    def dispatched_by(self, item: Any, t: int, strictly: bool = False) -> bool:
        calls = self.calls.get(_item_key(item))
        if not calls:
            return False
        start = _us(calls[0].start_ms)
        return start < t if strictly else start <= t

    def accepted_at_once(self, c: CallerOutcome) -> bool:
        """The call was certainly accepted when sent: its items arrived at ``submitted``."""
        return not isinstance(c.exception, QueueFull) and (
            self.max_queue is None or c.queue_size_before == 0
        )


def _label(c: CallerOutcome) -> str:
    return f"caller {c.index} [{c.arrival.describe()}]"


def _got(c: CallerOutcome) -> str:
    if c.kind == "result":
        return f"the result {c.result!r}"
    if c.kind == "error":
        return f"the exception {c.exception!r}"
    return c.kind


def _check_exit(r: ScheduleResult) -> None:
    missing = [c.index for c in r.callers if c.kind == "missing"]
    if r.hung:
        msg = (
            f"hang: after {_HANG_GUARD_S:.0f} s of virtual time callers {missing} still had no "
            f"outcome; batches so far: {[(b.index, b.items) for b in r.batches]}"
        )
        raise AssertionError(msg)
    assert r.escaped is None, f"`async with batcher` raised {r.escaped!r}"
    assert not missing, f"callers {missing} never got an outcome"
    assert not r.loop_errors, f"reported while the run closed: {list(r.loop_errors)}"
    assert r.tasks_left == 0, f"{r.tasks_left} tasks left running after the batcher closed"


def _check_batches(v: _View) -> None:
    """No batch is empty or over ``batch_size``; none over ``max_batch_length`` unless alone."""
    for batch in v.r.batches:
        n = len(batch.items)
        assert 1 <= n <= v.batch_size, (
            f"batch {batch.index} has {n} items (batch_size={v.batch_size}): {batch.items!r}"
        )
        lengths = [v.length(item) for item in batch.items if _item_key(item) in v.owner]
        if n > 1 and None not in lengths:
            total = sum(length for length in lengths if length is not None)
            assert total <= v.max_len, (
                f"batch {batch.index} {batch.items!r} has length {total} > "
                f"max_batch_length={v.max_len}"
            )


def _check_processing(v: _View) -> None:
    """Every item fn got was sent, once (a retry under ``isolate_errors`` aside), after it
    was sent, and before its caller left or was refused."""
    if v.unknown:
        batch, item = v.unknown[0]
        msg = (
            f"batch {batch.index} got an item nobody sent: {item!r} (batcher_factory must "
            f"hand fn the items as sent)"
        )
        raise AssertionError(msg)
    for key, calls in v.calls.items():
        c, j = v.owner[key]
        item = c.arrival.items[j]
        for prev, later in itertools.pairwise(calls):
            assert later.retry_of == prev.index, (
                f"item {item!r} of {_label(c)} processed twice: in batches "
                f"{[b.index for b in calls]}"
            )
        first = calls[0]
        start = _us(first.start_ms)
        assert not isinstance(c.exception, QueueFull), (
            f"{_label(c)} got QueueFull, yet its item {item!r} went to batch {first.index}"
        )
        assert _us(c.submitted_ms) <= start, (
            f"item {item!r} reached fn (batch {first.index}) before {_label(c)} sent it"
        )
        assert c.done_ms is not None
        assert _us(c.done_ms) >= start, (
            f"{_label(c)} got {_got(c)} at {c.done_ms} ms, yet its item {item!r} reached fn "
            f"later, in batch {first.index} at {first.start_ms} ms"
        )


class _Fate:
    """What an item's last call of fn implies for its caller."""

    def __init__(self, batch: BatchRecord, value: Any = None, error: Any = None) -> None:
        self.batch = batch
        self.value = value
        self.error = error  # an exception object (identity), or an exception type


def _fate(v: _View, item: Any) -> _Fate | None:
    calls = v.calls.get(_item_key(item))
    if not calls or calls[-1].cancelled:
        return None
    last = calls[-1]
    if last.error is not None:
        assert not (v.isolate and len(last.items) > 1), (
            f"batch {last.index} raised with {len(last.items)} items under isolate_errors, "
            f"yet its item {item!r} was never retried"
        )
        return _Fate(last, error=last.error)
    kind = last.outcome.kind
    if kind in ("short", "long"):
        return _Fate(last, error=BatchSizeMismatch)
    if kind == "wrong_type":
        return _Fate(last, error=TypeError)
    assert last.results is not None
    position = [_item_key(x) for x in last.items].index(_item_key(item))
    value = last.results[position]
    if type(value) is Failure:
        return _Fate(last, error=value.exception)
    return _Fate(last, value=value)


def _check_outcomes(v: _View) -> None:
    """One outcome each, and the one fn's calls imply: its own results in order, or the
    exception of its first failing item; cancellations and ``QueueFull`` when due."""
    for c in v.r.callers:
        a, label = c.arrival, _label(c)
        assert c.done_ms is not None
        submitted, done = _us(c.submitted_ms), _us(c.done_ms)
        deadline = None if a.cancel_after_ms is None else submitted + _us(a.cancel_after_ms)
        if c.kind == "cancelled":
            assert deadline is not None, f"{label}: cancelled, yet nobody cancelled it"
            assert done == deadline, f"{label}: cancelled at {c.done_ms} ms"
            continue
        if deadline is not None:
            assert done <= deadline, f"{label}: got {_got(c)} after its own cancellation"
        q, n = c.queue_size_before, len(a.items)
        if isinstance(c.exception, QueueFull):
            assert not a.wait, f"{label}: QueueFull for a call that may wait"
            assert v.max_queue is not None, f"{label}: QueueFull without max_queue_size"
            assert done == submitted, f"{label}: QueueFull after waiting"
            assert q > 0, f"{label}: QueueFull with an empty queue"
            continue
        if not a.wait and v.max_queue is not None:
            assert q == 0 or q + n <= v.max_queue, (
                f"{label}: accepted with wait=False though {q} items waited "
                f"(max_queue_size={v.max_queue})"
            )
        fates: list[_Fate] = []
        for item in a.items:
            fate = _fate(v, item)
            assert fate is not None, (
                f"{label}: got {_got(c)}, yet its item {item!r} never went through fn"
            )
            fates.append(fate)
        failing = next((f for f in fates if f.error is not None), None)
        if failing is None:
            _check_result(c, fates)
        else:
            _check_error(c, failing)


def _check_result(c: CallerOutcome, fates: list[_Fate]) -> None:
    label = _label(c)
    wants = [fate.value for fate in fates]
    assert c.kind == "result", f"{label}: expected the results {wants!r}, got {_got(c)}"
    gots = c.result if c.arrival.many else [c.result]
    assert isinstance(gots, list), f"{label}: expected a list of results, got {c.result!r}"
    assert len(gots) == len(wants), f"{label}: expected {len(wants)} results, got {gots!r}"
    for item, got, fate in zip(c.arrival.items, gots, fates, strict=True):
        assert _same(got, fate.value), (
            f"{label}: got {got!r} for item {item!r}, but fn returned {fate.value!r} for it "
            f"in batch {fate.batch.index} {fate.batch.items!r}"
        )


def _check_error(c: CallerOutcome, fate: _Fate) -> None:
    label, want, batch = _label(c), fate.error, fate.batch
    source = f"batch {batch.index} ({batch.outcome.kind}) {batch.items!r}"
    if isinstance(want, BaseException):
        assert c.exception is want, f"{label}: expected {want!r} from {source}, got {_got(c)}"
        return
    assert type(c.exception) is want, (
        f"{label}: expected {want.__name__} from {source}, got {_got(c)}"
    )
    if isinstance(c.exception, BatchSizeMismatch):
        assert c.exception.expected == len(batch.items), f"{label}: {c.exception} for {source}"


def _check_no_premature(v: _View) -> None:
    """A batch leaves before its oldest item waited ``timeout_ms`` only when it is full.

    At a batch's start ``d``, the pool it was cut from is within W: items sent by ``d``,
    not refused, in no earlier batch, whose caller was still there at ``d``. If W holds
    fewer than ``batch_size`` items and less than ``max_batch_length``, the timeout cut
    it, so some item of W was sent ``timeout`` before ``d``.
    """
    for batch in v.top:
        d = _us(batch.start_ms)
        waiting = [
            (c, item)
            for c in v.r.callers
            if _us(c.submitted_ms) <= d
            and not isinstance(c.exception, QueueFull)
            and c.done_ms is not None
            and _us(c.done_ms) >= d
            for item in c.arrival.items
            if not v.dispatched_by(item, d, strictly=True)
        ]
        lengths = [v.length(item) for _, item in waiting]
        length = math.inf if None in lengths else sum(x for x in lengths if x is not None)
        if not waiting or len(waiting) >= v.batch_size or length >= v.max_len:
            continue
        oldest = min(_us(c.submitted_ms) for c, _ in waiting)
        assert d - oldest >= v.timeout, (
            f"batch {batch.index} {batch.items!r} left at {batch.start_ms} ms, not full "
            f"({len(waiting)} items of length {length} waiting), its oldest item sent at "
            f"{oldest / 1000} ms: before timeout_ms={v.timeout / 1000}"
        )


def _check_no_idle_slot(v: _View) -> None:
    """No execution slot stays free while a batch is due.

    Once everything at an instant has happened, if fewer calls of fn run than
    ``max_concurrent_batches``, the items certainly waiting (accepted when sent, in no
    batch yet, caller still there) are fewer than ``batch_size``, under
    ``max_batch_length``, and none was sent ``timeout_ms`` ago or more.
    """
    spans = [(_us(b.start_ms), _us(b.end_ms)) for b in v.r.batches]
    instants = {t for span in spans for t in span}
    for c in v.r.callers:
        assert c.done_ms is not None
        s = _us(c.submitted_ms)
        instants |= {s, _us(c.done_ms), s + v.timeout}
    for t in sorted(instants):
        if sum(1 for start, end in spans if start <= t < end) >= v.slots:
            continue
        waiting = [
            (c, item)
            for c in v.r.callers
            if v.accepted_at_once(c)
            and c.done_ms is not None
            and _us(c.submitted_ms) <= t < _us(c.done_ms)
            for item in c.arrival.items
            if not v.dispatched_by(item, t)
        ]
        if not waiting:
            continue
        lengths = [v.length(item) for _, item in waiting]
        length = sum(x for x in lengths if x is not None)
        oldest = min(_us(c.submitted_ms) for c, _ in waiting)
        items = [item for _, item in waiting]
        where = f"at {t / 1000} ms a slot is free and items {items!r} wait, yet no batch left"
        assert len(waiting) < v.batch_size, f"{where} (batch_size={v.batch_size})"
        assert length < v.max_len, f"{where} (length {length}, max_batch_length={v.max_len})"
        assert t - oldest < v.timeout, (
            f"{where} (the oldest was sent at {oldest / 1000} ms, timeout_ms={v.timeout / 1000})"
        )


def _check_stats(v: _View) -> None:
    """The final stats add up, item by item, to what the callers got and fn saw."""
    stats = v.r.stats
    tally = {"completed": 0, "failed": 0, "cancelled": 0, "rejected": 0}
    for c in v.r.callers:
        n = len(c.arrival.items)
        if c.kind == "result":
            tally["completed"] += n
        elif c.kind == "cancelled":
            tally["cancelled"] += n
        elif isinstance(c.exception, QueueFull):
            tally["rejected"] += n
        else:
            tally["failed"] += n
    got = {name: getattr(stats, name) for name in tally}
    assert got == tally, f"stats {got} do not match what the callers got: {tally}"
    assert stats.submitted == sum(tally.values()), (
        f"stats.submitted {stats.submitted} != {sum(tally.values())} items sent"
    )
    assert stats.queue_size == 0, f"stats.queue_size {stats.queue_size} after the run"
    batches = (len(v.top), sum(len(b.items) for b in v.top))
    assert (stats.total_batches, stats.total_processed) == batches, (
        f"stats (total_batches, total_processed) {(stats.total_batches, stats.total_processed)}"
        f" != {batches} seen by fn"
    )


def check_invariants(result: ScheduleResult) -> None:
    """Check what must hold of every run of :func:`run_schedule`.

    The run ended cleanly (no hang, nothing raised out of ``async with``, no task left,
    nothing reported to asyncio's exception handler); every caller got exactly one
    outcome: its own results in order, or the exception of its first failing item, or
    its cancellation or ``QueueFull`` when due; no item processed twice (a retry under
    ``isolate_errors`` aside) nor after its caller left; no batch over ``batch_size`` or
    ``max_batch_length`` (an oversize item alone aside); no batch left before it was due;
    no slot idle while a batch was due; the stats add up.

    :raises AssertionError: naming the first offending caller or batch
    """
    _check_exit(result)
    view = _View(result)
    for check in (
        _check_processing,
        _check_batches,
        _check_outcomes,
        _check_no_premature,
        _check_no_idle_slot,
        _check_stats,
    ):
        check(view)


# -- batch invariance ------------------------------------------------------------------


def _as_results(out: object, batch: list[Any]) -> Sequence[Any]:
    try:
        return check_results(out, len(batch))
    except (BatchSizeMismatch, TypeError) as exc:
        msg = f"fn gave a bad output for the batch {batch!r}: {exc}"
        raise AssertionError(msg) from None


def check_batch_invariant(
    fn: Callable[[list[Any]], Any],
    items: st.SearchStrategy[Any],
    *,
    max_batch: int = 8,
    backend: str = "asyncio",
    equal: Callable[[Any, Any], bool] | None = None,
    max_examples: int | None = None,
) -> None:
    """Check that ``fn`` gives each item the same result in any batch as alone.

    Runs a hypothesis test: draws batches of 1 to ``max_batch`` items, calls ``fn`` on
    each batch and on each item alone, and compares with ``equal`` (default ``==``, also
    for arrays, tensors and containers of them; pass e.g. ``numpy.allclose`` where float
    rounding may differ). ``fn`` may be sync or async (run with ``anyio.run`` on
    ``backend``). Call it from a plain (not ``@given``, not async) test::

        def test_pooling_is_batch_invariant():
            check_batch_invariant(pool, items=st.lists(st.integers(0, 9), min_size=1))

    :param max_examples: default: the current hypothesis profile's
    :raises AssertionError: naming the shrunk batch, the first differing item and both
        results
    """
    same = equal or _same
    is_async = is_async_callable(fn)

    async def run_async(batch: list[Any]) -> tuple[list[Any], Sequence[Any]]:
        alone = [_as_results(await fn([item]), [item])[0] for item in batch]
        return alone, _as_results(await fn(list(batch)), batch)

    def run(batch: list[Any]) -> tuple[list[Any], Sequence[Any]]:
        if is_async:
            options = fresh_backend_options(backend)
            return anyio.run(run_async, batch, backend=backend, backend_options=options)
        alone = [_as_results(fn([item]), [item])[0] for item in batch]
        return alone, _as_results(fn(list(batch)), batch)

    profile = hypothesis_settings()  # the current profile
    chosen = hypothesis_settings(
        profile,
        deadline=None,
        database=None,  # one inner test serves every fn: no examples shared between them
        suppress_health_check=[*profile.suppress_health_check, HealthCheck.too_slow],
        max_examples=profile.max_examples if max_examples is None else max_examples,
    )

    @chosen
    @given(batch=st.lists(items, min_size=1, max_size=max_batch))
    def batch_invariance(batch: list[Any]) -> None:
        alone, together = run(batch)
        for position, (item, a, b) in enumerate(zip(batch, alone, together, strict=True)):
            if not same(a, b):
                msg = (
                    f"fn gives item {item!r} a different result in a batch: alone {a!r}, "
                    f"at position {position} of the batch {batch!r}: {b!r}"
                )
                raise AssertionError(msg)

    batch_invariance()


# The virtual-time helpers live in a private module (the library's own loop-free code
# needs none of them); they are public here, under this module's name.
for _public in (VirtualTimeLoop, real_time, fresh_backend_options):
    _public.__module__ = __name__
del _public
