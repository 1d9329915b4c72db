"""The errors table of DESIGN.md: what callers get when fn fails (settings: test_validation.py)."""

from __future__ import annotations

import asyncio
import re
import traceback
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
from _helpers import Boom, Fatal, close_bounded, gather, tag

import batched
from batched import Batcher, BatcherClosed, BatchSizeMismatch, Failure

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


def tb_len(exc: BaseException) -> int:
    return len(traceback.extract_tb(exc.__traceback__))


# -- fn raises ---------------------------------------------------------------------------


async def test_fn_error_reaches_every_caller_and_later_batches_run() -> None:
    """fn raises: every caller of that batch gets that same exception; later batches run."""
    boom = Boom("first batch")
    seen: list[list[int]] = []

    async def fn(items: list[int]) -> list[tuple[str, int]]:
        seen.append(list(items))
        if len(seen) == 1:
            raise boom
        return tag(items)

    async with Batcher(fn, batch_size=3, timeout_ms=10) as b:
        outcome = await gather(b, [0, 1, 2])
        assert all(outcome[x] is boom for x in range(3)), outcome
        assert await gather(b, [3, 4, 5]) == {x: ("r", x) for x in (3, 4, 5)}
    assert sorted(seen[0]) == [0, 1, 2]


@pytest.mark.parametrize("mode", ["raise", "failure"])
async def test_error_traceback_does_not_grow_caller_after_caller(mode: str) -> None:
    """One exception for a whole batch: every caller sees the same traceback length."""
    boom = Boom("shared")
    errors: list[Boom] = []
    lengths: list[int] = []

    async def fn(items: list[int]) -> list[Any]:
        if mode == "raise":
            raise boom
        return [Failure(boom) for _ in items]

    async def caller(b: Batcher[int, int], x: int) -> None:
        try:
            await b(x)
        except Boom as exc:
            errors.append(exc)
            lengths.append(tb_len(exc))  # read now: the next caller re-raises the object

    with anyio.fail_after(60):
        async with Batcher(fn, batch_size=6, timeout_ms=10) as b, anyio.create_task_group() as tg:
            for x in range(6):
                tg.start_soon(caller, b, x)
    assert len(errors) == 6
    assert all(e is boom for e in errors)
    assert len(set(lengths)) == 1, lengths


@pytest.mark.parametrize("mode", ["raise", "failure"])
async def test_error_traceback_does_not_grow_across_batches_sharing_the_object(
    mode: str,
) -> None:
    """The same exception object failing batch after batch keeps one traceback length.

    Re-raising a stored exception chains onto its old traceback in plain Python too, so
    the test clears it between batches, as a fresh raise would start: any growth left
    is state the batcher carried from one batch to the next.
    """
    shared = Boom("shared")

    async def fn(items: list[int]) -> list[Any]:
        if mode == "raise":
            raise shared
        return [Failure(shared) for _ in items]

    lengths: list[int] = []
    async with Batcher(fn, batch_size=2, timeout_ms=10) as b:
        for _ in range(4):
            shared.with_traceback(None)
            outcome = await gather(b, [1, 2])
            assert outcome[1] is shared
            assert outcome[2] is shared
            lengths.append(tb_len(shared))
    assert len(set(lengths)) == 1, lengths


async def test_failure_in_a_slot_fails_that_caller_alone() -> None:
    """Failure(exc) in a slot: that caller alone gets exc, the others their results."""
    bad = KeyError("item 2")

    async def fn(items: list[int]) -> list[Any]:
        return [Failure(bad) if x == 2 else ("r", x) for x in items]

    async with Batcher(fn, batch_size=4, timeout_ms=10) as b:
        outcome = await gather(b, [0, 1, 2, 3])
        many = await gather(b.many, [(10, 2, 11)])
    assert outcome[2] is bad
    assert {x: outcome[x] for x in (0, 1, 3)} == {x: ("r", x) for x in (0, 1, 3)}
    assert many[(10, 2, 11)] is bad  # a many call raises its first failing item's error


