"""``batched.inference`` and ``batched.aio.inference``: padded, stacked model calls.

Each call sends features shaped ``(rows, length, ...)``; every row is one item of the
batcher. The async tests (an ``async def`` model, or ``batched.aio.inference``) run on
asyncio (virtual-time loop) and trio (``MockClock``); submissions are sequenced with
``settle()`` so that batches are deterministic on both. A sync model served from its own
thread runs in real time, small, with a hang guard on every wait. The property test at
the end runs each hypothesis example in its own ``anyio.run`` on both backends.

Token-level outputs are cut back to each caller's length only when named in
``sequence_outputs``; a test that compares a caller's outputs with the model run alone on
its features names them (``TOKENS`` for the ``outputs()`` model).

Tests marked ``xfail(strict=True, reason="BUG: ...")`` pin behaviour that is wrong today.
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs
import numpy as np
import pytest
from _helpers import BACKENDS, JOIN, ROOT, settle
from hypothesis import given
from hypothesis import strategies as st

import batched
import batched.aio.inference
import batched.inference
from batched.testing import fresh_backend_options, real_time

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

HANG_S = 3600.0  # virtual seconds: a hang guard that costs no real time
DECORATORS = {
    "inference": batched.inference.dynamically,
    "aio.inference": batched.aio.inference.dynamically,
}


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch() -> Any:
    """torch, or a skip; frozen out of the garbage collector once imported.

    Importing torch creates a few hundred thousand objects: every full collection (each
    asyncio test's teardown runs one, see conftest.py) would then take 0.1-0.2 s, in this
    file and in every test file after it. ``gc.freeze()`` moves what exists now, torch's
    modules included, out of the collector's way; later garbage is collected as before.
    A fixture, so that this happens before the test's event loop exists.
    """
    first = "torch" not in sys.modules
    torch = pytest.importorskip("torch")
    if first:
        gc.collect()
        gc.freeze()
    return torch


def feats(values: list[list[Any]], dtype: Any = np.int64) -> dict[str, Any]:
    """A call's features: ``input_ids`` (rows, length) and a bool ``attention_mask``."""
    ids = np.asarray(values, dtype=dtype)
    return {"input_ids": ids, "attention_mask": np.ones(ids.shape, dtype=bool)}


# The per-token outputs of outputs(): (batch, length) and (batch, length, 2).
TOKENS = frozenset({"doubled", "hidden"})


def outputs(f: dict[str, Any]) -> dict[str, Any]:
    """What every numpy model here returns: per-token, token x hidden, and per-row."""
    ids, mask = f["input_ids"], f["attention_mask"]
    return {
        "doubled": ids * 2,
        "hidden": np.stack([ids, mask.astype(ids.dtype)], axis=-1),
        "total": (ids * mask).sum(axis=1),
    }


def assert_same(got: Any, want: Any) -> None:
    """Equal values, shapes and dtypes, through dicts, tuples and lists."""
    if isinstance(want, dict):
        assert isinstance(got, dict), got
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
        return
    if isinstance(want, tuple | list):
        assert type(got) is type(want), (type(got), type(want))
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same(a, b)
        return
    if type(want).__module__.startswith("torch"):
        import torch

        assert isinstance(got, torch.Tensor), type(got)
        assert got.dtype == want.dtype
        assert got.device == want.device
        assert tuple(got.shape) == tuple(want.shape), (tuple(got.shape), tuple(want.shape))
        assert torch.equal(got, want), (got, want)
        return
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.array_equal(got, want), (got, want)


def _copy(value: Any) -> Any:
    return value.clone() if hasattr(value, "clone") else value.copy()


class ModelRecorder:
    """An async model's record: a copy of every batch it saw (and when it started).

    A batch holding a row whose first ``input_ids`` value is in ``hold`` waits for
    ``release``; ``running`` is set then.
    """

    def __init__(self, out: Callable[[dict[str, Any]], Any] = outputs) -> None:
        self.out = out
        self.batches: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.hold: set[Any] = set()
        self.running = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, features: dict[str, Any]) -> Any:
        self.batches.append({name: _copy(value) for name, value in features.items()})
        self.times.append(anyio.current_time())
        ids = features.get("input_ids")
        if ids is not None and self.hold & {row.reshape(-1)[0].item() for row in ids}:
            self.running.set()
            await self.release.wait()
        await anyio.lowlevel.checkpoint()
        return self.out(features)

    @property
    def rows(self) -> list[int]:
        return [len(next(iter(batch.values()))) for batch in self.batches]


def model_of(rec: ModelRecorder, decorator: str = "aio.inference", **settings: Any) -> Any:
    @DECORATORS[decorator](**settings)
    async def model(features: dict[str, Any]) -> Any:
        return await rec(features)

    return model


async def call_all(
    model: Any, calls: list[tuple[str, Any]], *, keywords: bool = False
) -> dict[str, Any]:
    """Send the calls in this order (each reaches its wait before the next is sent);
    what each got: its output or its exception."""
    out: dict[str, Any] = {}

    async def one(name: str, features: Any) -> None:
        try:
            out[name] = await (model(**features) if keywords else model(features))
        except Exception as exc:
            out[name] = exc

    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            for name, features in calls:
                tg.start_soon(one, name, features)
                await settle()
    return out


# -- padding ---------------------------------------------------------------------------


