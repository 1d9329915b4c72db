"""Fixed shapes for compiled models: ``allowed_batch_sizes`` and ``allowed_lengths``.

The model sees only allowed shapes: a batch is padded with filler rows (pad tokens) up
to the next allowed batch size, and the sequence axis up to the next allowed length.
Fillers never reach a caller; the cut rounds to the nearest allowed size. Async tests
run on asyncio (virtual time) and trio (``MockClock``); the property test runs each
example in its own ``anyio.run`` on both backends.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from _helpers import BACKENDS, settle
from hypothesis import given
from hypothesis import strategies as st

import batched
import batched.aio.inference
import batched.inference
from batched.testing import fresh_backend_options

# Which rows meet in one batch is the subject of every test here: on virtual time only
# (asyncio+uvloop runs in real time).
pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

HANG_S = 3600.0  # virtual seconds
PAD = 7


class Recorder:
    """An async model that keeps a copy of each batch's ``input_ids`` and returns, per
    row, the row doubled (token level) and its sum (pooled)."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    async def __call__(self, features: dict[str, Any]) -> dict[str, Any]:
        ids = features["input_ids"]
        self.batches.append(ids.copy() if hasattr(ids, "copy") else ids.clone())
        await anyio.lowlevel.checkpoint()
        return {"doubled": ids * 2, "total": ids.sum(axis=1)}


def expected(ids: Any) -> dict[str, Any]:
    return {"doubled": ids * 2, "total": ids.sum(axis=1)}


async def send_all(model: Any, calls: list[Any]) -> list[Any]:
    """Send each call (each reaches its wait before the next); what each got."""
    got: list[Any] = [None] * len(calls)

    async def one(index: int, features: Any) -> None:
        try:
            got[index] = await model(features)
        except Exception as exc:
            got[index] = exc

    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            for index, features in enumerate(calls):
                tg.start_soon(one, index, features)
                await settle()
    return got


def one_row(value: int, length: int = 3) -> dict[str, Any]:
    return {"input_ids": np.full((1, length), value, dtype=np.int64)}


@pytest.mark.parametrize(
    ("waiting", "rows", "shapes"),
    [
        (21, [16, 5], [16, 8]),  # 5 from 16, 11 from 32: cut 16, the rest next
        (28, [28], [32]),  # 4 fillers beat leaving 12 behind
        (24, [24], [32]),  # a tie pads: one call instead of two
        (16, [16], [16]),
        (3, [3], [8]),  # below the smallest size: all of them, padded
    ],
)
async def test_the_cut_rounds_to_the_nearest_allowed_size(
    waiting: int, rows: list[int], shapes: list[int]
) -> None:
    rec = Recorder()
    model = batched.aio.inference.dynamically(
        rec, allowed_batch_sizes=(8, 16, 32), pad_tokens={"input_ids": PAD}, timeout_ms=5
    )
    calls = [one_row(100 + i) for i in range(waiting)]
    async with model:
        got = await send_all(model, calls)
    assert [len(batch) for batch in rec.batches] == shapes
    real = [int((batch[:, 0] != PAD).sum()) for batch in rec.batches]
    assert real == rows
    for batch in rec.batches:
        assert len(batch) in (8, 16, 32)
        n = int((batch[:, 0] != PAD).sum())
        assert (batch[n:] == PAD).all()  # fillers after the real rows, all pad tokens
    for features, out in zip(calls, got, strict=True):
        assert not isinstance(out, Exception), out
        np.testing.assert_array_equal(out["total"], expected(features["input_ids"])["total"])


async def test_filler_outputs_never_reach_callers_one_result_per_row() -> None:
    """A model returning one result per row (a list) gets them for fillers too; only the
    real rows' results come back, each to its caller."""
    shapes: list[tuple[int, ...]] = []

    async def model_fn(features: dict[str, Any]) -> list[Any]:
        shapes.append(tuple(features["input_ids"].shape))
        return [("row", int(row[0])) for row in features["input_ids"]]

    model = batched.aio.inference.dynamically(model_fn, allowed_batch_sizes=(4,), timeout_ms=1)
    got = await send_all(model, [one_row(i + 1) for i in range(3)])
    assert shapes == [(4, 3)]
    assert got == [[("row", i + 1)] for i in range(3)]