async def test_isolate_errors_fails_only_the_failing_items() -> None:
    """isolate_errors=True: fn is retried on halves; only failing items' callers get the error."""
    bad = {2, 5}
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[tuple[str, int]]:
        calls.append(list(items))
        if bad & set(items):
            raise Boom(f"bad among {items}")
        return tag(items)

    async with Batcher(fn, batch_size=8, timeout_ms=10, isolate_errors=True) as b:
        outcome = await gather(b, range(8))
        assert await b(9) == ("r", 9)
    # Every call of fn counts, each retry too: the stats say what fn did.
    stats = b.stats
    assert (stats.total_batches, stats.total_processed) == (len(calls), sum(map(len, calls)))
    assert stats.avg_batch_size == sum(map(len, calls)) / len(calls)
    assert (stats.completed, stats.failed) == (7, 2)
    for x in range(8):
        if x in bad:
            assert isinstance(outcome[x], Boom), outcome
            assert str(x) in str(outcome[x])
        else:
            assert outcome[x] == ("r", x), outcome
    assert sorted(calls[0]) == list(range(8))
    assert all(set(c) < set(calls[0]) for c in calls[1:-1]), calls  # only proper subsets
    assert [2] in calls
    assert [5] in calls  # each failing item was isolated alone
    processed = [x for c in calls[1:-1] if not bad & set(c) for x in c]
    assert sorted(processed) == [0, 1, 3, 4, 6, 7]  # each good item computed once, in a subset


async def test_isolation_holds_its_slot() -> None:
    """isolate_errors: the retries of a failed batch run before the next batch takes the slot."""
    calls: list[list[int]] = []
    go = anyio.Event()
    running = anyio.Event()

    async def fn(items: list[int]) -> list[tuple[str, int]]:
        calls.append(sorted(items))
        if len(calls) == 1:
            running.set()
            await go.wait()
        if 1 in items:
            raise Boom
        return tag(items)

    b = Batcher(fn, batch_size=2, timeout_ms=10, isolate_errors=True, max_concurrent_batches=1)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            for x in (0, 1):
                tg.start_soon(gather, b, [x])
            await running.wait()
            tg.start_soon(gather, b, [2, 3])  # waits for the slot the isolation holds
            await anyio.wait_all_tasks_blocked()
            go.set()
    assert calls[0] == [0, 1]
    assert sorted(calls[1:3]) == [[0], [1]]  # the halves, in the batch's arrival order
    assert calls[3:] == [[2, 3]]


# -- wrong output ----------------------------------------------------------------------


@pytest.mark.parametrize("isolate", [False, True])
async def test_wrong_number_of_results_is_batch_size_mismatch(isolate: bool) -> None:
    """Wrong result count: BatchSizeMismatch (a ValueError) naming both numbers, to all callers."""
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            return list(range(7))
        return [x * 10 for x in items]

    async with Batcher(fn, batch_size=4, timeout_ms=10, isolate_errors=isolate) as b:
        outcome = await gather(b, [1, 2, 3, 4])
        assert await b(5) == 50  # later batches run
    assert len(calls) == 2  # never split and retried
    errors = [outcome[x] for x in (1, 2, 3, 4)]
    assert all(type(e) is BatchSizeMismatch for e in errors), errors
    assert all(e is errors[0] for e in errors)
    assert isinstance(errors[0], ValueError)
    assert re.search(r"\b4\b", str(errors[0]))
    assert re.search(r"\b7\b", str(errors[0]))


def _generator(items: list[int]) -> Any:
    return (x for x in items)


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (lambda items: None, "NoneType"),
        (lambda items: {x: x for x in items}, "dict"),
        (lambda items: "ab"[: len(items)], "str"),
        (lambda items: set(items), "set"),
        (_generator, "generator"),
        (lambda items: len(items), "int"),
    ],
    ids=["None", "dict", "str", "set", "generator", "int"],
)
@pytest.mark.parametrize("isolate", [False, True])
async def test_non_sequence_result_is_type_error_naming_the_type(
    make: Callable[[list[int]], Any], type_name: str, isolate: bool
) -> None:
    """A non-sequence result (even of the right length): TypeError naming its type, to all."""
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> Any:
        calls.append(list(items))
        return make(items) if len(calls) == 1 else tag(items)

    async with Batcher(fn, batch_size=2, timeout_ms=10, isolate_errors=isolate) as b:
        outcome = await gather(b, [1, 2])
        assert await b(3) == ("r", 3)
    assert len(calls) == 2  # never isolated
    for x in (1, 2):
        assert type(outcome[x]) is TypeError, outcome
        assert type_name in str(outcome[x])