@pytest.mark.parametrize("owned", [False, True], ids=["caller-driven", "owned"])
@pytest.mark.parametrize("decorator", list(DECORATORS))
@pytest.mark.parametrize("side", ["right", "left"])
async def test_padding_side_and_pad_tokens(side: str, decorator: str, owned: bool) -> None:
    """Each feature is padded with its own pad token on the padding side; each caller
    gets its outputs as if it had been run alone (the named token outputs cut back)."""
    rec = ModelRecorder()
    model = model_of(
        rec,
        decorator,
        batch_size=8,
        timeout_ms=5,
        padding_side=side,
        pad_tokens={"input_ids": 7},
        sequence_outputs=TOKENS,
    )
    assert isinstance(model, batched.inference.AsyncInferenceFunction)
    a, b = feats([[1, 2]]), feats([[3, 4, 5, 6]])
    if owned:
        async with model:
            got = await call_all(model, [("a", a), ("b", b)])
    else:
        got = await call_all(model, [("a", a), ("b", b)])
    assert rec.rows == [2]
    batch = rec.batches[0]
    if side == "right":
        want_ids = [[1, 2, 7, 7], [3, 4, 5, 6]]
        want_mask = [[1, 1, 0, 0], [1, 1, 1, 1]]
    else:
        want_ids = [[7, 7, 1, 2], [3, 4, 5, 6]]
        want_mask = [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert_same(batch["input_ids"], np.array(want_ids, dtype=np.int64))
    assert_same(batch["attention_mask"], np.array(want_mask, dtype=bool))
    assert_same(got["a"], outputs(a))
    assert_same(got["b"], outputs(b))
    assert got["a"]["hidden"].shape == (1, 2, 2)  # cut from the padded length 4


@pytest.mark.parametrize("decorator", list(DECORATORS))
@pytest.mark.parametrize("side", ["right", "left"])
async def test_sequence_outputs_true_cuts_a_lone_array_on_the_padding_side(
    side: str, decorator: str
) -> None:
    """A lone (batch, padded_len, hidden) output with ``sequence_outputs=True``: each row
    keeps its own tokens, taken from the side that was not padded."""

    def out(f: dict[str, Any]) -> Any:
        ids = f["input_ids"]
        return ids[:, :, None] * np.arange(1, 4, dtype=ids.dtype)  # (batch, len, 3)

    rec = ModelRecorder(out)
    model = model_of(
        rec, decorator, batch_size=8, timeout_ms=5, padding_side=side, sequence_outputs=True
    )
    short, long = feats([[1, 2], [3, 4]]), feats([[5, 6, 7, 8, 9]])
    got = await call_all(model, [("short", short), ("long", long)])
    assert rec.rows == [3]
    padded = rec.batches[0]["input_ids"]
    assert padded.shape == (3, 5)
    want_rows = padded[:2, :2] if side == "right" else padded[:2, 3:]
    assert np.array_equal(want_rows, short["input_ids"])
    assert_same(got["short"], out(short))
    assert_same(got["long"], out(long))


@pytest.mark.virtual_time  # its calls must reach one batch within timeout_ms
@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.float16, np.bool_], ids=["int32", "int64", "float16", "bool"]
)
async def test_numpy_dtypes_are_kept(dtype: Any) -> None:
    rec = ModelRecorder(lambda f: {"ids": f["input_ids"], "mask": f["attention_mask"]})
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs=["ids", "mask"])
    a = {
        "input_ids": np.array([[1, 1]], dtype=dtype),
        "attention_mask": np.ones((1, 2), dtype=bool),
    }
    b = {
        "input_ids": np.array([[1, 0, 1]], dtype=dtype),
        "attention_mask": np.ones((1, 3), dtype=bool),
    }
    got = await call_all(model, [("a", a), ("b", b)])
    batch = rec.batches[0]
    assert batch["input_ids"].dtype == np.dtype(dtype)
    assert batch["attention_mask"].dtype == np.dtype(bool)
    assert_same(batch["input_ids"], np.array([[1, 1, 0], [1, 0, 1]], dtype=dtype))
    assert_same(got["a"], {"ids": a["input_ids"], "mask": a["attention_mask"]})
    assert_same(got["b"], {"ids": b["input_ids"], "mask": b["attention_mask"]})


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "float16"])
async def test_torch_dtype_and_device_are_kept(torch: Any, dtype: str, side: str) -> None:
    kind = getattr(torch, dtype)

    def out(f: dict[str, Any]) -> Any:
        ids, mask = f["input_ids"], f["attention_mask"]
        return {
            "doubled": ids * 2,
            "hidden": torch.stack([ids, mask.to(ids.dtype)], dim=-1),
            "total": (ids * mask).sum(dim=1),
        }

    rec = ModelRecorder(out)
    model = model_of(
        rec,
        batch_size=8,
        timeout_ms=5,
        padding_side=side,
        pad_tokens={"input_ids": 9},
        sequence_outputs=TOKENS,
    )

    def tfeats(values: list[list[int]]) -> dict[str, Any]:
        ids = torch.tensor(values, dtype=kind, device="cpu")
        return {"input_ids": ids, "attention_mask": torch.ones(ids.shape, dtype=torch.bool)}

    a, b = tfeats([[1, 2], [3, 4]]), tfeats([[5, 6, 7]])
    got = await call_all(model, [("a", a), ("b", b)])
    batch = rec.batches[0]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert isinstance(ids, torch.Tensor)
    assert ids.dtype == kind
    assert ids.device.type == "cpu"
    assert mask.dtype == torch.bool
    if side == "right":
        want = [[1, 2, 9], [3, 4, 9], [5, 6, 7]]
        want_mask = [[True, True, False], [True, True, False], [True, True, True]]
    else:
        want = [[9, 1, 2], [9, 3, 4], [5, 6, 7]]
        want_mask = [[False, True, True], [False, True, True], [True, True, True]]
    assert torch.equal(ids, torch.tensor(want, dtype=kind))
    assert torch.equal(mask, torch.tensor(want_mask))
    assert_same(got["a"], out(a))
    assert_same(got["b"], out(b))


# -- output structures -----------------------------------------------------------------


@pytest.mark.parametrize("structure", ["array", "dict", "tuple", "list"])
async def test_output_structure_is_split_per_caller(structure: str) -> None:
    def out(f: dict[str, Any]) -> Any:
        ids = f["input_ids"]
        doubled, total = ids * 2, ids.sum(axis=1)
        if structure == "array":
            return doubled
        if structure == "dict":
            return {"doubled": doubled, "total": total}
        if structure == "tuple":
            return (doubled, total)
        return [doubled, total]

    # The per-token output's key: True for a lone array, the dict key, the tuple index.
    tokens = {"array": True, "dict": {"doubled"}, "tuple": {0}, "list": (0,)}[structure]
    rec = ModelRecorder(out)
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs=tokens)
    a, b = feats([[1, 2, 3], [4, 5, 6]]), feats([[7]])
    got = await call_all(model, [("a", a), ("b", b)])
    assert rec.rows == [3]
    assert_same(got["a"], out(a))
    assert_same(got["b"], out(b))


