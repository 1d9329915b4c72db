"""Observing and steering a ``batched.Continuous``: ``on_batch`` per step, ``configure``
while it runs, and a SIGTERM-style drain.

Run it with ``python examples/continuous_ops.py`` (asyncio, then trio when installed).
A simulated decoder emits one token per step for every active request. ``on_batch``
gets a ``batched.BatchInfo`` after each step (how many requests it stepped, why, the
waits of the requests that joined, those that ended); ``configure(batch_size=...)``
widens the active set without a restart; ``stop_accepting()`` refuses new requests while
every accepted one decodes to its end.
"""

from __future__ import annotations

import importlib.util
from collections import Counter

import anyio

import batched
from batched import Last, Next

TOKENS = 3  # per request

State = tuple[str, int]  # (request, tokens emitted so far)


async def step(states: list[State]) -> list[Next[State, str] | Last[str]]:
    await anyio.sleep(0.002)  # one decoding step for the whole active set
    return [
        Last(f"{name}:{k}") if k + 1 == TOKENS else Next(f"{name}:{k}", (name, k + 1))
        for name, k in states
    ]


async def decode_all(c: batched.Continuous[State, str], names: list[str]) -> list[list[str]]:
    """Queue every request at once, then read each stream to its end."""
    streams = [c.stream((name, 0)) for name in names]
    out: list[list[str]] = []
    for stream in streams:
        async with stream:
            out.append([token async for token in stream])
    return out


def steps(infos: list[batched.BatchInfo]) -> str:
    reasons = dict(Counter(info.reason for info in infos))
    return f"steps of {[info.size for info in infos]}, reasons {reasons}"


async def main() -> None:
    infos: list[batched.BatchInfo] = []
    async with batched.Continuous(step, batch_size=2, on_batch=infos.append) as c:
        await decode_all(c, [f"r{i}" for i in range(6)])
        print(f"batch_size=2: {steps(infos)}")

        # An operator widens the active set while the service runs.
        c.configure(batch_size=8)
        infos.clear()
        tokens = await decode_all(c, [f"s{i}" for i in range(6)])
        print(f"batch_size={c.settings.batch_size}: {steps(infos)}")
        print(f"s0 got {tokens[0]}")
        print(f"waits reported once per request: {sum(len(i.waits_s) for i in infos)}")
        print(f"requests ended per step: {[info.outcome.completed for info in infos]}")

        # SIGTERM: new requests are refused; leaving the block decodes every accepted
        # one to its end, without waiting for more.
        infos.clear()
        streams = [c.stream((f"t{i}", 0)) for i in range(4)]
        c.stop_accepting()
        print(f"ready: {c.accepting}")
        try:
            c.stream(("late", 0))
        except batched.BatcherClosed:
            print("a request after stop_accepting(): BatcherClosed")
    print(f"drain: {steps(infos)}")
    done = 0
    for stream in streams:  # what was emitted is still read after the block
        async with stream:
            done += len([token async for token in stream]) == TOKENS
    print(f"drain: {done} accepted requests decoded to their end")
    stats = c.stats
    print(f"stats: completed={stats.completed} failed={stats.failed} steps={stats.total_batches}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
