"""Checking pulled batches: a scripted run of ``Batcher(fn=None).batches()`` and its
invariants, as ``run_schedule``/``check_invariants`` do for a batcher with ``fn``.

:func:`pulled_scripts` draws a script (settings, callers, 1-3 consumers, each with what
it does with the batches it gets: answer, fail, answer wrongly, answer twice, die, be
cancelled, close without answering). :func:`run_pulled` plays it on one backend under
virtual time and records what happened; :func:`check_pulled` asserts the invariants:
every batch went to exactly one consumer, every caller was settled exactly once with
its own item's result or the error its consumer's conduct calls for, the limits held,
nothing hung, nothing ran after the block.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal, final

import anyio
import anyio.lowlevel
import attrs
from hypothesis import strategies as st

from .._errors import BatcherClosed, BatchSizeMismatch
from .._front.batcher import Batcher
from .._strategies import ByPriority, Fifo
from ._virtual_time import fresh_backend_options

if TYPE_CHECKING:
    from .._batch import Batch

__all__ = ["PulledRecord", "PulledScript", "check_pulled", "pulled_scripts", "run_pulled"]

CONDUCTS = ("answer", "fail", "wrong", "twice", "die", "cancel", "close")
_ENDS = ("die", "cancel", "close")  # the consumer is gone after it


@final
class ConsumerBoom(Exception):
    """What a scripted consumer fails a batch with, or dies of."""


@final
@attrs.frozen
class PulledScript:
    """A generated run: settings, callers ``(arrival_ms, length, priority,
    cancel_after_ms)`` and consumers (conducts for their batches, in turn; after the
    list, they answer; ``die``, ``cancel`` and ``close`` end them)."""

    batch_size: int
    timeout_ms: float | Literal["auto"]
    max_batch_length: int | None
    by_priority: bool
    callers: tuple[tuple[float, int, int, float | None], ...]
    consumers: tuple[tuple[tuple[str, float], ...], ...]
    close_at_ms: float


@st.composite
def pulled_scripts(draw: st.DrawFn) -> PulledScript:
    """Hypothesis strategy of :class:`PulledScript` s."""
    callers = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 12.0]),
                st.integers(1, 4),
                st.integers(0, 2),
                st.none() | st.sampled_from([0.0, 1.0, 3.0, 8.0]),
            ),
            min_size=1,
            max_size=12,
        )
    )
    conduct = st.tuples(st.sampled_from(CONDUCTS), st.sampled_from([0.0, 1.0, 4.0]))
    consumers = draw(st.lists(st.lists(conduct, max_size=4).map(tuple), min_size=1, max_size=3))
    return PulledScript(
        batch_size=draw(st.integers(1, 5)),
        timeout_ms=draw(st.sampled_from([0.0, 1.0, 5.0, 10.0, "auto"])),
        max_batch_length=draw(st.none() | st.integers(3, 10)),
        by_priority=draw(st.booleans()),
        callers=tuple(callers),
        consumers=tuple(consumers),
        close_at_ms=draw(st.sampled_from([0.0, 6.0, 30.0])),
    )


@final
@attrs.define
class PulledRecord:
    """What happened: each caller's outcome, each batch's consumer and conduct."""

    script: PulledScript
    # caller -> ("ok", value) / ("err", exception) / ("cancelled",)
    outcomes: dict[int, Any] = attrs.Factory(dict)
    # consumer, items, conduct, the batch itself (kept: identities are compared)
    batches: list[tuple[int, list[int], str, Any]] = attrs.Factory(list)
    twice_errors: int = 0
    twice_count: int = 0
    hung: bool = False


def run_pulled(script: PulledScript, backend: str) -> PulledRecord:
    """Play ``script`` on ``backend`` under virtual time."""
    record = PulledRecord(script)
    options = fresh_backend_options(backend)
    anyio.run(_play, script, record, backend=backend, backend_options=options)
    return record


async def _play(script: PulledScript, record: PulledRecord) -> None:
    lengths = {i: c[1] for i, c in enumerate(script.callers)}
    b: Batcher[int, Any] = Batcher(
        batch_size=script.batch_size,
        timeout_ms=script.timeout_ms,
        max_batch_length=script.max_batch_length,
        length_fn=lambda i: lengths[i],
        strategy=ByPriority() if script.by_priority else Fifo(),
    )

    async def caller(i: int) -> None:
        arrival, _, priority, cancel_after = script.callers[i]
        await anyio.sleep(arrival / 1000)
        with anyio.CancelScope() as scope:
            if cancel_after is not None:
                scope.deadline = anyio.current_time() + cancel_after / 1000
            try:
                record.outcomes[i] = ("ok", await b(i, priority=priority))
            except Exception as exc:
                record.outcomes[i] = ("err", exc)
        if scope.cancelled_caught:
            record.outcomes[i] = ("cancelled",)

    async def consumer(k: int, stream: Any) -> None:
        conducts = list(script.consumers[k])
        with anyio.CancelScope() as scope:
            try:
                async with stream:
                    async for batch in stream:
                        what, took = conducts.pop(0) if conducts else ("answer", 0.0)
                        record.batches.append((k, list(batch.items), what, batch))
                        await anyio.sleep(took / 1000)
                        if what == "cancel":
                            scope.cancel()
                            # cancelled here, inside the stream's block
                            await anyio.lowlevel.checkpoint()
                        if _conduct(batch, what, record):
                            return
            except ConsumerBoom:
                pass  # it died: its stream closed with this exception

    try:
        with anyio.fail_after(3600):
            async with anyio.create_task_group() as outside, b:
                for k in range(len(script.consumers)):
                    outside.start_soon(consumer, k, b.batches())
                for i in range(len(script.callers)):
                    outside.start_soon(caller, i)
                await anyio.sleep(script.close_at_ms / 1000)
    except TimeoutError:
        record.hung = True
    await anyio.wait_all_tasks_blocked()


def _conduct(batch: Batch[int], what: str, record: PulledRecord) -> bool:
    """Do ``what`` with ``batch``; whether the consumer ends."""
    if what == "answer":
        batch.set_results([("r", i) for i in batch.items])
    elif what == "fail":
        batch.fail(ConsumerBoom("failed"))
    elif what == "wrong":
        with contextlib.suppress(BatchSizeMismatch):  # raised to the consumer, as it must
            batch.set_results([("r", i) for i in batch.items] + [None])
    elif what == "twice":
        batch.set_results([("r", i) for i in batch.items])
        record.twice_count += 1
        try:
            batch.fail(ConsumerBoom("twice"))
        except RuntimeError:
            record.twice_errors += 1
    elif what == "die":
        msg = "died"
        raise ConsumerBoom(msg)
    elif what == "close":
        return True
    return False


def _expect(ok: bool, what: object) -> None:
    # Not assert: the checks must hold under python -O too.
    if not ok:
        raise AssertionError(what)


def check_pulled(record: PulledRecord) -> None:
    """Assert the invariants of pulled batches over a :func:`run_pulled` record."""
    script = record.script
    _expect(not record.hung, "the run hung")
    # every batch to exactly one consumer; every item in at most one batch
    _expect(
        len({id(batch) for *_, batch in record.batches}) == len(record.batches),
        "a batch went to two consumers",
    )
    placed: dict[int, tuple[str, int]] = {}
    for k, items, what, _ in record.batches:
        _expect(1 <= len(items) <= script.batch_size, f"batch of {len(items)}")
        if script.max_batch_length is not None and len(items) > 1:
            total = sum(script.callers[i][1] for i in items)
            _expect(total <= script.max_batch_length, f"batch over the length budget: {total}")
        for i in items:
            _expect(i not in placed, f"item {i} was in two batches")
            placed[i] = (what, k)
    _expect(record.twice_errors == record.twice_count, "answering twice was not refused")
    # every caller settled once, as its batch's conduct says
    _expect(set(record.outcomes) == set(range(len(script.callers))), "a caller not settled")
    for i, outcome in record.outcomes.items():
        if outcome[0] == "cancelled":
            continue
        if i not in placed:
            _expect(outcome[0] == "err" and isinstance(outcome[1], BatcherClosed), (i, outcome))
            continue
        what, _ = placed[i]
        if what in ("answer", "twice"):
            _expect(outcome == ("ok", ("r", i)), (i, what, outcome))
        elif what == "fail":
            _expect(outcome[0] == "err" and isinstance(outcome[1], ConsumerBoom), (i, outcome))
        elif what == "wrong":
            _expect(isinstance(outcome[-1], BatchSizeMismatch), (i, outcome))
        else:  # die, cancel, close: released, chained to why the stream closed
            _expect(outcome[0] == "err" and isinstance(outcome[1], BatcherClosed), (i, outcome))
            cause = outcome[1].__cause__
            if what == "die":
                _expect(isinstance(cause, ConsumerBoom), (i, cause))
            elif what == "cancel":
                _expect(isinstance(cause, BaseException), (i, cause))