async def test_one_result_per_row_is_handed_back_as_a_list() -> None:
    """A model may return one plain result per row instead of arrays."""
    rec = ModelRecorder(lambda f: [f"row {int(row[0])}" for row in f["input_ids"]])
    model = model_of(rec, batch_size=8, timeout_ms=5)
    got = await call_all(model, [("a", feats([[1, 0], [2, 0]])), ("b", feats([[3]]))])
    assert got == {"a": ["row 1", "row 2"], "b": ["row 3"]}


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({"ok": "no batch axis"}, ValueError),
        ("a string", TypeError),
        (None, TypeError),
        # No array in it, but not one result per row (2 rows).
        (["x", "y", "z"], TypeError),
        ([], TypeError),
        # Per-row arrays next to a loss: not read as one result per row.
        ((np.ones((2, 1)), 0.5), ValueError),
    ],
    ids=["dict of a str", "str", "None", "3 results", "empty list", "array and float"],
)
async def test_a_bad_model_output_fails_every_caller_of_the_batch(
    result: Any, error: type[Exception]
) -> None:
    calls = 0

    @batched.aio.inference.dynamically(batch_size=8, timeout_ms=5)
    async def model(features: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return result if calls == 1 else features["input_ids"]

    got = await call_all(model, [("a", feats([[1]])), ("b", feats([[2, 3]]))])
    assert isinstance(got["a"], error), got
    assert isinstance(got["b"], error), got
    assert got["a"] is got["b"]
    # Later batches run.
    assert_same(await model(feats([[4]])), np.array([[4]]))


# -- sequence outputs ------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
async def test_unnamed_token_outputs_come_back_padded_to_the_batchs_longest(side: str) -> None:
    """Without ``sequence_outputs`` a token output comes back as the batch made it: the
    short caller's rows keep the batch's padded length and the model's pad values."""
    rec = ModelRecorder()
    model = model_of(
        rec, batch_size=8, timeout_ms=5, padding_side=side, pad_tokens={"input_ids": 7}
    )
    a, b = feats([[1, 2]]), feats([[3, 4, 5, 6]])
    got = await call_all(model, [("a", a), ("b", b)])
    assert rec.rows == [2]
    if side == "right":
        ids, mask = [[1, 2, 7, 7]], [[1, 1, 0, 0]]
    else:
        ids, mask = [[7, 7, 1, 2]], [[0, 0, 1, 1]]
    want_ids, want_mask = np.array(ids, np.int64), np.array(mask, np.int64)
    assert_same(
        got["a"],
        {
            "doubled": want_ids * 2,  # the pad token 7, doubled: 14
            "hidden": np.stack([want_ids, want_mask], axis=-1),  # (1, 4, 2)
            "total": np.array([3], np.int64),  # per row: never padded
        },
    )
    assert got["a"]["doubled"].shape == (1, 4)
    assert_same(got["b"], outputs(b))  # the longest row: nothing to tell apart


@pytest.fixture(params=["numpy", "torch"])
def convert(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """numpy arrays as they are, or as CPU torch tensors (set up before the event loop)."""
    if request.param == "numpy":
        return lambda value: value
    return request.getfixturevalue("torch").from_numpy  # type: ignore[no-any-return]


@pytest.mark.parametrize("side", ["right", "left"])
async def test_unnamed_token_outputs_of_rows_from_different_batches_are_padded_with_zeros(
    side: str, convert: Callable[[Any], Any]
) -> None:
    """batch_size=2: a's first two rows travel unpadded (3 long), its last row with b,
    padded to 5 with the pad token 50. Its unnamed token outputs are padded with zeros
    on the padding side to the longest, (3, 5), before they are stacked; per-row
    outputs are untouched; b gets what it would get alone."""

    def out(f: dict[str, Any]) -> Any:
        arrays = {name: np.asarray(value) for name, value in f.items()}
        return {name: convert(value) for name, value in outputs(arrays).items()}

    rec = ModelRecorder(out)
    model = model_of(
        rec, batch_size=2, timeout_ms=5, padding_side=side, pad_tokens={"input_ids": 50}
    )
    a = {name: convert(v) for name, v in feats([[1, 2, 3], [4, 5, 6], [7, 8, 9]]).items()}
    b = {name: convert(v) for name, v in feats([[10, 11, 12, 13, 14]]).items()}
    got = await call_all(model, [("a", a), ("b", b)])
    assert rec.rows == [2, 2]
    assert tuple(rec.batches[0]["input_ids"].shape) == (2, 3)
    assert tuple(rec.batches[1]["input_ids"].shape) == (2, 5)
    if side == "right":
        ids = [[1, 2, 3, 0, 0], [4, 5, 6, 0, 0], [7, 8, 9, 50, 50]]
        mask = [[1, 1, 1, 0, 0]] * 3
    else:
        ids = [[0, 0, 1, 2, 3], [0, 0, 4, 5, 6], [50, 50, 7, 8, 9]]
        mask = [[0, 0, 1, 1, 1]] * 3
    want_ids, want_mask = np.array(ids, np.int64), np.array(mask, np.int64)
    want = {
        "doubled": want_ids * 2,  # zeros where a row was not padded, 100 where it was
        "hidden": np.stack([want_ids, want_mask], axis=-1),
        "total": np.array([6, 15, 24], np.int64),
    }
    assert_same(got["a"], {name: convert(value) for name, value in want.items()})
    assert_same(got["b"], out(b))


@pytest.mark.parametrize("structure", ["array", "dict"])
async def test_pooled_outputs_are_never_cut_even_when_hidden_equals_the_padded_length(
    structure: str,
) -> None:
    """hidden = 4 = the batch's padded length: a pooled (batch, hidden) output comes back
    whole (it used to be cut to each row's length). In the dict, only ``tokens`` is named."""
    hidden = 4

    def out(f: dict[str, Any]) -> Any:
        ids = f["input_ids"]
        pooled = ids.sum(axis=1, keepdims=True) * np.arange(1, hidden + 1)  # (batch, 4)
        if structure == "array":
            return pooled
        return {"tokens": ids[:, :, None] * np.ones(hidden, np.int64), "pooled": pooled}

    rec = ModelRecorder(out)
    settings = {} if structure == "array" else {"sequence_outputs": {"tokens"}}
    model = model_of(rec, batch_size=8, timeout_ms=5, **settings)
    short, long = feats([[1, 2]]), feats([[1, 2, 3, 4]])
    got = await call_all(model, [("short", short), ("long", long)])
    assert rec.rows == [2]
    assert rec.batches[0]["input_ids"].shape == (2, hidden)
    assert_same(got["short"], out(short))
    assert_same(got["long"], out(long))
    pooled = got["short"] if structure == "array" else got["short"]["pooled"]
    assert pooled.shape == (1, hidden)


@pytest.mark.parametrize(
    ("sequence_outputs", "key"),
    [(True, None), ({"doubled", "pooled"}, "pooled"), ({0, 1}, 1)],
    ids=["array", "dict", "tuple"],
)
async def test_a_named_output_whose_axis_1_is_not_the_padded_length_fails_the_batch(
    sequence_outputs: Any, key: Any
) -> None:
    """A (batch, 3) output named in sequence_outputs, in a batch padded to 5: a
    ValueError naming the output and both lengths, for every caller of the batch."""

    def out(f: dict[str, Any]) -> Any:
        ids = f["input_ids"]
        pooled = np.ones((len(ids), 3), np.float32)
        if key is None:
            return pooled
        if key == "pooled":
            return {"doubled": ids * 2, "pooled": pooled}
        return (ids * 2, pooled)

    rec = ModelRecorder(out)
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs=sequence_outputs)
    got = await call_all(model, [("a", feats([[1, 2]])), ("b", feats([[1, 2, 3, 4, 5]]))])
    assert rec.rows == [2]
    assert isinstance(got["a"], ValueError), got["a"]
    assert got["b"] is got["a"]
    message = str(got["a"])
    for text in [repr(key), "3 positions", "padded to 5"]:
        assert text in message, (text, message)
    assert model.stats.failed == 2


async def test_token_outputs_are_cut_to_the_padded_features_not_an_unpadded_first_one() -> None:
    """pixel_values (not padded) first: the rows are as long as their input_ids, and a
    sequence output is cut to that (it used to be cut to the 3 channels)."""
    rec = ModelRecorder(lambda f: f["input_ids"] * 2)
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs=True)

    def call(n: int) -> dict[str, Any]:
        return {
            "pixel_values": np.zeros((1, 3, 4, 4), np.float32),
            "input_ids": np.arange(1, n + 1)[None],
        }

    a, b = call(5), call(8)
    got = await call_all(model, [("a", a), ("b", b)])
    assert rec.rows == [2]
    assert_same(got["a"], a["input_ids"] * 2)  # (1, 5)
    assert_same(got["b"], b["input_ids"] * 2)  # (1, 8)


