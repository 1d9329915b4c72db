"""Batched model inference: pad and stack numpy arrays and torch tensors.

Each call sends features shaped ``(rows, length, ...)``, as a mapping
(``model({"input_ids": ids, "attention_mask": mask})``) or as keywords
(``model(input_ids=ids, attention_mask=mask)``); each row is one item. A batch pads the
sequence features to its longest row and stacks the rows, keeping each feature's dtype
and device, calls the model once, and hands each caller its own rows of the output,
stacked in the output's structure (an array, a dict or a tuple of them).

- Padded features: every 2-D feature ``(rows, length)``, and any feature named in
  ``pad_tokens`` (e.g. ``inputs_embeds`` shaped ``(rows, length, hidden)``); the pad
  value is ``pad_tokens[name]``, default 0, on ``padding_side`` ("right" or "left").
  Other features (pixel values, per-row vectors) are stacked as they are; their shapes
  must agree.
- An item's length is its padded features' length (else axis 1 of the first feature);
  ``max_batch_length`` counts the padded size a batch costs: its longest item times its
  items.
- Outputs come back as the batch made them (token-level ones padded to the batch's
  longest row); the outputs named in ``sequence_outputs`` are cut back to each row's own
  length, so a caller gets what it would have got alone.
- A call whose features differ from its batch-mates' (names, array type, dtype, device,
  shapes) fails alone with a ``ValueError`` naming both; the others are served.

numpy is needed (the ``inference`` extra); torch is optional and never imported by
``batched`` itself.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    final,
    overload,
)

import attrs

from .._core.cut import size_up
from .._front.decorator import AsyncFront, Binding, check_options, weak_method
from .._front.sync import SyncFront
from .._padding import Row, collate, partition, split_call, split_output, stack_rows
from .._settings import is_async_callable

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import TracebackType
    from typing import Self, Unpack

    from .._front.decorator import BatcherOptions
    from .._settings import BatcherSettings
    from .._stats import BatchStats

__all__ = [
    "AsyncInferenceFunction",
    "InferenceFunction",
    "ModelBatchProcessor",
    "dynamically",
]

O = TypeVar("O")  # noqa: E741 - the model's output


def _row_length(row: Row) -> int:
    return row.size  # its bucket of allowed_lengths: the budget counts what the model gets


def _allowed(name: str, value: object) -> tuple[int, ...]:
    """``value`` as allowed sizes: a non-empty increasing sequence of positive ints."""
    if value is None:
        return ()
    msg = f"{name!r} must be increasing positive ints, like (1, 2, 4, 8), or None: {value!r}"
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        raise TypeError(msg)
    sizes: tuple[Any, ...] = tuple(value)
    if not all(type(size) is int for size in sizes):
        raise TypeError(msg)
    if not sizes or sizes[0] < 1 or any(a >= b for a, b in itertools.pairwise(sizes)):
        raise ValueError(msg)
    return sizes


class _Collator:
    """The batch function the batcher sees: rows in, one output per row out."""

    def __init__(
        self,
        model: Callable[..., Any],
        pad_tokens: Mapping[str, Any],
        left: bool,
        spread: bool,
        sequence_outputs: object,
        batch_sizes: tuple[int, ...] = (),
    ) -> None:
        self.model = model
        self.batch_sizes = batch_sizes
        self.pad_tokens = pad_tokens
        self.left = left
        self.spread = spread
        if sequence_outputs is True:
            self.trimmed: Callable[[object], bool] = lambda key: True
        elif not sequence_outputs:
            self.trimmed = lambda key: False
        else:
            names = frozenset(sequence_outputs)  # type: ignore[call-overload]
            self.trimmed = names.__contains__

    def _features(self, rows: list[Row]) -> tuple[list[int], list[Any], dict[str, Any], int]:
        main, results = partition(rows)
        total = size_up(self.batch_sizes, len(main)) if self.batch_sizes else 0
        features, longest = collate([rows[i] for i in main], self.pad_tokens, self.left, total)
        return main, results, features, longest

    def _finish(
        self, rows: list[Row], main: list[int], results: list[Any], out: object, longest: int
    ) -> list[Any]:
        total = size_up(self.batch_sizes, len(main)) if self.batch_sizes else 0
        own = [rows[i] for i in main]
        outputs = split_output(out, own, self.trimmed, longest, self.left, total)
        for index, output in zip(main, outputs, strict=True):
            results[index] = output
        return results

    def __call__(self, rows: list[Row]) -> list[Any]:
        main, results, features, longest = self._features(rows)
        out = self.model(**features) if self.spread else self.model(features)
        return self._finish(rows, main, results, out, longest)


class _AsyncCollator(_Collator):
    async def __call__(self, rows: list[Row]) -> list[Any]:  # type: ignore[override]
        main, results, features, longest = self._features(rows)
        out = await (self.model(**features) if self.spread else self.model(features))
        return self._finish(rows, main, results, out, longest)


def _features(features: object, keywords: dict[str, Any]) -> object:
    if features is None:
        return keywords
    if keywords:
        if not isinstance(features, Mapping):
            return features  # split_call names the type
        return {**features, **keywords}
    return features


@attrs.frozen
class Padding:
    """The inference settings of one decorated model, checked once."""

    pad_tokens: Mapping[str, Any]
    left: bool
    spread_kwargs: bool
    sequence_outputs: object
    batch_sizes: tuple[int, ...] = ()
    lengths: tuple[int, ...] = ()

    @classmethod
    def check(
        cls,
        pad_tokens: object,
        padding_side: object,
        spread_kwargs: object,
        sequence_outputs: object,
        allowed_batch_sizes: object = None,
        allowed_lengths: object = None,
    ) -> Padding:
        if padding_side not in ("right", "left"):
            msg = f"'padding_side' must be 'right' or 'left': {padding_side!r}"
            raise ValueError(msg)
        if pad_tokens is None:
            pad_tokens = {}
        elif not isinstance(pad_tokens, Mapping):
            msg = f"'pad_tokens' must be a mapping of feature name to pad value: {pad_tokens!r}"
            raise TypeError(msg)
        if not isinstance(spread_kwargs, bool):
            msg = f"'spread_kwargs' must be a bool: {spread_kwargs!r}"
            raise TypeError(msg)
        if not isinstance(sequence_outputs, bool) and (
            isinstance(sequence_outputs, str) or not isinstance(sequence_outputs, Iterable)
        ):
            msg = (
                f"'sequence_outputs' must be True, False or a collection of output keys "
                f"(dict keys, tuple indexes): {sequence_outputs!r}"
            )
            raise TypeError(msg)
        if not isinstance(sequence_outputs, bool):
            sequence_outputs = frozenset(sequence_outputs)
        return cls(
            dict(pad_tokens),
            padding_side == "left",
            spread_kwargs,
            sequence_outputs,
            _allowed("allowed_batch_sizes", allowed_batch_sizes),
            _allowed("allowed_lengths", allowed_lengths),
        )

    def bucket(self, rows: list[Row]) -> list[Row]:
        """Each row's size: its own length rounded up to the next allowed length.

        :raises ValueError: a row longer than the largest allowed length (this call
            fails alone: padding it to its own length would make a shape the model
            was not compiled for)
        """
        lengths = self.lengths
        if lengths and rows[0].padded:
            longest = max(row.length for row in rows)
            if longest > lengths[-1]:
                msg = (
                    f"a row of {longest} positions is longer than the largest of "
                    f"'allowed_lengths' {lengths}: truncate it, or allow a longer length"
                )
                raise ValueError(msg)
            for row in rows:
                row.size = size_up(lengths, row.length)
        return rows


def _check_reach(sizes: tuple[int, ...], batch_size: object) -> None:
    """A batch of ``batch_size`` rows must fit the largest allowed size (a bad type or
    range is the batcher's own check to report)."""
    if sizes and type(batch_size) is int and batch_size > sizes[-1]:
        msg = (
            f"'allowed_batch_sizes' must reach 'batch_size': its largest, "
            f"{sizes[-1]}, is below batch_size {batch_size}"
        )
        raise ValueError(msg)


class _InferenceBase(Binding):
    """What both front-ends share; binds to instances like the decorator."""

    __slots__ = ("__dict__", "__weakref__", "_batched", "_padding")

    _batched: Any
    _awaitable: ClassVar[bool]

    def __init__(self, fn: Any, options: BatcherOptions, padding: Padding) -> None:
        if options.get("length_fn") is not None:
            msg = (
                "'length_fn' is not a setting of batched.inference: "
                "a row's length is its sequence length"
            )
            raise TypeError(msg)
        sizes = padding.batch_sizes
        if sizes:
            # Without its own batch_size the batcher cuts up to the largest allowed size.
            options = {"batch_size": sizes[-1], **options}
            _check_reach(sizes, options["batch_size"])
        fn = self._init_binding(fn, options)
        self._padding = padding
        collator = (_AsyncCollator if is_async_callable(fn) else _Collator)(
            fn,
            padding.pad_tokens,
            padding.left,
            padding.spread_kwargs,
            padding.sequence_outputs,
            sizes,
        )
        inner: Any = {**options, "length_fn": _row_length, "padded": True, "batch_sizes": sizes}
        self._batched = (
            AsyncFront(collator, inner) if self._awaitable else SyncFront(collator, inner)
        )

    def _rows(self, features: object, keywords: dict[str, Any]) -> list[Row]:
        rows = split_call(_features(features, keywords), self._padding.pad_tokens)
        return self._padding.bucket(rows)

    def _rebind(self, fn: Callable[..., Any]) -> Any:
        if self._awaitable or is_async_callable(fn):
            return AsyncInferenceFunction(fn, self._options, self._padding)
        instance, func = getattr(fn, "__self__", None), getattr(fn, "__func__", None)
        if func is not None and not isinstance(instance, type):
            # The serving thread must not keep the instance alive.
            with contextlib.suppress(TypeError):
                fn = weak_method(func, instance)
        return InferenceFunction(fn, self._options, self._padding)

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters; items are rows (see :class:`batched.BatchStats`)."""
        return self._batched.stats  # type: ignore[no-any-return]

    def clear_stats(self) -> None:
        """Forget the counters so far (see :meth:`batched.SyncBatchedFunction.clear_stats`)."""
        self._batched.clear_stats()

    # -- steering: the batcher's own, with the allowed batch sizes kept ---------------------

    @property
    def settings(self) -> BatcherSettings:
        """The settings now in force (see :meth:`batched.Batcher.settings`)."""
        return self._batched.settings  # type: ignore[no-any-return]

    def configure(self, **settings: Any) -> None:
        """Change settings while serving (see :meth:`batched.Batcher.configure`).

        :raises ValueError: also a ``batch_size`` above the largest of
            ``allowed_batch_sizes``, as at decoration
        """
        if "batch_size" in settings:
            _check_reach(self._padding.batch_sizes, settings["batch_size"])
        self._batched.configure(**settings)

    def stop_accepting(self) -> None:
        """Refuse new calls while accepted ones are served (see
        :meth:`batched.Batcher.stop_accepting`)."""
        self._batched.stop_accepting()

    @property
    def accepting(self) -> bool:
        """Whether a call made now would be accepted."""
        return self._batched.accepting  # type: ignore[no-any-return]


class _AsyncInference(_InferenceBase, Generic[O]):
    """An awaited model: :class:`AsyncInferenceFunction` and the seed's processor."""

    __slots__ = ()
    _awaitable = True

    async def __call__(
        self,
        features: Mapping[str, Any] | None = None,
        /,
        *,
        priority: float = 0,
        wait: bool = True,
        **keywords: Any,
    ) -> O:
        """The model's output for this call's rows, in the output's structure."""
        rows = self._rows(features, keywords)
        outputs = await self._batched.many(rows, priority=priority, wait=wait)
        result: O = stack_rows(outputs, self._padding.left)
        return result

    async def acall(
        self,
        features: Mapping[str, Any] | None = None,
        /,
        *,
        priority: float = 0,
        wait: bool = True,
        **keywords: Any,
    ) -> O:
        """The same as calling the model: the name a sync model's async callers use."""
        return await self(features, priority=priority, wait=wait, **keywords)

    async def start(self) -> None:
        """Nothing to start (see :meth:`batched.BatchedFunction.start`)."""
        await self._batched.start()

    async def shutdown(self) -> None:
        """Nothing to stop (see :meth:`batched.BatchedFunction.shutdown`)."""
        await self._batched.shutdown()

    async def __aenter__(self) -> Self:
        """Serve this event loop's calls from a batcher owned by the block."""
        await self._batched.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._batched.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]


