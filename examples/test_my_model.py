"""A user's test file written with ``batched.testing``.

The "model" embeds texts of token ids and mean-pools them; batching pads the texts to the
longest, so the pooling must mask the padding out. Two properties cover the whole path:

- ``check_batch_invariant``: the model gives a text the same vector in any batch as alone;
- ``run_schedule`` + ``check_invariants``: our ``Batcher`` settings hand every caller what
  the batch function computed for its own items, under random arrivals, cancellations,
  ``QueueFull`` and failing batches, on asyncio and trio, in virtual time.

Run it with ``python -m pytest examples/test_my_model.py`` or
``python examples/test_my_model.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batched
from batched.testing import (
    Schedule,
    anyio_backend,  # noqa: F401 - the async test below runs on asyncio and trio, virtual time
    arrival_schedules,
    check_batch_invariant,
    check_invariants,
    fn_outcomes,
    run_schedule,
    settle,
)

# -- the model -------------------------------------------------------------------------

VOCABULARY = np.random.default_rng(0).normal(size=(100, 8))  # token id -> vector; 0 pads
TEXTS = st.lists(st.integers(1, 99), min_size=1, max_size=6)  # a text: its token ids


def pad(texts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 to the longest text, and the mask of real tokens."""
    longest = max(map(len, texts))
    ids = np.zeros((len(texts), longest), dtype=np.int64)
    mask = np.zeros((len(texts), longest), dtype=bool)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = text
        mask[row, : len(text)] = True
    return ids, mask


def embed(texts: list[list[int]]) -> np.ndarray:
    """The batch function: one mean-pooled vector per text, the padding masked out."""
    ids, mask = pad(texts)
    summed = (VOCABULARY[ids] * mask[..., None]).sum(axis=1)
    return np.asarray(summed / mask.sum(axis=1, keepdims=True))


def embed_without_mask(texts: list[list[int]]) -> np.ndarray:
    """The bug the invariant catches: the padding's vectors count in the mean."""
    ids, _ = pad(texts)
    return np.asarray(VOCABULARY[ids].mean(axis=1))


async def aembed(texts: list[list[int]]) -> np.ndarray:
    return embed(texts)


def our_batcher(fn: Any) -> batched.Batcher[Any, Any]:
    """Our production settings; ``run_schedule`` passes its recording ``fn``."""
    return batched.Batcher(
        fn,
        batch_size=4,
        timeout_ms=2.0,
        max_batch_length=12,  # summed token count of a batch
        strategy=batched.ByLength(),
        max_queue_size=8,
    )


# -- the tests -------------------------------------------------------------------------


def test_pooling_is_batch_invariant() -> None:
    # allclose: a padded sum adds its terms in another order.
    check_batch_invariant(embed, items=TEXTS, equal=np.allclose, max_examples=50)


def test_pooling_without_mask_is_caught() -> None:
    with pytest.raises(AssertionError, match="different result in a batch"):
        check_batch_invariant(embed_without_mask, items=TEXTS, equal=np.allclose)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(schedule=arrival_schedules(items=TEXTS, no_wait_calls=True), outcomes=fn_outcomes())
def test_our_settings_keep_the_invariants(backend: str, schedule: Schedule, outcomes: Any) -> None:
    result = run_schedule(
        our_batcher,
        schedule,
        backend=backend,
        outcomes=outcomes,
        item_fn=lambda text: embed([text])[0],
    )
    check_invariants(result)


@pytest.mark.anyio
async def test_each_caller_gets_its_own_vector() -> None:
    texts = [[i, i + 1, i + 2][: 1 + i % 3] for i in range(1, 30)]
    vectors: dict[int, np.ndarray] = {}

    async def caller(i: int) -> None:
        vectors[i] = await b(texts[i])

    async with batched.Batcher(aembed, batch_size=8, timeout_ms=5.0) as b:
        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(caller, i)
            start = anyio.current_time()
            await settle()  # every caller waits: three full batches left, 5 items wait
            assert (b.stats.total_batches, b.stats.queue_size) == (3, 5)
            assert anyio.current_time() == start  # settle() did not move the clock
        assert anyio.current_time() - start == pytest.approx(0.005)  # the timeout, virtual
    for i, text in enumerate(texts):
        np.testing.assert_allclose(vectors[i], embed([text])[0])


if __name__ == "__main__":
    print("examples/test_my_model.py: a model and its Batcher settings, under pytest")
    # This file imported anyio before pytest could rewrite its plugin: say that is fine.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *quiet]))