# -- rows ------------------------------------------------------------------------------


async def test_a_multi_row_call_gets_its_rows_back_across_batches() -> None:
    """batch_size=2: a call of 3 rows travels in two batches; its rows come back in
    order, stacked, each named token output cut back to the call's length."""
    rec = ModelRecorder()
    model = model_of(rec, batch_size=2, timeout_ms=5, sequence_outputs=TOKENS)
    a = feats([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    b = feats([[10, 11, 12, 13, 14]])
    got = await call_all(model, [("a", a), ("b", b)])
    assert rec.rows == [2, 2]
    assert rec.batches[1]["input_ids"].shape == (2, 5)  # a's last row travelled with b
    assert_same(got["a"], outputs(a))
    assert_same(got["b"], outputs(b))
    assert model.stats.completed == 4
    assert model.stats.total_processed == 4
    assert model.stats.total_batches == 2


async def test_stats_count_rows() -> None:
    rec = ModelRecorder()
    model = model_of(rec, batch_size=8, timeout_ms=5)
    odd = {"input_ids": np.ones((2, 3), dtype=np.int32)}
    got = await call_all(model, [("a", feats([[1], [2], [3]])), ("b", feats([[4]])), ("odd", odd)])
    assert isinstance(got["odd"], ValueError)
    stats = model.stats
    assert stats.submitted == 6
    assert stats.completed == 4
    assert stats.failed == 2
    assert stats.total_batches == 1
    assert stats.total_processed == 6


async def test_pixel_values_are_stacked_without_padding() -> None:
    def out(f: dict[str, Any]) -> Any:
        return {"doubled": f["input_ids"] * 2, "pooled": f["pixel_values"].mean(axis=(1, 2, 3))}

    rec = ModelRecorder(out)
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs={"doubled"})
    rng = np.random.default_rng(0)

    def call(values: list[list[int]]) -> dict[str, Any]:
        pixels = rng.random((len(values), 3, 4, 4), dtype=np.float32)
        return {"input_ids": np.asarray(values), "pixel_values": pixels}

    a, b = call([[1, 2], [3, 4]]), call([[5, 6, 7]])
    got = await call_all(model, [("a", a), ("b", b)])
    batch = rec.batches[0]
    assert batch["pixel_values"].shape == (3, 3, 4, 4)
    assert batch["pixel_values"].dtype == np.float32
    assert np.array_equal(
        batch["pixel_values"], np.concatenate([a["pixel_values"], b["pixel_values"]])
    )
    assert batch["input_ids"].shape == (3, 3)
    assert_same(got["a"], out(a))
    assert_same(got["b"], out(b))


async def test_a_feature_named_in_pad_tokens_is_padded_on_its_length_axis() -> None:
    """``inputs_embeds`` (rows, length, hidden) is padded only because pad_tokens names it."""
    rec = ModelRecorder(lambda f: f["inputs_embeds"] + 1)
    model = model_of(
        rec,
        batch_size=8,
        timeout_ms=5,
        pad_tokens={"inputs_embeds": -1.0},
        sequence_outputs=True,
    )
    a = {"inputs_embeds": np.zeros((1, 2, 4), dtype=np.float32)}
    b = {"inputs_embeds": np.ones((1, 5, 4), dtype=np.float32)}
    got = await call_all(model, [("a", a), ("b", b)])
    batch = rec.batches[0]["inputs_embeds"]
    assert batch.shape == (2, 5, 4)
    assert np.all(batch[0, 2:] == -1.0)
    assert_same(got["a"], a["inputs_embeds"] + 1)
    assert_same(got["b"], b["inputs_embeds"] + 1)


async def test_list_values_are_read_as_numpy_arrays() -> None:
    rec = ModelRecorder(lambda f: f["input_ids"] * 2)
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs=True)
    got = await call_all(model, [("a", {"input_ids": [[1, 2, 3]]}), ("b", {"input_ids": [[4]]})])
    assert isinstance(rec.batches[0]["input_ids"], np.ndarray)
    assert_same(got["a"], np.array([[2, 4, 6]]))
    assert_same(got["b"], np.array([[8]]))


# -- mismatches and errors -------------------------------------------------------------

ODD_CALLS: dict[str, tuple[dict[str, Any], dict[str, Any], list[str]]] = {
    # name: (a normal call, the odd call, what the odd caller's message must name)
    "pixel shape": (
        {"input_ids": np.ones((1, 2), np.int64), "pixel_values": np.zeros((1, 3, 4, 4))},
        {"input_ids": np.ones((1, 3), np.int64), "pixel_values": np.zeros((1, 3, 8, 8))},
        ["pixel_values", "(3, 8, 8)", "(3, 4, 4)"],
    ),
    "embeds hidden": (
        {"inputs_embeds": np.zeros((1, 2, 4), np.float32)},
        {"inputs_embeds": np.zeros((1, 3, 6), np.float32)},
        ["inputs_embeds", "('padded', 6)", "('padded', 4)"],  # the shapes beyond the length
    ),
    "missing feature": (
        feats([[1, 2]]),
        {"input_ids": np.ones((1, 3), np.int64)},
        ["attention_mask"],
    ),
    "dtype": (
        feats([[1, 2]]),
        feats([[1, 2]], dtype=np.int32),
        ["input_ids", "int32", "int64"],
    ),
}


@pytest.mark.parametrize("case", list(ODD_CALLS))
async def test_a_call_whose_features_differ_fails_alone(case: str) -> None:
    normal, odd, names = ODD_CALLS[case]
    rec = ModelRecorder(lambda f: next(iter(f.values())) * 2)  # the first feature: a sequence
    model = model_of(
        rec,
        batch_size=8,
        timeout_ms=5,
        pad_tokens={"inputs_embeds": 0.0},
        sequence_outputs=True,
    )
    got = await call_all(model, [("a", normal), ("odd", odd), ("b", normal)])
    assert isinstance(got["odd"], ValueError), got
    for name in names:
        assert name in str(got["odd"]), (name, str(got["odd"]))
    first = next(iter(normal))
    assert_same(got["a"], normal[first] * 2)
    assert_same(got["b"], normal[first] * 2)
    assert rec.rows == [2]  # the odd call never reached the model
    assert model.stats.failed == 1
    assert model.stats.completed == 2


@pytest.mark.parametrize(
    ("features", "names"),
    [
        (
            {"input_ids": np.ones((1, 5), np.int64), "attention_mask": np.ones((1, 6), bool)},
            ["input_ids", "attention_mask", "5", "6"],
        ),
        (
            {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((1, 5), bool)},
            ["input_ids", "attention_mask", "2", "1"],
        ),
        ({"input_ids": np.int64(3)}, ["input_ids", "rows"]),
    ],
    ids=["lengths", "rows", "no rows axis"],
)
async def test_mismatched_features_within_one_call_fail_at_call_time(
    features: dict[str, Any], names: list[str]
) -> None:
    rec = ModelRecorder()
    model = model_of(rec, batch_size=8, timeout_ms=5)
    with pytest.raises(ValueError, match=names[0]) as info:
        await model(features)
    for name in names:
        assert name in str(info.value)
    assert rec.batches == []


