"""``check_batch_invariant``: an item's result must not depend on its batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from .._core.results import check_results
from .._errors import BatchSizeMismatch
from .._settings import is_async_callable
from ._view import same
from ._virtual_time import fresh_backend_options

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["check_batch_invariant"]


def _as_results(out: object, batch: list[Any]) -> Sequence[Any]:
    try:
        return check_results(out, len(batch))
    except (BatchSizeMismatch, TypeError) as exc:
        msg = f"fn gave a bad output for the batch {batch!r}: {exc}"
        raise AssertionError(msg) from None


def check_batch_invariant(
    fn: Callable[[list[Any]], Any],
    items: st.SearchStrategy[Any],
    *,
    max_batch: int = 8,
    backend: str = "asyncio",
    equal: Callable[[Any, Any], bool] | None = None,
    max_examples: int | None = None,
) -> None:
    """Check that ``fn`` gives each item the same result in any batch as alone.

    Runs a hypothesis test: draws batches of 1 to ``max_batch`` items, calls ``fn`` on
    each batch and on each item alone, and compares with ``equal`` (default ``==``, also
    for arrays, tensors and containers of them; pass e.g. ``numpy.allclose`` where float
    rounding may differ). ``fn`` may be sync or async (run with ``anyio.run`` on
    ``backend``). Call it from a plain (not ``@given``, not async) test::

        def test_pooling_is_batch_invariant():
            check_batch_invariant(pool, items=st.lists(st.integers(0, 9), min_size=1))

    :param max_examples: default: the current hypothesis profile's
    :raises AssertionError: naming the shrunk batch, the first differing item and both
        results
    """
    equal_results = equal or same
    is_async = is_async_callable(fn)

    async def run_async(batch: list[Any]) -> tuple[list[Any], Sequence[Any]]:
        alone = [_as_results(await fn([item]), [item])[0] for item in batch]
        return alone, _as_results(await fn(list(batch)), batch)

    def run(batch: list[Any]) -> tuple[list[Any], Sequence[Any]]:
        if is_async:
            options = fresh_backend_options(backend)
            return anyio.run(run_async, batch, backend=backend, backend_options=options)
        alone = [_as_results(fn([item]), [item])[0] for item in batch]
        return alone, _as_results(fn(list(batch)), batch)

    profile = hypothesis_settings()  # the current profile
    chosen = hypothesis_settings(
        profile,
        deadline=None,
        database=None,  # one inner test serves every fn: no examples shared between them
        suppress_health_check=[*profile.suppress_health_check, HealthCheck.too_slow],
        max_examples=profile.max_examples if max_examples is None else max_examples,
    )

    @chosen
    @given(batch=st.lists(items, min_size=1, max_size=max_batch))
    def batch_invariance(batch: list[Any]) -> None:
        alone, together = run(batch)
        for position, (item, a, b) in enumerate(zip(batch, alone, together, strict=True)):
            if not equal_results(a, b):
                msg = (
                    f"fn gives item {item!r} a different result in a batch: alone {a!r}, "
                    f"at position {position} of the batch {batch!r}: {b!r}"
                )
                raise AssertionError(msg)

    batch_invariance()