class _Frame:
    """Results like a pandas DataFrame's: ``frame[0]`` looks up a column (``KeyError``),
    or, with ``bad_len``, even ``len()`` raises."""

    def __init__(self, n: int, *, bad_len: bool) -> None:
        self.n = n
        self.bad_len = bad_len

    def __len__(self) -> int:
        if self.bad_len:
            raise ZeroDivisionError("len() of the results")
        return self.n

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)


@pytest.mark.parametrize("mode", ["owned", "driven"])
@pytest.mark.parametrize("bad_len", [False, True], ids=["indexing", "len"])
async def test_results_whose_len_or_indexing_raises_fail_only_their_batch(
    mode: str, bad_len: bool
) -> None:
    """Its callers get that exception; the batcher goes on (it used to crash it)."""
    error = ZeroDivisionError if bad_len else KeyError

    async def fn(items: list[str]) -> Any:
        return _Frame(len(items), bad_len=bad_len) if "frame" in items else tag(items)

    async def calls(f: Any) -> None:
        outcome = await gather(f, ["frame"])
        assert type(outcome["frame"]) is error, outcome
        assert await f("ok") == ("r", "ok")

    f: Any
    with anyio.fail_after(60):
        if mode == "owned":
            async with Batcher(fn, batch_size=1, timeout_ms=0) as f:
                await calls(f)
        else:
            f = batched.dynamically(batch_size=1, timeout_ms=0)(fn)
            await calls(f)
    stats = f.stats
    assert (stats.submitted, stats.completed, stats.failed) == (2, 1, 1)


def test_results_whose_indexing_raises_fail_only_their_batch_in_a_sync_function() -> None:
    @batched.dynamically(batch_size=1, timeout_ms=0)
    def fn(items: list[str]) -> Any:
        return _Frame(len(items), bad_len=False) if "frame" in items else tag(items)

    try:
        with pytest.raises(KeyError):
            fn("frame")
        assert fn("ok") == ("r", "ok")  # the serving thread goes on
    finally:
        close_bounded(fn)


@pytest.mark.parametrize(
    "wrap",
    [tuple, np.array],
    ids=["tuple", "numpy"],
)
async def test_tuple_and_array_results_are_accepted(wrap: Callable[[list[int]], Any]) -> None:
    """fn may return a tuple or an array-like with len and integer indexing."""

    async def fn(items: list[int]) -> Any:
        return wrap([x * 10 + 1 for x in items])

    async with Batcher(fn, batch_size=3, timeout_ms=10) as b:
        outcome = await gather(b, [1, 2, 3])
        assert await b.many([4, 5]) == [41, 51]
    assert outcome == {1: 11, 2: 21, 3: 31}


# -- BaseException from fn ---------------------------------------------------------------


def _holds(exc: BaseException, target: BaseException) -> bool:
    if exc is target:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_holds(inner, target) for inner in exc.exceptions)
    return False


