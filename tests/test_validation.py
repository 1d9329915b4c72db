"""Bad settings and arguments: refused with errors that name the setting, rule and value.

Part of the errors table of DESIGN.md (see also test_errors.py).
"""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import Boom, Rec, close_bounded, echo, gather, settle, tag

import batched
from batched import Batcher

pytestmark = pytest.mark.anyio


async def _agen(items: list[int]) -> Any:
    yield items


_AT_LEAST_1 = ">= ?1|at least 1|positive"


_BAD_SETTINGS = [
    ("batch_size", True, TypeError, "int"),
    ("batch_size", 1.5, TypeError, "int"),
    ("batch_size", 0, ValueError, _AT_LEAST_1),
    ("timeout_ms", -1, ValueError, ">= ?0|non-negative|negative"),
    ("timeout_ms", math.nan, ValueError, "finite|NaN"),
    ("max_batch_length", 0, ValueError, _AT_LEAST_1),
    ("max_queue_size", 0, ValueError, _AT_LEAST_1),
    ("max_concurrent_batches", 0, ValueError, _AT_LEAST_1),
    ("fn", 42, TypeError, "callable"),
    ("fn", _agen, TypeError, "generator"),
    ("strategy", "fifo", TypeError, "instance|Strategy"),
    ("strategy", batched.Fifo, TypeError, "instance|Strategy"),
]


@pytest.mark.parametrize(
    ("name", "value", "error", "rule"),
    _BAD_SETTINGS,
    ids=[f"{name}={getattr(value, '__name__', value)}" for name, value, *_ in _BAD_SETTINGS],
)
def test_bad_settings_fail_at_construction(
    name: str, value: Any, error: type[Exception], rule: str
) -> None:
    """Bad settings raise ValueError/TypeError at construction naming setting, rule and value."""

    async def fn(items: list[int]) -> list[int]:
        return items

    kwargs: dict[str, Any] = {"fn": fn, name: value}
    with pytest.raises(error) as excinfo:
        Batcher(kwargs.pop("fn"), **kwargs)
    message = str(excinfo.value)
    for part in (repr(name), rule, re.escape(repr(value))):
        assert re.search(part, message), (part, message)


@pytest.mark.parametrize(
    ("priority", "error"),
    [
        (math.nan, ValueError),
        (np.float32("nan"), ValueError),
        ("high", TypeError),
        (True, TypeError),
        (np.True_, TypeError),
        (Decimal(1), TypeError),
    ],
    ids=["nan", "numpy-nan", "str", "bool", "numpy-bool", "decimal"],
)
async def test_bad_priority_names_priority(priority: Any, error: type[Exception]) -> None:
    """A bad priority fails that call with an error naming 'priority'; the batcher goes on."""

    async def fn(items: list[int]) -> list[tuple[str, int]]:
        return tag(items)

    async with Batcher(fn, batch_size=2, timeout_ms=1) as b:
        with pytest.raises(error, match="priority"):
            await b(1, priority=priority)
        with pytest.raises(error, match="priority"):
            await b.many([1, 2], priority=priority)
        assert await b(3, priority=1.5) == ("r", 3)


_REAL_PRIORITIES: list[tuple[str, Any]] = [
    ("a", np.int64(3)),
    ("b", np.float32(1.5)),
    ("c", 2),
    ("d", Fraction(1, 2)),
    ("e", np.uint8(0)),
    ("f", np.float64(2.5)),
]


async def test_any_real_priority_is_accepted_and_ordered() -> None:
    """numpy's integers and floats, fractions: any real number but a bool or NaN, in
    every front; ``ByPriority`` orders them together."""
    rec = Rec(hold={"held"})
    with anyio.fail_after(60):
        async with (
            Batcher(rec, strategy=batched.ByPriority(), batch_size=8, timeout_ms=1) as b,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(b, "held")
            await rec.running.wait()
            for item, priority in _REAL_PRIORITIES:
                tg.start_soon(functools.partial(b, item, priority=priority))
                await settle()
            rec.release.set()
        f = batched.dynamically(batch_size=2, timeout_ms=1)(echo)
        for _, priority in _REAL_PRIORITIES:
            assert await f(1, priority=priority) == ("r", 1)
            assert await f.many([1, 2], priority=priority) == tag([1, 2])
    assert rec.batches == [["held"], ["e", "d", "b", "c", "f", "a"]]


def test_any_real_priority_is_accepted_by_a_sync_function() -> None:
    @batched.dynamically(batch_size=2, timeout_ms=1)
    def fn(items: list[int]) -> list[tuple[str, int]]:
        return tag(items)

    try:
        for _, priority in _REAL_PRIORITIES:
            assert fn(1, priority=priority) == ("r", 1)
            assert fn([1, 2], priority=priority) == tag([1, 2])
    finally:
        close_bounded(fn)


@pytest.mark.parametrize(
    ("bad_length", "error"),
    [
        (Boom("no length"), Boom),
        (-1, (ValueError, TypeError)),
        (1.5, (ValueError, TypeError)),
        ("3", (ValueError, TypeError)),
    ],
    ids=["raises", "negative", "float", "str"],
)
async def test_bad_length_fn_fails_only_that_caller(
    bad_length: Any, error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    """A length_fn that raises or returns a non-int or negative fails only that caller."""
    seen: list[str] = []

    def length_fn(item: str) -> Any:
        if item != "bad":
            return len(item)
        if isinstance(bad_length, Exception):
            raise bad_length
        return bad_length

    async def fn(items: list[str]) -> list[tuple[str, str]]:
        seen.extend(items)
        return tag(items)

    b = Batcher(fn, batch_size=3, timeout_ms=10, length_fn=length_fn, max_batch_length=100)
    async with b:
        outcome = await gather(b, ["a", "bad", "bb", "ccc"])
        with pytest.raises(error):
            await b.many(["x", "bad"])
        assert await b("dd") == ("r", "dd")
    assert isinstance(outcome["bad"], error), outcome
    assert {x: outcome[x] for x in ("a", "bb", "ccc")} == {x: ("r", x) for x in ("a", "bb", "ccc")}
    assert "bad" not in seen
    assert "x" not in seen  # the many call failed as a whole before submitting
    assert b.stats.queue_size == 0