@final
class AsyncInferenceFunction(_AsyncInference[O]):
    """A model called one request at a time, awaited: ``await model(input_ids=...)``.

    Made by :func:`dynamically` on an ``async def`` model, or by
    ``batched.aio.inference.dynamically`` on any model (a sync one runs in a worker thread).
    """

    __slots__ = ()

    if TYPE_CHECKING:
        # On a method: each instance's own function (Binding.__get__), of the same type.
        def __get__(self, instance: object, owner: type | None = None, /) -> Self: ...


class _SyncInference(_InferenceBase, Generic[O]):
    """A model called from threads: :class:`InferenceFunction` and the seed's processor."""

    __slots__ = ()
    _awaitable = False

    def __call__(
        self,
        features: Mapping[str, Any] | None = None,
        /,
        *,
        priority: float = 0,
        wait: bool = True,
        **keywords: Any,
    ) -> O:
        """The model's output for this call's rows; blocks the calling thread."""
        rows = self._rows(features, keywords)
        outputs = self._batched.many(rows, priority=priority, wait=wait)
        result: O = stack_rows(outputs, self._padding.left)
        return result

    async def acall(
        self,
        features: Mapping[str, Any] | None = None,
        /,
        *,
        priority: float = 0,
        wait: bool = True,
        **keywords: Any,
    ) -> O:
        """The same call for async callers (asyncio or trio)."""
        rows = self._rows(features, keywords)
        outputs = await self._batched.acall(rows, priority=priority, wait=wait)
        result: O = stack_rows(outputs, self._padding.left)
        return result

    def start(self) -> None:
        """Start the serving thread now (see :meth:`batched.SyncBatchedFunction.start`)."""
        self._batched.start()

    def shutdown(self) -> None:
        """:meth:`close`, by the name mixedbread's ``batched`` gives it."""
        self._batched.close()

    def close(self) -> None:
        """Finish the accepted calls and stop the serving thread."""
        self._batched.close()

    def __enter__(self) -> Self:
        self._batched.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._batched.__exit__(exc_type, exc, tb)


