"""``check_continuous``: what must hold of any run of :func:`run_continuous`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import BatcherClosed, QueueFull
from ._records import PlannedError

if TYPE_CHECKING:
    from ._continuous_records import ContinuousResult, ReaderOutcome

__all__ = ["check_continuous"]

# Two virtual times this close (ms) are the same instant.
_SAME_MS = 1e-6


def check_continuous(result: ContinuousResult) -> None:
    """Check what must hold of any run of a ``Continuous``; AssertionError if not.

    - The run ended: no hang, no task left, nothing reported to the loop, and only the
      owner's own planned error left its block.
    - Every reader got an outcome, and read exactly the values emitted for its own
      item, in order: all of them when it read to the end or got the item's error (but
      for the value of a step that returned as the block closed abnormally), a prefix
      when it left early.
    - An error is the item's own: a ``Failure`` at its position in a step, the
      exception of a step that held it, ``BatcherClosed``, or ``QueueFull`` for a call
      with ``wait=False``.
    - Every step holds 1 to ``batch_size`` distinct items; the items that went on from
      the previous step come first, in their order, and none is dropped unless its
      reader left; no step holds an item that ended or whose reader had left; a step
      that some item joined keeps the summed length within ``max_batch_length``, unless
      it holds one item alone.
    - An item waits while a step runs without it only when the step is full (checked
      without a length budget or queue bound, which may hold items back too).
    - No step runs after the block ended, none starts after an abnormal close.
    - Stats add up: every item submitted is settled; steps and stepped states counted.
    """
    assert not result.hung, "the run hung (the virtual hang guard fired)"
    assert result.tasks_left == 0, f"{result.tasks_left} task(s) outlived the block"
    assert not result.loop_errors, result.loop_errors
    if result.escaped is not None:
        assert isinstance(result.escaped, PlannedError), result.escaped
        assert result.escaped.batch is None, result.escaped
    _check_steps(result)
    for reader in result.readers:
        _check_reader(result, reader)
    for step in result.steps:
        assert step.end_seq < result.block_ended_seq, f"step {step.index} ran after the block"
        if result.closed_abnormally:
            assert step.start_seq < result.close_seq, f"step {step.index} after the close"
    stats = result.stats
    settled = stats.completed + stats.failed + stats.cancelled + stats.rejected
    assert stats.submitted == settled == len(result.readers), stats
    assert stats.queue_size == 0, stats
    finished = [step for step in result.steps if not step.cancelled]
    assert stats.total_batches == len(finished), (stats, len(finished))
    assert stats.total_processed == sum(len(step.readers) for step in finished), stats
    rejected = sum(isinstance(r.exception, QueueFull) for r in result.readers)
    assert stats.rejected == rejected, stats
    assert stats.completed >= sum(r.kind == "end" for r in result.readers), stats


def _check_steps(result: ContinuousResult) -> None:
    s = result.settings
    batch_size, max_len = s["batch_size"], s["max_batch_length"]
    readers = result.readers
    active: list[int] = []  # went on from the last step, in order
    stepped: set[int] = set()
    ended: set[int] = set()
    for step in result.steps:
        members = list(step.readers)
        where = f"step {step.index} {members}"
        assert 1 <= len(members) <= batch_size, f"{where}: batch_size={batch_size}"
        assert len(set(members)) == len(members), f"{where}: an item twice"
        for r in members:
            assert r not in ended, f"{where}: item {r} had ended"
            left = readers[r].left_seq
            assert left < 0 or left > step.start_seq, f"{where}: the reader of {r} had left"
        carried = [r for r in members if r in stepped]
        assert members[: len(carried)] == carried, f"{where}: joiners before members"
        assert carried == [r for r in active if r in members], f"{where}: order of {active}"
        for r in active:
            if r not in members:
                assert readers[r].left_seq >= 0, f"{where}: item {r} dropped, its reader there"
        joined = members[len(carried) :]
        if joined and max_len is not None and len(members) > 1:
            total = sum(step.lengths)
            assert total <= max_len, f"{where}: lengths {step.lengths} > {max_len}"
        _check_waiting(result, step, members)
        stepped.update(members)
        if step.cancelled or step.raised:
            ended.update(members)
            active = []
        else:
            ended.update(r for r, end in zip(members, step.ends, strict=True) if end != "next")
            active = [r for r, end in zip(members, step.ends, strict=True) if end == "next"]


def _check_waiting(result: ContinuousResult, step: Any, members: list[int]) -> None:
    s = result.settings
    if s["max_batch_length"] is not None or s["max_queue_size"] is not None:
        return
    if len(members) == s["batch_size"]:
        return
    for r in result.readers:
        if r.index in members or r.sent_seq < 0 or r.sent_seq > step.start_seq:
            continue
        refused = r.exception is not None and not _stepped(result, r.index)
        if refused or 0 <= r.left_seq < step.start_seq:
            continue  # refused at the call, or left
        if any(r.index in earlier.readers for earlier in result.steps[: step.index]):
            continue  # was a member already (it ended or left)
        cancel = r.plan.cancel_after_ms
        # Virtual times are sums of floats: 14 ms may read as 13.999999999999998.
        if (
            r.kind == "cancelled"
            and cancel is not None
            and step.start_ms >= r.plan.at_ms + cancel - _SAME_MS
        ):
            continue  # its cancellation was due: it may have left unrecorded, before the step
        msg = f"step {step.index} {members} ran with room while item {r.index} waited"
        raise AssertionError(msg)


def _stepped(result: ContinuousResult, index: int) -> bool:
    return any(index in step.readers for step in result.steps)


def _check_reader(result: ContinuousResult, reader: ReaderOutcome) -> None:
    emitted = result.emitted[reader.index]
    where = f"reader {reader.index} ({reader.plan})"
    assert reader.kind != "missing", f"{where}: no outcome"
    got = reader.got
    if reader.kind == "end":
        assert got == emitted, f"{where}: read {got}, emitted {emitted}"
        last = [
            step.ends[step.readers.index(reader.index)]
            for step in result.steps
            if reader.index in step.readers and step.ends
        ]
        assert last, f"{where}: read to the end, never stepped"
        assert last[-1] == "last", f"{where}: read to the end without a Last"
    elif reader.kind == "error":
        exc = reader.exception
        if isinstance(exc, QueueFull):
            assert not reader.plan.wait, f"{where}: QueueFull for a call that may wait"
            assert result.settings["max_queue_size"] is not None
            assert not _stepped(result, reader.index), f"{where}: QueueFull, yet stepped"
            return
        if isinstance(exc, BatcherClosed):
            # Closed by an error or a cancellation as a step returned: that step's
            # value for it may be dropped, no other.
            assert got == emitted[: len(got)], f"{where}: read {got}, emitted {emitted}"
            if not reader.plan.call:
                assert len(got) >= len(emitted) - 1, f"{where}: read {got}, emitted {emitted}"
            return
        if not reader.plan.call:
            assert got == emitted, f"{where}: read {got} before {exc!r}, emitted {emitted}"
        assert isinstance(exc, PlannedError), f"{where}: {exc!r}"
        assert exc.batch is not None
        step = result.steps[exc.batch]
        assert reader.index in step.readers, f"{where}: {exc!r} of a step it was not in"
        if exc.position is None:
            assert step.raised, f"{where}: {exc!r}"
        else:
            assert step.readers[exc.position] == reader.index, f"{where}: another's {exc!r}"
            assert step.ends[exc.position] == "failure", f"{where}: {exc!r}"
    else:
        assert reader.kind in ("left", "cancelled"), f"{where}: {reader.kind}"
        assert got == emitted[: len(got)], f"{where}: read {got}, emitted {emitted}"