@pytest.mark.parametrize("decorator", ["inference", "aio.inference"])
async def test_allowed_lengths_bucket_the_sequence_and_trim_it_back(decorator: str) -> None:
    rec = Recorder()
    make = {
        "inference": batched.inference.dynamically,
        "aio.inference": batched.aio.inference.dynamically,
    }[decorator]
    model = make(
        allowed_lengths=(4, 8, 16),
        sequence_outputs=("doubled",),
        pad_tokens={"input_ids": PAD},
        timeout_ms=1,
    )(rec)
    calls = [{"input_ids": np.arange(1, 1 + n, dtype=np.int64)[None]} for n in (2, 5, 3)]
    got = await send_all(model, calls)
    assert [tuple(batch.shape) for batch in rec.batches] == [(3, 8)]
    for features, out in zip(calls, got, strict=True):
        want = expected(features["input_ids"])
        np.testing.assert_array_equal(out["doubled"], want["doubled"])
        np.testing.assert_array_equal(
            out["total"], want["total"] + PAD * (8 - features["input_ids"].shape[1])
        )


async def test_a_row_longer_than_every_allowed_length_fails_its_call_alone() -> None:
    rec = Recorder()
    model = batched.aio.inference.dynamically(rec, allowed_lengths=(4, 8), timeout_ms=1)
    got = await send_all(model, [one_row(1, 3), one_row(2, 9), one_row(3, 8)])
    assert isinstance(got[1], ValueError)
    assert "'allowed_lengths'" in str(got[1])
    assert "9 positions" in str(got[1])
    assert [tuple(batch.shape) for batch in rec.batches] == [(2, 8)]
    assert int(got[0]["total"][0]) == 3
    assert int(got[2]["total"][0]) == 24


async def test_the_length_budget_counts_buckets_and_filler_rows() -> None:
    """Rows of 3 cost their bucket, 8; a batch of 3 rows is padded to 4: with a budget of
    32, at most 4 rows x 8 positions, fillers included."""
    rec = Recorder()
    model = batched.aio.inference.dynamically(
        rec,
        allowed_lengths=(8, 16),
        allowed_batch_sizes=(1, 2, 4, 8),
        max_batch_length=32,
        timeout_ms=1,
    )
    got = await send_all(model, [one_row(i + 1) for i in range(10)])
    assert all(not isinstance(out, Exception) for out in got)
    for batch in rec.batches:
        rows, length = batch.shape
        assert length == 8
        assert rows in (1, 2, 4, 8)
        assert rows * length <= 32
    assert sum(int((batch[:, 0] != 0).sum()) for batch in rec.batches) == 10


async def test_on_batch_reports_the_padded_shape_the_model_got() -> None:
    """Three rows of 3 and 5 positions, allowed (4, 8) rows and (4, 8) positions: the
    model gets 4 x 8, and that is the padded size reported, not 3 x 5."""
    rec = Recorder()
    infos: list[batched.BatchInfo] = []
    model = batched.aio.inference.dynamically(
        rec,
        allowed_batch_sizes=(4, 8),
        allowed_lengths=(4, 8),
        timeout_ms=1,
        on_batch=infos.append,
    )
    await send_all(model, [one_row(1, 3), one_row(2, 5), one_row(3, 3)])
    assert [tuple(batch.shape) for batch in rec.batches] == [(4, 8)]
    assert [(info.size, info.padded_size) for info in infos] == [(3, 32)]


async def test_torch_tensors_keep_dtype_and_get_filler_rows() -> None:
    torch = pytest.importorskip("torch")
    shapes: list[tuple[int, ...]] = []
    dtypes: list[Any] = []

    async def model_fn(features: dict[str, Any]) -> Any:
        ids = features["input_ids"]
        shapes.append(tuple(ids.shape))
        dtypes.append(ids.dtype)
        return ids.sum(dim=1)

    model = batched.aio.inference.dynamically(
        model_fn, allowed_batch_sizes=(2, 4), allowed_lengths=(4, 8), timeout_ms=1
    )
    calls = [{"input_ids": torch.full((1, n), n, dtype=torch.int32)} for n in (1, 5, 2)]
    got = await send_all(model, calls)
    assert shapes == [(4, 8)]
    assert [int(out[0]) for out in got] == [1, 25, 4]
    assert dtypes == [torch.int32]
    assert all(isinstance(out, torch.Tensor) for out in got)