@final
class InferenceFunction(_SyncInference[O]):
    """A sync model called one request at a time from any thread: ``model(input_ids=...)``
    blocks its thread; ``await model.acall(...)`` serves async callers.

    Made by :func:`dynamically` on a plain ``def`` model. One event-loop thread serves it,
    stopped by :meth:`close`, ``with model:`` or interpreter exit.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def __get__(self, instance: object, owner: type | None = None, /) -> Self: ...


# -- the seed's processors (mixedbread's batched) ----------------------------------------


def _seed_options(
    batch_size: int,
    timeout_ms: float | Literal["auto"],
    small_batch_threshold: int,
    settings: dict[str, Any],
) -> BatcherOptions:
    seed = {"batch_size": batch_size, "timeout_ms": timeout_ms}
    seed["small_batch_threshold"] = small_batch_threshold
    # A warning shows on the user's line: the processor's __init__ called this.
    return check_options({**seed, **settings}, stacklevel=4)


class _SeedAttributes(_InferenceBase):
    """The attributes the seed's processors show."""

    __slots__ = ()

    @property
    def batch_func(self) -> Any:
        """The model, as given."""
        return self.__wrapped__

    @property
    def small_batch_threshold(self) -> int:
        """Calls of at most this many rows go first."""
        return self._batched._settings.small_batch_threshold  # type: ignore[no-any-return]

    @property
    def pad_tokens(self) -> dict[str, Any]:
        """The pad value of each feature named (others pad with 0)."""
        return dict(self._padding.pad_tokens)

    @property
    def padding_side(self) -> str:
        """``"right"`` or ``"left"``."""
        return "left" if self._padding.left else "right"

    @property
    def spread_kwargs(self) -> bool:
        """Whether the model is called as ``model(**features)``."""
        return self._padding.spread_kwargs


