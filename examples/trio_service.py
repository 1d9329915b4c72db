"""A trio program: a nursery of callers, and a TCP service whose lookups share batches.

Run it with ``python examples/trio_service.py`` (needs trio). Two parts, both under
``trio.run``:

1. A nursery starts 1,000 tasks, each awaiting ``square(n)``, a function decorated with
   ``batched.dynamically``: the 1,000 calls reach the batch function in a handful of
   batches. No ``async with`` is needed: the waiting callers run the batches.
2. A line-based TCP service on loopback (``trio.serve_tcp`` on port 0, started with
   ``nursery.start``): a client sends one key per line, and for each line the server's
   handler awaits ``KeyValueService.lookup(key)`` (a batched method: one batcher per
   service) and writes the value back on a line of its own. Each connection is served
   line by line, so batches form across connections: several clients, connected at
   once, send several lines each, and their lookups share batches.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

import batched

if TYPE_CHECKING:
    from collections.abc import Mapping

MISSING = "<missing>"  # the reply for a key the store does not hold

square_batches: list[int] = []  # the size of every batch `square` was called with


def square_of(n: int) -> int:
    """One square, unbatched."""
    return n * n


@batched.dynamically(batch_size=100, timeout_ms=5.0)
async def square(numbers: list[int]) -> list[int]:
    square_batches.append(len(numbers))
    return [square_of(n) for n in numbers]


class LineStream:
    """Lines (without their ``\\n``) over a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def receive_line(self) -> str | None:
        """The next line, or None once the peer has closed (a partial line is dropped)."""
        while (end := self.buffer.find(b"\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        line = self.buffer[:end].decode()
        del self.buffer[: end + 1]
        return line

    async def send_line(self, line: str) -> None:
        await self.stream.send_all(line.encode() + b"\n")


class KeyValueService:
    """Serves ``store`` over TCP, one key per line; lookups are batched per service."""

    def __init__(self, store: Mapping[str, str]) -> None:
        self.store = store
        self.batch_sizes: list[int] = []  # the size of every batch of lookups

    def value_of(self, key: str) -> str:
        """One lookup, unbatched."""
        return self.store.get(key, MISSING)

    @batched.dynamically(batch_size=64, timeout_ms=5.0)
    async def lookup(self, keys: list[str]) -> list[str]:
        """Many lookups in one round trip (a database, a cache server, ...)."""
        self.batch_sizes.append(len(keys))
        await trio.sleep(0.001)  # the round trip, paid once per batch
        return [self.value_of(key) for key in keys]

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection: a reply line for each key line, in order."""
        lines = LineStream(stream)
        async with stream:
            try:
                while (key := await lines.receive_line()) is not None:
                    await lines.send_line(await self.lookup(key))
            except trio.BrokenResourceError:
                pass  # the client went away: nothing to answer

    async def serve(self, nursery: trio.Nursery) -> int:
        """Start serving on a free loopback port in ``nursery``; the port."""
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
        )
        port: int = listeners[0].socket.getsockname()[1]
        return port


async def ask(
    port: int,
    keys: list[str],
    replies: list[str],
    go: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A client: connect (then report started), wait for ``go``, send every key on a
    line of its own, and append one reply per key to ``replies``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        task_status.started()
        await go.wait()
        await stream.send_all(b"".join(key.encode() + b"\n" for key in keys))
        lines = LineStream(stream)
        for _ in keys:
            reply = await lines.receive_line()
            if reply is None:
                msg = "the server closed the connection before replying to every line"
                raise ConnectionError(msg)
            replies.append(reply)


async def ask_all(port: int, requests: list[list[str]]) -> list[list[str]]:
    """One connection per list of keys, all sending at once; the replies, same shape."""
    replies: list[list[str]] = [[] for _ in requests]
    go = trio.Event()
    async with trio.open_nursery() as nursery:
        for keys, out in zip(requests, replies, strict=True):
            await nursery.start(ask, port, keys, out, go)
        go.set()  # every client is connected: they all send at once
    return replies


async def main() -> None:
    # 1. A nursery of callers.
    square_batches.clear()
    results: dict[int, int] = {}

    async def caller(n: int) -> None:
        results[n] = await square(n)

    async with trio.open_nursery() as nursery:
        for n in range(1000):
            nursery.start_soon(caller, n)
    print(f"nursery: {len(results)} calls -> {len(square_batches)} batches")
    ok = results == {n: square_of(n) for n in range(1000)}
    print(f"nursery: every caller got its own square: {'yes' if ok else 'no'}")

    # 2. A TCP service, exercised by 20 clients sending 10 keys each.
    service = KeyValueService({f"user:{i}": f"name-{i:03d}" for i in range(100)})
    requests = [[f"user:{(7 * c + 13 * j) % 120}" for j in range(10)] for c in range(20)]
    async with trio.open_nursery() as nursery:
        port = await service.serve(nursery)
        replies = await ask_all(port, requests)
        nursery.cancel_scope.cancel()  # stop serving
    expected = [[service.value_of(key) for key in keys] for keys in requests]
    lines = sum(map(len, requests))
    print(
        f"tcp: {len(requests)} connections x {len(requests[0])} lines: every reply correct: "
        f"{'yes' if replies == expected else 'no'}"
    )
    sizes = service.batch_sizes
    print(
        f"tcp: {lines} lookups -> {len(sizes)} batches "
        f"(largest {max(sizes)}, mean {lines / len(sizes):.1f})"
    )
    print(f"tcp: lookups shared batches: {'yes' if max(sizes) > 1 else 'no'}")


if __name__ == "__main__":
    trio.run(main)
