"""``settle()``: wait until every other task is blocked, without moving virtual time.

On asyncio, ``anyio.wait_all_tasks_blocked()`` polls with ``sleep(0.1)``; on a virtual-time
loop that sleep is a real timer, so the clock jumps up to 0.1 s (firing batch deadlines on
the way) whenever some task was still runnable. Timing tests need the clock to stand still.
"""

from __future__ import annotations

import asyncio

import anyio


async def settle() -> None:
    """Return once every other task waits on something; virtual time does not move."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio: its wait_all_tasks_blocked takes no time
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        blocked = True
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not this and (waiter is None or waiter.done()):
                blocked = False
                break
        if blocked:
            return
    raise AssertionError("tasks never settled: some task keeps running")