@final
class ModelBatchProcessor(_SyncInference[Any], _SeedAttributes):
    """The seed's ``batched.inference.ModelBatchProcessor``: an :class:`InferenceFunction`
    made with the seed's arguments (any :class:`batched.Batcher` setting too).

    ``proc(features)`` or ``proc(**features)`` blocks; ``await proc.acall(...)``;
    ``proc.stats``, ``start()``, ``shutdown()``, ``clear_stats()``.
    """

    __slots__ = ()

    def __init__(
        self,
        _func: Any,
        *,
        batch_size: int = 32,
        timeout_ms: float | Literal["auto"] = 5.0,
        small_batch_threshold: int = 8,
        pad_tokens: Mapping[str, Any] | None = None,
        padding_side: str = "right",
        spread_kwargs: bool = False,
        sequence_outputs: bool | Iterable[str | int] = False,
        allowed_batch_sizes: Sequence[int] | None = None,
        allowed_lengths: Sequence[int] | None = None,
        **settings: Any,
    ) -> None:
        options = _seed_options(batch_size, timeout_ms, small_batch_threshold, settings)
        padding = Padding.check(
            pad_tokens,
            padding_side,
            spread_kwargs,
            sequence_outputs,
            allowed_batch_sizes,
            allowed_lengths,
        )
        super().__init__(_func, options, padding)