@pytest.mark.parametrize(
    ("settings", "error", "text"),
    [
        ({"allowed_batch_sizes": (8, 4)}, ValueError, "'allowed_batch_sizes' must be increasing"),
        ({"allowed_batch_sizes": (0, 4)}, ValueError, "'allowed_batch_sizes'"),
        ({"allowed_batch_sizes": ()}, ValueError, "'allowed_batch_sizes'"),
        ({"allowed_batch_sizes": (4, 4)}, ValueError, "'allowed_batch_sizes'"),
        ({"allowed_batch_sizes": (True, 2)}, TypeError, "'allowed_batch_sizes'"),
        ({"allowed_batch_sizes": 8}, TypeError, "'allowed_batch_sizes'"),
        ({"allowed_lengths": "64"}, TypeError, "'allowed_lengths'"),
        ({"allowed_lengths": (64, 32)}, ValueError, "'allowed_lengths'"),
        ({"allowed_lengths": (2.0,)}, TypeError, "'allowed_lengths'"),
        (
            {"allowed_batch_sizes": (4, 8), "batch_size": 32},
            ValueError,
            "'allowed_batch_sizes' must reach 'batch_size'",
        ),
    ],
)
def test_bad_allowed_sizes_fail_at_decoration(
    settings: dict[str, Any], error: type[Exception], text: str
) -> None:
    for make in (batched.inference.dynamically, batched.aio.inference.dynamically):
        with pytest.raises(error, match=text):
            make(Recorder(), **settings)
    with pytest.raises(error, match=text):
        batched.aio.inference.AsyncModelBatchProcessor(Recorder(), **{"batch_size": 8, **settings})


async def test_without_batch_size_the_largest_allowed_size_is_the_batch_size() -> None:
    rec = Recorder()
    model = batched.aio.inference.dynamically(rec, allowed_batch_sizes=(2, 4), timeout_ms=1)
    await send_all(model, [one_row(i + 1) for i in range(6)])
    assert [len(batch) for batch in rec.batches] == [4, 2]


async def test_configure_refuses_a_batch_size_above_the_largest_allowed_size() -> None:
    rec = Recorder()
    models = [
        batched.aio.inference.dynamically(rec, allowed_batch_sizes=(2, 4), timeout_ms=1),
        batched.inference.dynamically(allowed_batch_sizes=(2, 4), timeout_ms=1)(
            lambda features: features
        ),
        batched.aio.inference.AsyncModelBatchProcessor(rec, batch_size=4, allowed_batch_sizes=(4,)),
    ]
    for model in models:
        with pytest.raises(ValueError, match="'allowed_batch_sizes' must reach 'batch_size'"):
            model.configure(batch_size=5)
        with pytest.raises(ValueError, match="its largest, 4, is below batch_size 5"):
            model.configure(batch_size=5, timeout_ms=3)
        assert (model.settings.batch_size, model.settings.timeout_ms) != (5, 3)  # untouched
        with pytest.raises(TypeError, match="'batch_size' must be an int"):
            model.configure(batch_size=True)
    models[1].close()


async def test_inference_is_steered_like_every_front() -> None:
    """configure() binds the next cut (rounded to the allowed sizes within it);
    stop_accepting() refuses new calls while the accepted ones are served."""
    rec = Recorder()
    model = batched.aio.inference.dynamically(rec, allowed_batch_sizes=(1, 2, 4, 8), timeout_ms=1)
    async with model:
        model.configure(batch_size=2, timeout_ms=5)
        assert (model.settings.batch_size, model.settings.timeout_ms) == (2, 5.0)
        got = await send_all(model, [one_row(i + 1) for i in range(5)])
        assert all(not isinstance(out, Exception) for out in got)
        assert [len(batch) for batch in rec.batches] == [2, 2, 1]
        assert model.accepting
        model.stop_accepting()
        assert not model.accepting
        with pytest.raises(batched.BatcherClosed, match="stopped accepting"):
            await model(one_row(9))


# -- property: only allowed shapes, every caller its own rows ---------------------------