@pytest.mark.parametrize(
    ("features", "text"),
    [
        ({"input_ids": "hello"}, "str"),
        ({"input_ids": {"a": np.ones((1, 2))}}, "dict"),
        ({"input_ids": 3}, "int"),
        ("hello", "mapping"),
        ({}, "mapping"),
        ({1: np.ones((1, 2))}, "str"),
    ],
    ids=["str value", "dict value", "int value", "str features", "empty", "int name"],
)
async def test_unsupported_features_raise_type_error(features: Any, text: str) -> None:
    rec = ModelRecorder()
    model = model_of(rec, batch_size=8, timeout_ms=5)
    with pytest.raises(TypeError, match=text):
        await model(features)
    assert rec.batches == []


def test_sync_front_rejects_unsupported_features_before_starting() -> None:
    @batched.inference.dynamically(batch_size=8, timeout_ms=5)
    def model(features: dict[str, Any]) -> Any:
        return features["input_ids"]

    with model:
        with pytest.raises(TypeError, match="str"):
            model({"input_ids": "hello"})
        with pytest.raises(ValueError, match="one length"):
            model(input_ids=np.ones((1, 2)), attention_mask=np.ones((1, 3)))


@pytest.mark.parametrize(
    ("settings", "error", "text"),
    [
        ({"padding_side": "middle"}, ValueError, "padding_side"),
        ({"pad_tokens": [0]}, TypeError, "pad_tokens"),
        ({"spread_kwargs": 1}, TypeError, "spread_kwargs"),
        ({"sequence_outputs": "hidden"}, TypeError, "sequence_outputs"),
        ({"sequence_outputs": 1}, TypeError, "sequence_outputs"),
        ({"length_fn": len}, TypeError, "length_fn"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"nonsense": 1}, TypeError, "nonsense"),
    ],
)
@pytest.mark.parametrize("decorator", list(DECORATORS))
async def test_bad_settings_fail_at_decoration(
    decorator: str, settings: dict[str, Any], error: type[Exception], text: str
) -> None:
    async def model(features: dict[str, Any]) -> Any:
        return features

    with pytest.raises(error, match=text):
        DECORATORS[decorator](**settings)(model)


# -- calling conventions ---------------------------------------------------------------


async def test_spread_kwargs_calls_the_model_with_keywords() -> None:
    seen: list[tuple[str, ...]] = []

    @batched.aio.inference.dynamically(batch_size=8, timeout_ms=5, spread_kwargs=True)
    async def model(input_ids: Any, attention_mask: Any) -> Any:
        seen.append(("input_ids", "attention_mask"))
        return (input_ids * attention_mask).sum(axis=1)

    a, b = feats([[1, 2]]), feats([[3, 4, 5]])
    got = await call_all(model, [("a", a), ("b", b)], keywords=True)
    assert seen == [("input_ids", "attention_mask")]
    assert_same(got["a"], np.array([3]))
    assert_same(got["b"], np.array([12]))
    # A mapping works too, and keywords are merged into it.
    got2 = await model({"input_ids": a["input_ids"]}, attention_mask=a["attention_mask"])
    assert_same(got2, np.array([3]))


async def test_keywords_without_spread_reach_the_model_as_one_mapping() -> None:
    rec = ModelRecorder()
    model = model_of(rec, batch_size=8, timeout_ms=5)
    a = feats([[1, 2]])
    assert_same(await model(**a), outputs(a))
    assert list(rec.batches[0]) == ["input_ids", "attention_mask"]


# -- the length budget -----------------------------------------------------------------


def check_budget(rec: ModelRecorder, max_batch_length: int) -> None:
    for batch in rec.batches:
        rows, length = batch["input_ids"].shape[:2]
        assert rows == 1 or rows * length <= max_batch_length, (rows, length)


async def test_max_batch_length_counts_the_padded_size() -> None:
    """Summed lengths 2+2+2+20 = 26 fit a budget of 40, padded 4 x 20 = 80 do not."""
    rec = ModelRecorder()
    model = model_of(rec, batch_size=8, timeout_ms=5, max_batch_length=40, sequence_outputs=TOKENS)
    calls = [(str(i), feats([[i + 1] * n])) for i, n in enumerate([2, 2, 2, 20])]
    got = await call_all(model, calls)
    assert rec.rows == [3, 1]
    check_budget(rec, 40)
    for name, features in calls:
        assert_same(got[name], outputs(features))


@pytest.mark.parametrize("strategy", [batched.Fifo(), batched.ByLength()], ids=repr)
async def test_every_batch_fits_the_padded_budget_but_a_lone_oversize_row(
    strategy: Any,
) -> None:
    rec = ModelRecorder()
    model = model_of(
        rec,
        batch_size=8,
        timeout_ms=5,
        max_batch_length=40,
        strategy=strategy,
        sequence_outputs=TOKENS,
    )
    lengths = [3, 12, 5, 20, 2, 9, 45, 7, 11, 1, 13, 40, 6]
    calls = [(str(i), feats([[i + 1] * n])) for i, n in enumerate(lengths)]
    got = await call_all(model, calls)
    check_budget(rec, 40)
    oversize = [b for b in rec.batches if b["input_ids"].shape[1] == 45]
    assert [b["input_ids"].shape for b in oversize] == [(1, 45)]
    assert sum(rec.rows) == len(lengths)
    for name, features in calls:
        assert_same(got[name], outputs(features))


@pytest.mark.parametrize(
    ("features", "max_batch_length", "rows"),
    [
        # No padded feature: axis 1 of the first feature (3 channels) is the length.
        ({"pixel_values": np.zeros((1, 3, 4, 4), np.float32)}, 6, [2, 1]),
        # A 1-D first feature, nothing padded: every row is 1 long.
        ({"label": np.zeros((1,), np.int64)}, 2, [2, 1]),
        # input_ids first: its length, 4.
        (
            {"input_ids": np.ones((1, 4), np.int64), "pixel_values": np.zeros((1, 3, 4, 4))},
            8,
            [2, 1],
        ),
        # pixel_values first: still the padded input_ids' length, 4 (not 3 channels).
        (
            {"pixel_values": np.zeros((1, 3, 4, 4)), "input_ids": np.ones((1, 4), np.int64)},
            8,
            [2, 1],
        ),
        # A 1-D label first: the padded input_ids' length, 5 (not 1).
        (
            {"label": np.zeros((1,), np.int64), "input_ids": np.ones((1, 5), np.int64)},
            10,
            [2, 1],
        ),
    ],
    ids=["pixels", "1-D", "input_ids", "pixels first", "label first"],
)
async def test_a_row_is_as_long_as_its_padded_features(
    features: dict[str, Any], max_batch_length: int, rows: list[int]
) -> None:
    """A row's length is its padded features' length, else axis 1 of the first feature
    (else 1); ``max_batch_length`` counts rows x that length."""
    rec = ModelRecorder(lambda f: next(iter(f.values())))
    model = model_of(rec, batch_size=8, timeout_ms=5, max_batch_length=max_batch_length)
    got = await call_all(model, [(str(i), features) for i in range(3)])
    assert rec.rows == rows
    first = next(iter(features))
    for i in range(3):
        assert_same(got[str(i)], features[first])