class InferenceDecorator(Protocol):
    """What ``batched.inference.dynamically(**settings)`` returns (typing only)."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[..., Coroutine[Any, Any, O]], /
    ) -> AsyncInferenceFunction[O]: ...
    @overload
    def __call__(self, fn: Callable[..., O], /) -> InferenceFunction[O]: ...


class AsyncInferenceDecorator(Protocol):
    """What ``batched.aio.inference.dynamically(**settings)`` returns (typing only)."""

    @overload
    def __call__(
        self, fn: Callable[..., Coroutine[Any, Any, O]], /
    ) -> AsyncInferenceFunction[O]: ...
    @overload
    def __call__(self, fn: Callable[..., O], /) -> AsyncInferenceFunction[O]: ...


# An async model first: its output is what it returns once awaited. Coroutine, not
# Awaitable: against Awaitable, the Any inside every coroutine type makes mypy call the
# match ambiguous and infer Any. (A plain function returning a coroutine matches both
# overloads; at runtime it is no async model either.)
@overload
def dynamically(  # type: ignore[overload-overlap]
    fn: Callable[..., Coroutine[Any, Any, O]],
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = ...,
    padding_side: str = ...,
    spread_kwargs: bool = ...,
    sequence_outputs: bool | Iterable[str | int] = ...,
    allowed_batch_sizes: Sequence[int] | None = ...,
    allowed_lengths: Sequence[int] | None = ...,
    **settings: Unpack[BatcherOptions],
) -> AsyncInferenceFunction[O]: ...
@overload
def dynamically(
    fn: Callable[..., O],
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = ...,
    padding_side: str = ...,
    spread_kwargs: bool = ...,
    sequence_outputs: bool | Iterable[str | int] = ...,
    allowed_batch_sizes: Sequence[int] | None = ...,
    allowed_lengths: Sequence[int] | None = ...,
    **settings: Unpack[BatcherOptions],
) -> InferenceFunction[O]: ...
@overload
def dynamically(
    fn: None = None,
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = ...,
    padding_side: str = ...,
    spread_kwargs: bool = ...,
    sequence_outputs: bool | Iterable[str | int] = ...,
    allowed_batch_sizes: Sequence[int] | None = ...,
    allowed_lengths: Sequence[int] | None = ...,
    **settings: Unpack[BatcherOptions],
) -> InferenceDecorator: ...


def dynamically(
    fn: Any = None,
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = None,
    padding_side: str = "right",
    spread_kwargs: bool = False,
    sequence_outputs: bool | Iterable[str | int] = False,
    allowed_batch_sizes: Sequence[int] | None = None,
    allowed_lengths: Sequence[int] | None = None,
    **settings: Any,
) -> Any:
    """Batch a model's calls, padding and stacking their features.

    ``fn(features: dict[str, array]) -> output`` (or ``fn(**features)`` with
    ``spread_kwargs=True``) gets one padded batch per call. On a plain ``def`` it gives an
    :class:`InferenceFunction` (blocking calls, ``acall``); on an ``async def`` an
    :class:`AsyncInferenceFunction`. Settings are those of :class:`batched.Batcher`
    (but ``length_fn``), plus ``pad_tokens``, ``padding_side``, ``spread_kwargs`` and
    ``sequence_outputs`` (the outputs whose axis 1 is the sequence: True for all, or
    their dict keys / tuple indexes; each caller gets them cut to its own length).
    """
    options = check_options(settings)
    padding = Padding.check(
        pad_tokens,
        padding_side,
        spread_kwargs,
        sequence_outputs,
        allowed_batch_sizes,
        allowed_lengths,
    )

    def decorate(fn: Any) -> Any:
        target = fn.__func__ if isinstance(fn, staticmethod | classmethod) else fn
        kind = AsyncInferenceFunction if is_async_callable(target) else InferenceFunction
        return kind(fn, options, padding)

    return decorate if fn is None else decorate(fn)


@overload
def aio_dynamically(
    fn: Callable[..., Coroutine[Any, Any, O]],
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = ...,
    padding_side: str = ...,
    spread_kwargs: bool = ...,
    sequence_outputs: bool | Iterable[str | int] = ...,
    allowed_batch_sizes: Sequence[int] | None = ...,
    allowed_lengths: Sequence[int] | None = ...,
    **settings: Unpack[BatcherOptions],
) -> AsyncInferenceFunction[O]: ...
@overload
def aio_dynamically(
    fn: Callable[..., O],
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = ...,
    padding_side: str = ...,
    spread_kwargs: bool = ...,
    sequence_outputs: bool | Iterable[str | int] = ...,
    allowed_batch_sizes: Sequence[int] | None = ...,
    allowed_lengths: Sequence[int] | None = ...,
    **settings: Unpack[BatcherOptions],
) -> AsyncInferenceFunction[O]: ...
@overload
def aio_dynamically(
    fn: None = None,
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = ...,
    padding_side: str = ...,
    spread_kwargs: bool = ...,
    sequence_outputs: bool | Iterable[str | int] = ...,
    allowed_batch_sizes: Sequence[int] | None = ...,
    allowed_lengths: Sequence[int] | None = ...,
    **settings: Unpack[BatcherOptions],
) -> AsyncInferenceDecorator: ...


def aio_dynamically(
    fn: Any = None,
    /,
    *,
    pad_tokens: Mapping[str, Any] | None = None,
    padding_side: str = "right",
    spread_kwargs: bool = False,
    sequence_outputs: bool | Iterable[str | int] = False,
    allowed_batch_sizes: Sequence[int] | None = None,
    allowed_lengths: Sequence[int] | None = None,
    **settings: Any,
) -> Any:
    """:func:`dynamically`, always awaitable (a sync model runs in a worker thread)."""
    options = check_options(settings)
    padding = Padding.check(
        pad_tokens,
        padding_side,
        spread_kwargs,
        sequence_outputs,
        allowed_batch_sizes,
        allowed_lengths,
    )

    def decorate(fn: Any) -> Any:
        return AsyncInferenceFunction(fn, options, padding)

    return decorate if fn is None else decorate(fn)
