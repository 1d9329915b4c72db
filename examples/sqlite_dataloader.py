"""The DataLoader pattern on SQLite: many ``get_user(id)`` calls, a few ``IN (...)`` queries.

Run it with ``python examples/sqlite_dataloader.py``. It makes a temporary SQLite
database with 1,000 users, then 1,000 tasks each ask for one user (some ids asked many
times, some missing) on asyncio and on trio. A ``batched.Batcher`` gathers the ids into
batches; its batch function runs one ``SELECT id, name FROM users WHERE id IN (?, ...)``
per batch in a worker thread (sqlite3 blocks) and returns the rows in the order of the
ids asked, ``None`` for an id with no row. With ``dedupe=True`` an id asked by many
callers at the same time is fetched once and every one of them gets the row.

This is what a GraphQL resolver or an ORM's N+1 problem needs: each resolver awaits
``loader.get_user(id)`` on its own, and the database sees one query per batch.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.to_thread

import batched

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self


class User(NamedTuple):
    id: int
    name: str


def create_database(path: Path, users: int = 1000) -> None:
    """A ``users`` table with ids 1 to ``users``."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO users (id, name) VALUES (?, ?)",
            ((i, f"user-{i:04d}") for i in range(1, users + 1)),
        )
    conn.close()  # the `with` block commits; it does not close


def select_user(path: Path, user_id: int) -> User | None:
    """The unbatched lookup: one query for one id."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else User(*row)


class UserLoader:
    """Batches ``get_user(id)`` calls into ``IN (...)`` queries.

    ``async with UserLoader(path) as loader:`` opens the database connection and the
    batcher; the block's end finishes the accepted calls, then closes both. Every query
    made is kept in ``queries`` (its ids, in order).

    One connection, shared by the worker threads: anyio runs each batch in a thread of
    its pool, not always the same one, and sqlite3 refuses by default a connection used
    from a thread other than its creator's. A connection per thread (``threading.local``)
    would leave connections open in pool threads that nobody closes; so this opens one
    with ``check_same_thread=False`` and a lock makes sure that only one thread uses it
    at a time. (With ``max_concurrent_batches=1``, the default, only one batch runs at a
    time anyway; the lock keeps it right if you raise it.)
    """

    def __init__(
        self, path: Path, *, batch_size: int = 100, timeout_ms: float = 2.0, dedupe: bool = True
    ) -> None:
        self.path = path
        self.queries: list[list[int]] = []
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # SQLite takes at least 999 parameters per query: keep batch_size below that.
        self.batcher: batched.Batcher[int, User | None] = batched.Batcher(
            self._load, batch_size=batch_size, timeout_ms=timeout_ms, dedupe=dedupe
        )

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None if there is none."""
        return await self.batcher(user_id)

    async def _load(self, ids: list[int]) -> list[User | None]:
        return await anyio.to_thread.run_sync(self._select, ids)

    def _select(self, ids: list[int]) -> list[User | None]:
        """One query for many ids (in a worker thread); one result per id, in order."""
        placeholders = ", ".join("?" * len(ids))
        query = f"SELECT id, name FROM users WHERE id IN ({placeholders})"
        with self._lock:
            if self._conn is None:
                raise RuntimeError("UserLoader used outside `async with`")
            rows = self._conn.execute(query, ids).fetchall()
            self.queries.append(list(ids))
        found = {row[0]: User(*row) for row in rows}
        return [found.get(user_id) for user_id in ids]  # IN (...) returns rows in any order

    async def __aenter__(self) -> Self:
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            await self.batcher.__aenter__()
        except BaseException:
            self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.batcher.__aexit__(exc_type, exc, tb)  # no batch runs after this
        finally:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def requested_ids(calls: int = 1000, seed: int = 0) -> list[int]:
    """``calls`` ids drawn from 300 (so most are asked several times), about 1 in 11 with no
    row (ids past the table)."""
    rng = random.Random(seed)
    pool = rng.sample(range(1, 1101), 300)  # ids above 1000 have no row
    return [rng.choice(pool) for _ in range(calls)]


async def load_all(loader: UserLoader, ids: list[int]) -> list[User | None]:
    """Every id from a task of its own, all at once; the results in the same order."""
    results: list[User | None] = [None] * len(ids)

    async def resolve(i: int) -> None:
        results[i] = await loader.get_user(ids[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(ids)):
            tg.start_soon(resolve, i)
    return results


async def main(path: Path) -> None:
    ids = requested_ids()
    async with UserLoader(path) as loader:
        users = await load_all(loader, ids)
        queries = list(loader.queries)
        missing = await loader.get_user(5000)
    fetched = sum(map(len, queries))
    print(f"{len(ids)} calls -> {len(queries)} queries")
    print(f"dedupe: {len(set(ids))} distinct ids among the calls, {fetched} ids fetched")
    direct = {user_id: select_user(path, user_id) for user_id in set(ids)}
    ok = users == [direct[user_id] for user_id in ids]
    print(f"every result matches a direct SELECT: {'yes' if ok else 'no'}")
    print(f"{sum(user is None for user in users)} calls asked for an id with no row: None")
    print(f"get_user(5000) -> {missing}")

    async with UserLoader(path, dedupe=False) as plain:
        await load_all(plain, ids)
    fetched = sum(map(len, plain.queries))
    print(f"without dedupe: {len(plain.queries)} queries, {fetched} ids fetched")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        database = Path(directory) / "users.db"
        create_database(database)
        for backend in ("asyncio", "trio"):
            print(f"--- {backend} ---")
            anyio.run(main, database, backend=backend)