@pytest.mark.parametrize(
    ("strategy", "want"),
    [
        (batched.ByLength(), [[30], [1, 2, 3, 4], [50, 51, 52, 53]]),
        (batched.Fifo(), [[30], [1, 2, 50, 51], [3, 4, 52, 53]]),  # arrival order
    ],
    ids=["ByLength", "Fifo"],
)
async def test_by_length_groups_similar_lengths(strategy: Any, want: list[list[int]]) -> None:
    """While a batch runs, eight calls wait; ByLength cuts the short ones together."""
    rec = ModelRecorder()
    rec.hold.add(-1)
    model = model_of(rec, batch_size=4, timeout_ms=5, strategy=strategy, sequence_outputs=TOKENS)
    lengths = [1, 50, 2, 51, 3, 52, 4, 53]
    out: dict[int, Any] = {}

    async def one(features: dict[str, Any]) -> None:
        out[features["input_ids"].shape[1]] = await model(features)

    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, feats([[-1] * 30]))
            await rec.running.wait()
            for n in lengths:
                tg.start_soon(one, feats([[n] * n]))
                await settle()
            rec.release.set()
    got = [sorted(set(batch["attention_mask"].sum(axis=1).tolist())) for batch in rec.batches]
    assert got == want
    for n in lengths:
        assert_same(out[n], outputs(feats([[n] * n])))


# -- methods ---------------------------------------------------------------------------


class Encoder:
    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.rows: list[int] = []

    @batched.inference.dynamically(batch_size=8, timeout_ms=5, sequence_outputs=True)
    async def encode(self, features: dict[str, Any]) -> Any:
        self.rows.append(len(features["input_ids"]))
        await anyio.lowlevel.checkpoint()
        return features["input_ids"] * self.scale

    @batched.aio.inference.dynamically(batch_size=8, timeout_ms=5, spread_kwargs=True)
    async def encode_kw(self, input_ids: Any) -> Any:
        return input_ids * self.scale


async def test_a_method_gets_one_batcher_per_instance() -> None:
    one, ten = Encoder(1), Encoder(10)
    assert one.encode is one.encode
    assert one.encode is not ten.encode
    assert isinstance(one.encode, batched.inference.AsyncInferenceFunction)
    out: dict[str, Any] = {}

    async def call(name: str, fn: Any, features: dict[str, Any]) -> None:
        out[name] = await fn(features)

    with anyio.fail_after(HANG_S):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(call, f"one{i}", one.encode, feats([[i + 1] * (i + 1)]))
                tg.start_soon(call, f"ten{i}", ten.encode, feats([[i + 1] * (i + 1)]))
    assert one.rows == [3]
    assert ten.rows == [3]
    for i in range(3):
        assert_same(out[f"one{i}"], np.array([[i + 1] * (i + 1)]))
        assert_same(out[f"ten{i}"], np.array([[10 * (i + 1)] * (i + 1)]))
    assert one.encode.stats.completed == 3
    assert ten.encode.stats.completed == 3
    assert_same(await ten.encode_kw(input_ids=np.array([[2, 3]])), np.array([[20, 30]]))


def test_a_sync_method_gets_one_serving_thread_per_instance() -> None:
    class Scaler:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        @batched.inference.dynamically(batch_size=8, timeout_ms=1)
        def scale_ids(self, features: dict[str, Any]) -> Any:
            return features["input_ids"] * self.scale

    two, three = Scaler(2), Scaler(3)
    assert isinstance(two.scale_ids, batched.inference.InferenceFunction)
    assert two.scale_ids is not three.scale_ids
    with two.scale_ids, three.scale_ids:
        assert_same(two.scale_ids(input_ids=np.array([[1, 2]])), np.array([[2, 4]]))
        assert_same(three.scale_ids(input_ids=np.array([[1, 2]])), np.array([[3, 6]]))


# -- the sync front-end (real time) ----------------------------------------------------


def test_sync_model_serves_blocking_calls_from_threads() -> None:
    batches: list[tuple[int, int]] = []
    lock = threading.Lock()

    @batched.inference.dynamically(
        batch_size=8,
        timeout_ms=50,
        padding_side="left",
        pad_tokens={"input_ids": 9},
        sequence_outputs=TOKENS,
    )
    def model(features: dict[str, Any]) -> Any:
        with lock:
            batches.append(features["input_ids"].shape)
        return outputs(features)

    assert isinstance(model, batched.inference.InferenceFunction)
    calls = [feats([[i + 1] * (i + 1)] * (1 + i % 3)) for i in range(6)]
    barrier = threading.Barrier(len(calls))

    def call(features: dict[str, Any]) -> Any:
        barrier.wait(JOIN)
        return model(features)

    with model, ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call, features) for features in calls]
        results = [future.result(timeout=JOIN) for future in futures]
    for features, result in zip(calls, results, strict=True):
        assert_same(result, outputs(features))
    assert sum(rows for rows, _ in batches) == sum(len(f["input_ids"]) for f in calls)
    assert len(batches) < len(calls)  # some calls shared a batch
    assert model.stats.completed == sum(len(f["input_ids"]) for f in calls)
    with pytest.raises(batched.BatcherClosed):
        model(calls[0])


async def test_sync_model_acall_from_async_code() -> None:
    batches: list[int] = []

    @batched.inference.dynamically(
        batch_size=8, timeout_ms=10, spread_kwargs=True, sequence_outputs=TOKENS
    )
    def model(input_ids: Any, attention_mask: Any) -> Any:
        batches.append(len(input_ids))
        return outputs({"input_ids": input_ids, "attention_mask": attention_mask})

    calls = [feats([[i + 1] * (i + 2)] * (1 + i % 2)) for i in range(4)]
    got: dict[int, Any] = {}

    async def one(i: int) -> None:
        got[i] = await model.acall(**calls[i])

    try:
        with real_time(), anyio.fail_after(JOIN):
            async with anyio.create_task_group() as tg:
                for i in range(len(calls)):
                    tg.start_soon(one, i)
    finally:
        await anyio.to_thread.run_sync(model.close)
    for i, features in enumerate(calls):
        assert_same(got[i], outputs(features))
    assert sum(batches) == 6


async def test_aio_decorator_runs_a_sync_model_in_a_worker_thread() -> None:
    threads: set[int] = set()

    @batched.aio.inference.dynamically(batch_size=8, timeout_ms=10, sequence_outputs=TOKENS)
    def model(features: dict[str, Any]) -> Any:
        threads.add(threading.get_ident())
        return outputs(features)

    assert isinstance(model, batched.inference.AsyncInferenceFunction)
    calls = [("a", feats([[1, 2]])), ("b", feats([[3]]))]
    with real_time():
        got = await call_all(model, calls)
    assert threading.get_ident() not in threads
    for name, features in calls:
        assert_same(got[name], outputs(features))