@st.composite
def scripts(draw: st.DrawFn) -> dict[str, Any]:
    sizes = sorted(draw(st.sets(st.integers(1, 12), min_size=1, max_size=4)))
    lengths = sorted(draw(st.sets(st.integers(1, 24), min_size=1, max_size=4)))
    return {
        "callers": draw(
            st.lists(
                st.tuples(
                    st.integers(1, 4),  # rows
                    st.integers(1, lengths[-1] + 2),  # length (over the largest: an error)
                    st.integers(0, 6),  # arrival, ms
                ),
                min_size=1,
                max_size=12,
            )
        ),
        "sizes": tuple(sizes),
        "lengths": tuple(lengths),
        "batch_size": draw(st.integers(1, sizes[-1])),
        "timeout_ms": draw(st.sampled_from([0, 1, 5])),
        "max_batch_length": draw(st.none() | st.integers(10, 200)),
        "side": draw(st.sampled_from(["right", "left"])),
        "owned": draw(st.booleans()),
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
@given(script=scripts())
def test_the_model_sees_only_allowed_shapes(backend: str, script: dict[str, Any]) -> None:
    sizes, lengths = script["sizes"], script["lengths"]
    seen: list[tuple[int, ...]] = []
    delivered: list[int] = []  # the first token of each real row the model saw

    async def raw(features: dict[str, Any]) -> dict[str, Any]:
        ids = features["input_ids"]
        seen.append(tuple(ids.shape))
        delivered.extend(int(row[row != -1][0]) for row in ids if (row != -1).any())
        await anyio.sleep(0.001)
        return {"doubled": ids * 2, "total": np.where(ids == -1, 0, ids).sum(axis=1)}

    calls = []
    for index, (rows, length, arrival) in enumerate(script["callers"]):
        ids = 1 + 1000 * index + np.arange(rows * length, dtype=np.int64).reshape(rows, length)
        calls.append((arrival, {"input_ids": ids}))
    got: dict[int, Any] = {}
    infos: list[batched.BatchInfo] = []

    async def main() -> None:
        model = batched.aio.inference.dynamically(
            raw,
            on_batch=infos.append,
            batch_size=script["batch_size"],
            timeout_ms=script["timeout_ms"],
            max_batch_length=script["max_batch_length"],
            padding_side=script["side"],
            pad_tokens={"input_ids": -1},
            sequence_outputs=("doubled",),
            allowed_batch_sizes=sizes,
            allowed_lengths=lengths,
        )

        async def one(index: int, arrival: int, features: dict[str, Any]) -> None:
            await anyio.sleep(arrival / 1000)
            try:
                got[index] = await model(features)
            except ValueError as exc:
                got[index] = exc

        async def run_all() -> None:
            async with anyio.create_task_group() as tg:
                for index, (arrival, features) in enumerate(calls):
                    tg.start_soon(one, index, arrival, features)

        with anyio.fail_after(HANG_S):
            if script["owned"]:
                async with model:
                    await run_all()
            else:
                await run_all()

    anyio.run(main, backend=backend, backend_options=fresh_backend_options(backend))
    for rows, length in seen:
        assert rows in sizes, (rows, sizes)
        assert length in lengths, (length, lengths)
    # on_batch reports the shape the model got (one batch runs at a time: same order).
    assert [info.padded_size for info in infos] == [rows * length for rows, length in seen]
    assert sorted(got) == list(range(len(calls)))
    firsts = []
    for index, (_, features) in enumerate(calls):
        ids = features["input_ids"]
        if ids.shape[1] > lengths[-1]:
            assert isinstance(got[index], ValueError)
            assert "'allowed_lengths'" in str(got[index])
            continue
        np.testing.assert_array_equal(got[index]["doubled"], ids * 2)
        np.testing.assert_array_equal(got[index]["total"], ids.sum(axis=1))
        firsts += [int(row[0]) for row in ids]
    # Every real row reached the model exactly once; fillers are all pad tokens.
    assert sorted(delivered) == sorted(firsts)
    if script["max_batch_length"] is not None:
        budget = script["max_batch_length"]
        for rows, length in seen:
            # Over the budget only for a row that alone is (it travels alone, padded).
            assert rows * length <= budget or rows == sizes[0]
