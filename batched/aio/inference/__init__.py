"""The seed's ``batched.aio.inference``: always-awaitable batched model inference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, final

from ...inference import AsyncInferenceFunction as AsyncInferenceFunction
from ...inference import Padding, _AsyncInference, _seed_options, _SeedAttributes
from ...inference import aio_dynamically as dynamically

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["AsyncInferenceFunction", "AsyncModelBatchProcessor", "dynamically"]


@final
class AsyncModelBatchProcessor(_AsyncInference[Any], _SeedAttributes):
    """The seed's ``batched.aio.inference.AsyncModelBatchProcessor``: an
    :class:`AsyncInferenceFunction` made with the seed's arguments (and any
    :class:`batched.Batcher` setting; ``priority_strategy`` is the ``strategy``,
    ``batch_item_cls`` is ignored with a warning).

    ``await proc(features)`` or ``await proc(**features)``; ``proc.stats``,
    ``proc.clear_stats()``. A sync model runs in a worker thread.
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


dynamically.__name__ = dynamically.__qualname__ = "dynamically"
dynamically.__module__ = AsyncModelBatchProcessor.__module__ = __name__