# -- imports ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["import batched", "import batched.inference", "import batched.aio.inference"]
)
def test_importing_the_inference_modules_loads_neither_numpy_nor_torch(code: str) -> None:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(proc.stdout.split())
    assert "batched" in loaded
    assert not loaded & {"numpy", "torch"}, loaded


# -- fixed: each of these was a strict xfail ---------------------------------------------


@pytest.mark.parametrize("decorator", list(DECORATORS))
async def test_a_call_of_zero_rows_fails_at_call_time(decorator: str) -> None:
    rec = ModelRecorder()
    model = model_of(rec, decorator, batch_size=8, timeout_ms=5)
    with pytest.raises(ValueError, match="0 rows"):
        await model({"input_ids": np.ones((0, 3), np.int64)})
    with pytest.raises(ValueError, match="0 rows"):
        await model(input_ids=np.ones((0, 3), np.int64), attention_mask=np.ones((0, 3), bool))
    assert rec.batches == []
    assert model.stats.submitted == 0


def test_a_call_of_zero_rows_fails_at_call_time_on_the_sync_front() -> None:
    @batched.inference.dynamically(batch_size=8, timeout_ms=5)
    def model(features: dict[str, Any]) -> Any:
        return features["input_ids"]

    with model:
        with pytest.raises(ValueError, match="0 rows"):
            model(input_ids=np.ones((0, 3), np.int64))
        assert_same(model(input_ids=np.ones((1, 3), np.int64)), np.ones((1, 3), np.int64))


@pytest.mark.parametrize("loss", [np.float32(0.5), 0.5], ids=["numpy scalar", "float"])
@pytest.mark.parametrize("rows", [1, 2, 3])
async def test_a_tuple_of_per_row_arrays_and_a_loss_fails_every_caller(
    rows: int, loss: Any
) -> None:
    """(logits, loss): never read as one result per row, whatever the batch's rows
    (with 2 rows, one caller used to get the whole batch's logits, the other the loss)."""
    rec = ModelRecorder(lambda f: (f["input_ids"] * 10, loss))
    model = model_of(rec, batch_size=8, timeout_ms=5)
    calls = [("a", feats([[1, 1]] * (rows - 1 or 1)))]
    if rows > 1:
        calls.append(("b", feats([[2, 2]])))
    got = await call_all(model, calls)
    assert rec.rows == [rows]
    for name, _ in calls:
        assert isinstance(got[name], ValueError), got[name]
        assert "output 1" in str(got[name]), str(got[name])
    assert model.stats.failed == rows


@pytest.mark.virtual_time  # its calls must reach one batch within timeout_ms
async def test_a_1d_feature_among_2d_ones_of_the_same_name_fails_alone() -> None:
    """x (1,) is not padded, x (1, 5) is: they never share a batch (the odd call used to
    fail the whole batch with an IndexError)."""
    rec = ModelRecorder(lambda f: f["x"] * 2)
    model = model_of(rec, batch_size=8, timeout_ms=5)
    a, odd = {"x": np.ones((1, 5), np.int64)}, {"x": np.ones((1,), np.int64)}
    got = await call_all(model, [("a", a), ("odd", odd), ("b", a)])
    assert isinstance(got["odd"], ValueError), got["odd"]
    assert "x" in str(got["odd"])
    assert_same(got["a"], a["x"] * 2)
    assert_same(got["b"], a["x"] * 2)
    assert rec.rows == [2]


def test_spread_kwargs_on_a_sync_method() -> None:
    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        @batched.inference.dynamically(batch_size=4, timeout_ms=1, spread_kwargs=True)
        def run(self, input_ids: Any) -> Any:
            return input_ids * self.scale

    m = Model(2)
    with m.run:
        assert_same(m.run(input_ids=np.array([[1, 2]])), np.array([[2, 4]]))
        assert_same(m.run({"input_ids": np.array([[3]])}), np.array([[6]]))


@pytest.mark.parametrize("kind", ["async def", "sync def"])
async def test_spread_kwargs_on_a_method_of_a_slotted_class(kind: str) -> None:
    """No ``__dict__``: the instance is bound weakly (``_decorator._WeakMethod``), and the
    keywords reach the method. The caller holds the instance: a batched method does not
    keep it alive."""
    if kind == "async def":

        class Model:
            __slots__ = ("__weakref__",)

            @batched.aio.inference.dynamically(batch_size=4, timeout_ms=1, spread_kwargs=True)
            async def run(self, input_ids: Any) -> Any:
                return input_ids * 2

    else:

        class Model:  # type: ignore[no-redef]
            __slots__ = ("__weakref__",)

            @batched.aio.inference.dynamically(batch_size=4, timeout_ms=1, spread_kwargs=True)
            def run(self, input_ids: Any) -> Any:
                return input_ids * 2

    m = Model()
    with real_time() if kind == "sync def" else contextlib.nullcontext():
        assert_same(await m.run(input_ids=np.array([[1, 2]])), np.array([[2, 4]]))


