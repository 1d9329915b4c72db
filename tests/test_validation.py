"""Bad settings and arguments: refused with errors that name the setting, rule and value.

Part of the errors table of DESIGN.md (see also test_errors.py).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from _helpers import Boom, gather, tag

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
    [(math.nan, ValueError), ("high", TypeError)],
    ids=["nan", "str"],
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