@pytest.mark.virtual_time  # exact clock readings or long timeouts
@pytest.mark.parametrize("kind", [Fatal, KeyboardInterrupt, SystemExit])
async def test_base_exception_from_fn_closes_batcher(kind: type[BaseException]) -> None:
    """A BaseException from fn: callers get BatcherClosed caused by it; it leaves the block."""
    fatal = kind("stop")
    started = anyio.Event()
    release = anyio.Event()

    async def fn(items: list[int]) -> list[int]:
        if 0 in items:
            started.set()
            await release.wait()
            raise fatal
        return items

    outcome: dict[int, BaseException] = {}

    async def caller(b: Batcher[int, int], x: int) -> None:
        try:
            await b(x)
        except BatcherClosed as exc:
            outcome[x] = exc

    b = Batcher(fn, batch_size=2, timeout_ms=10_000)

    async def body() -> None:
        async with b, anyio.create_task_group() as tg:
            tg.start_soon(caller, b, 0)
            await started.wait()
            for x in (1, 2):  # waiting in the queue while the batch of 0 runs
                tg.start_soon(caller, b, x)
            await anyio.wait_all_tasks_blocked()
            release.set()

    with anyio.fail_after(60), pytest.raises(BaseException) as excinfo:
        await body()
    assert _holds(excinfo.value, fatal), repr(excinfo.value)
    assert set(outcome) == {0, 1, 2}
    assert all(exc.__cause__ is fatal for exc in outcome.values()), outcome
    stats = b.stats
    assert stats.failed == 3
    assert stats.queue_size == 0


# -- a cancellation that is not the batcher's --------------------------------------------


async def foreign_cancellation() -> None:
    """Raise the backend's cancellation exception, caused by no cancel scope around this
    task: a future that someone else cancelled (asyncio), or a ``Cancelled`` carried out
    of the scope that caught it (trio)."""
    if anyio.get_cancelled_exc_class() is asyncio.CancelledError:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
    import trio

    caught: BaseException | None = None
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            caught = exc
    assert caught is not None
    raise caught


@pytest.mark.parametrize("mode", ["owned", "driven"])
async def test_a_cancellation_raised_by_fn_fails_only_its_batch(mode: str) -> None:
    """Only that batch's callers get an error (not a cancellation: their tasks were not
    cancelled); the owner's block, its other awaits and later batches are untouched."""

    async def fn(items: list[str]) -> list[tuple[str, str]]:
        if "bad" in items:
            await foreign_cancellation()
        return tag(items)

    async def calls(f: Any) -> None:
        with pytest.raises(RuntimeError, match=r"raised (CancelledError|Cancelled).*not") as info:
            await f("bad")
        assert isinstance(info.value.__cause__, anyio.get_cancelled_exc_class())
        await anyio.sleep(0.01)  # an unrelated await of the body
        assert await f("ok") == ("r", "ok")

    f: Any
    with anyio.fail_after(60):
        if mode == "owned":
            async with Batcher(fn, batch_size=1, timeout_ms=0) as f:
                await calls(f)
        else:
            f = batched.dynamically(batch_size=1, timeout_ms=0)(fn)
            await calls(f)
    stats = f.stats
    assert (stats.submitted, stats.completed, stats.failed) == (2, 1, 1)


def test_a_cancellation_raised_by_a_sync_fn_fails_only_its_batch() -> None:
    """A plain function that raises the cancellation exception itself, served by its own
    event-loop thread: its callers get the error; the thread goes on."""

    @batched.dynamically(batch_size=1, timeout_ms=0)
    def fn(items: list[str]) -> list[tuple[str, str]]:
        if "bad" in items:
            raise asyncio.CancelledError
        return tag(items)

    try:
        with pytest.raises(RuntimeError, match="raised CancelledError"):
            fn("bad")
        assert fn("ok") == ("r", "ok")
    finally:
        close_bounded(fn)


# -- hierarchy -------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    """All library errors subclass BatchedError and refine the builtin/anyio error they resemble."""
    assert issubclass(batched.BatchedError, Exception)
    for error in (batched.BatcherClosed, batched.QueueFull, batched.BatchSizeMismatch):
        assert issubclass(error, batched.BatchedError)
    assert issubclass(batched.BatcherClosed, anyio.ClosedResourceError)
    assert issubclass(batched.QueueFull, anyio.WouldBlock)
    assert issubclass(batched.BatchSizeMismatch, ValueError)
    assert {"BatchedError", "BatcherClosed", "QueueFull", "BatchSizeMismatch", "Failure"} <= set(
        batched.__all__
    )