class _LessOrEqualPool:
    """A correct Pool that takes an entry while ``entry.length <= budget``."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def add(self, entry: Any) -> None:
        self.entries.append(entry)

    def remove(self, entry: Any) -> None:
        self.entries.remove(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def oldest(self) -> Any:
        return self.entries[0] if self.entries else None

    def cut(self, max_items: int, budget: float) -> list[Any]:
        out: list[Any] = []
        while self.entries and len(out) < max_items and self.entries[0].length <= budget:
            budget -= self.entries[0].length
            out.append(self.entries.pop(0))
        return out


@attrs.frozen
class _LessOrEqual:
    def new_pool(self) -> Any:
        return _LessOrEqualPool()


async def test_a_custom_pool_without_max_batch_length_gets_a_finite_budget() -> None:
    """No max_batch_length: no padded cut, so the pool never sees ``math.inf // k``
    (nan, which a pool comparing ``length <= budget`` would take nothing under)."""
    assert isinstance(_LessOrEqualPool(), batched.Pool)
    rec = ModelRecorder(lambda f: f["input_ids"])
    model = model_of(rec, batch_size=8, timeout_ms=5, strategy=_LessOrEqual())
    calls = [(str(i), feats([[i + 1] * 3])) for i in range(4)]
    got = await call_all(model, calls)
    assert rec.rows == [4]  # it used to be [1, 1, 1, 1]
    for name, features in calls:
        assert_same(got[name], features["input_ids"])


@pytest.mark.virtual_time  # its calls must reach one batch within timeout_ms
async def test_a_custom_pool_with_max_batch_length_keeps_the_padded_budget() -> None:
    rec = ModelRecorder(lambda f: f["input_ids"])
    model = model_of(rec, batch_size=8, timeout_ms=5, strategy=_LessOrEqual(), max_batch_length=12)
    await call_all(model, [(str(i), feats([[i + 1] * 3])) for i in range(6)])
    assert rec.rows == [4, 2]  # 4 rows x 3 = 12
    check_budget(rec, 12)


# -- bugs ------------------------------------------------------------------------------


@pytest.mark.virtual_time
@pytest.mark.parametrize("owned", [False, True], ids=["caller-driven", "owned"])
async def test_a_batch_full_by_padded_size_leaves_at_once(owned: bool) -> None:
    rec = ModelRecorder()
    model = model_of(rec, batch_size=32, timeout_ms=50, max_batch_length=100)
    t0 = anyio.current_time()
    calls = [("short", feats([[1] * 10])), ("long", feats([[2] * 60]))]
    if owned:
        async with model:
            await call_all(model, calls)
    else:
        await call_all(model, calls)
    assert rec.rows == [1, 1]
    # Summed 10 + 60 = 70 < 100, padded 2 x 60 = 120 > 100: the first batch is full at
    # once. (A plain Batcher cuts at once when the summed length reaches the budget.)
    assert rec.times[0] - t0 == pytest.approx(0.0, abs=1e-9)


async def test_bug_one_dict_result_per_row_comes_back_transposed() -> None:
    rec = ModelRecorder(
        lambda f: [{"label": f"r{int(r[0])}", "score": 0.5} for r in f["input_ids"]]
    )
    model = model_of(rec, batch_size=8, timeout_ms=5)
    got = await call_all(model, [("a", feats([[1, 0], [2, 0]])), ("b", feats([[3]]))])
    # As plain per-row results are (test_one_result_per_row_is_handed_back_as_a_list):
    # today {"label": ["r1", "r2"], "score": [0.5, 0.5]} and {"label": ["r3"], ...}.
    assert got["a"] == [{"label": "r1", "score": 0.5}, {"label": "r2", "score": 0.5}]
    assert got["b"] == [{"label": "r3", "score": 0.5}]


async def test_bug_sequence_outputs_of_a_batch_with_no_padded_feature() -> None:
    rec = ModelRecorder(lambda f: f["inputs_embeds"] * 2)
    model = model_of(rec, batch_size=8, timeout_ms=5, sequence_outputs=True)
    a = {"inputs_embeds": np.ones((1, 3, 4), np.float32)}
    got = await call_all(model, [("a", a), ("b", a)])
    assert rec.rows == [2]
    # Every row is 3 long (axis 1 of the first feature), the batch too: nothing to cut.
    assert_same(got["a"], a["inputs_embeds"] * 2)  # a ValueError today
    assert_same(got["b"], a["inputs_embeds"] * 2)


# -- property --------------------------------------------------------------------------


@st.composite
def scripts(draw: st.DrawFn) -> dict[str, Any]:
    callers = draw(
        st.lists(
            st.tuples(
                st.integers(1, 3),  # rows
                st.integers(1, 20),  # length
                st.integers(0, 8),  # arrival, ms
            ),
            min_size=1,
            max_size=10,
        )
    )
    return {
        "callers": callers,
        "batch_size": draw(st.integers(1, 8)),
        "timeout_ms": draw(st.sampled_from([0, 1, 5])),
        "max_batch_length": draw(st.none() | st.integers(20, 60)),
        "side": draw(st.sampled_from(["right", "left"])),
        "strategy": draw(st.sampled_from([batched.Fifo(), batched.ByLength()])),
        "owned": draw(st.booleans()),
        "duration_ms": draw(st.integers(0, 3)),
        # "doubled" named (as a dict key), or not named: it comes back padded.
        "sequence_outputs": draw(st.sampled_from([("doubled",), False])),
    }


def _property_model(features: dict[str, Any]) -> dict[str, Any]:
    ids, mask = features["input_ids"], features["attention_mask"]
    return {"doubled": ids * 2, "total": (ids * mask).sum(axis=1)}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
@given(script=scripts())
def test_every_caller_gets_what_it_would_get_alone(backend: str, script: dict[str, Any]) -> None:
    """Random callers, rows, lengths, arrivals and settings: each caller's output equals
    the plain model's on its own features (the unnamed token output once cut back to
    the caller's length on the padding side), and every batch fits the padded budget.

    Unnamed, "doubled" comes back as long as the longest batch that carried one of the
    caller's rows: the rest is the doubled pad token (10) in the row's own batch, or
    zeros added when the caller's rows were stacked."""
    seen: list[tuple[int, int]] = []
    padded_to: dict[int, int] = {}  # a row's first real token: its batch's padded length
    budget = script["max_batch_length"]
    left = script["side"] == "left"

    async def raw(features: dict[str, Any]) -> dict[str, Any]:
        ids, mask = features["input_ids"], features["attention_mask"]
        seen.append(ids.shape)
        for row, row_mask in zip(ids, mask, strict=True):
            padded_to[int(row[row_mask][0])] = int(ids.shape[1])
        await anyio.sleep(script["duration_ms"] / 1000)
        return _property_model(features)

    calls = []
    for index, (rows, length, arrival) in enumerate(script["callers"]):
        ids = 1 + 100 * index + np.arange(rows * length, dtype=np.int64).reshape(rows, length)
        mask = np.ones((rows, length), dtype=bool)
        calls.append((arrival, {"input_ids": ids, "attention_mask": mask}))
    got: dict[int, Any] = {}

    async def main() -> None:
        model = batched.aio.inference.dynamically(
            raw,
            batch_size=script["batch_size"],
            timeout_ms=script["timeout_ms"],
            max_batch_length=budget,
            strategy=script["strategy"],
            padding_side=script["side"],
            pad_tokens={"input_ids": 5},
            sequence_outputs=script["sequence_outputs"],
        )

        async def one(index: int, arrival: int, features: dict[str, Any]) -> None:
            await anyio.sleep(arrival / 1000)
            got[index] = await model(features)

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
    assert sorted(got) == list(range(len(calls)))
    for index, (_, features) in enumerate(calls):
        want = _property_model(features)
        if script["sequence_outputs"]:
            assert_same(got[index], want)
            continue
        ids = features["input_ids"]
        rows, length = ids.shape
        doubled = got[index]["doubled"]
        longest = max(padded_to[int(row[0])] for row in ids)
        assert doubled.shape == (rows, longest), (doubled.shape, rows, longest)
        own = doubled[:, longest - length :] if left else doubled[:, :length]
        rest = doubled[:, : longest - length] if left else doubled[:, length:]
        assert_same({"doubled": own, "total": got[index]["total"]}, want)
        for row, pads in zip(ids, rest, strict=True):
            # Its own batch padded it with 5s (doubled: 10), the stacking with zeros.
            fill = padded_to[int(row[0])] - length
            want_pads = [10] * fill + [0] * (longest - length - fill)
            assert pads.tolist() == (want_pads[::-1] if left else want_pads), (row, pads)
    assert sum(rows for rows, _ in seen) == sum(len(f["input_ids"]) for _, f in calls)
    for rows, length in seen:
        assert rows <= script["batch_size"]
        if budget is not None:
            assert rows == 1 or rows * length <= budget, (rows, length, budget)
