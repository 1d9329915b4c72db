"""The virtual-time test infrastructure itself: autojump, threads, real I/O, error recording."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time

import anyio
import anyio.to_thread
import pytest
from _helpers import asyncio_only, check_exit_ok, run_python

from batched.testing import (
    VirtualTimeLoop,
    fresh_backend_options,
    real_time,
    virtual_time_backends,
)

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_hour_sleep_takes_no_real_time() -> None:
    real0, virtual0 = time.monotonic(), anyio.current_time()
    await anyio.sleep(3600)
    assert anyio.current_time() - virtual0 >= 3600
    assert time.monotonic() - real0 < 1


async def test_fail_after_fires_in_virtual_time() -> None:
    start = anyio.current_time()
    with pytest.raises(TimeoutError), anyio.fail_after(10):
        await anyio.sleep(1000)
    assert 10 <= anyio.current_time() - start < 11


async def test_sleepers_wake_in_deadline_order() -> None:
    woke: list[tuple[str, float]] = []
    start = anyio.current_time()

    async def sleeper(name: str, delay: float) -> None:
        await anyio.sleep(delay)
        woke.append((name, anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 2.0)  # started first: start order must not matter
        tg.start_soon(sleeper, "early", 1.0)
    assert [name for name, _ in woke] == ["early", "late"]
    assert [round(at, 6) for _, at in woke] == [1.0, 2.0]


def _slow_answer() -> int:
    time.sleep(0.05)
    return 42


async def test_worker_thread_completes() -> None:
    # Nothing scheduled: the loop must block on the real selector until the thread's
    # call_soon_threadsafe wakes it, neither spinning nor hanging.
    assert await anyio.to_thread.run_sync(_slow_answer) == 42


async def test_worker_thread_with_pending_timer_does_not_deadlock() -> None:
    # Documented caveat: while the thread is busy, the pending one-hour timer fires at once
    # in virtual time. What matters is that both finish.
    real0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 3600)
        assert await anyio.to_thread.run_sync(_slow_answer) == 42
    assert time.monotonic() - real0 < 5


async def test_real_time_makes_hang_guards_wait_for_threads() -> None:
    with real_time():
        start = anyio.current_time()
        with anyio.fail_after(5):
            assert await anyio.to_thread.run_sync(_slow_answer) == 42
        assert 0.05 <= anyio.current_time() - start < 5
    before = anyio.current_time()
    await anyio.sleep(3600)  # back to virtual time afterwards
    assert anyio.current_time() - before >= 3600


async def test_socket_readiness_between_jumps() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)

        async def send_later() -> None:
            await anyio.sleep(1)
            b.send(b"x")

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_later)
            with anyio.fail_after(10):  # the loop polls I/O before jumping to this deadline
                await anyio.wait_readable(a)
        assert a.recv(1) == b"x"
        assert 1 <= anyio.current_time() - start < 10


async def test_socket_written_by_thread_wakes_idle_loop() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        timer = threading.Timer(0.05, b.send, args=(b"y",))
        timer.start()
        try:
            await anyio.wait_readable(a)  # nothing scheduled: blocks on the real selector
        finally:
            timer.join()
        assert a.recv(1) == b"y"


@asyncio_only
async def test_exception_handler_records_instead_of_logging() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    loop.call_exception_handler({"message": "Task was destroyed but it is pending!"})
    assert loop.recorded_errors == [{"message": "Task was destroyed but it is pending!"}]
    loop.recorded_errors.clear()  # or the anyio_backend teardown check fails this test


@asyncio_only
async def test_destroyed_pending_task_is_recorded() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    task = loop.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)  # let it block on a future nobody else references
    del task
    gc.collect()
    assert [e["message"] for e in loop.recorded_errors] == ["Task was destroyed but it is pending!"]
    loop.recorded_errors.clear()


def test_anyio_run_with_fresh_options_on_both_backends() -> None:
    async def three_days() -> float:
        start = anyio.current_time()
        await anyio.sleep(3 * 86400)  # more than asyncio's one-day select cap
        return anyio.current_time() - start

    real0 = time.monotonic()
    for backend, options in virtual_time_backends():
        assert anyio.run(three_days, backend=backend, backend_options=options) >= 3 * 86400
    assert time.monotonic() - real0 < 1


def test_recording_outside_pytest_runner() -> None:
    loops: list[VirtualTimeLoop] = []

    def factory() -> VirtualTimeLoop:
        loops.append(VirtualTimeLoop(start=100.0))
        return loops[-1]

    async def report() -> float:
        asyncio.get_running_loop().call_exception_handler({"message": "boom"})
        return anyio.current_time()

    assert anyio.run(report, backend="asyncio", backend_options={"loop_factory": factory}) == 100
    assert [loop.recorded_errors for loop in loops] == [[{"message": "boom"}]]


def test_runner_close_joins_default_executor_in_real_time() -> None:
    # Python >= 3.12 bounds that join by a 300 s timeout, which autojump must not fire.
    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(None, _slow_answer)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        assert runner.run(main()) == 42


def test_fresh_backend_options() -> None:
    assert fresh_backend_options("trio")["clock"] is not fresh_backend_options("trio")["clock"]
    assert fresh_backend_options("asyncio") == {"loop_factory": VirtualTimeLoop}
    with pytest.raises(ValueError, match="curio"):
        fresh_backend_options("curio")


def test_import_batched_does_not_import_trio() -> None:
    """Neither ``batched`` nor its virtual-time helpers import trio: asyncio users need
    not have it. (trio's own hypothesis plugin imports trio whenever hypothesis is
    imported, as batched.testing does: plugins are off here.)"""
    code = (
        "import sys, batched, batched.testing\n"
        "assert 'trio' not in sys.modules, 'trio imported'\n"
        "batched.testing.fresh_backend_options('asyncio')\n"
        "assert 'trio' not in sys.modules, 'trio imported'\n"
    )
    check_exit_ok(run_python("-c", code, HYPOTHESIS_NO_PLUGINS="1"))
