"""The library's exceptions, each refining the builtin or anyio error it resembles."""

from __future__ import annotations

from typing import final

import anyio
import attrs

__all__ = ["BatchSizeMismatch", "BatchedError", "BatcherClosed", "Failure", "QueueFull"]


class BatchedError(Exception):
    """Base class of every error raised by ``batched`` itself."""


@final
class BatcherClosed(BatchedError, anyio.ClosedResourceError):
    """The batcher is not open: the call came before ``__aenter__``, after ``__aexit__``,
    or the batcher shut down while the call waited."""


@final
class QueueFull(BatchedError, anyio.WouldBlock):
    """A call with ``wait=False`` found no room under ``max_queue_size``."""


@final
class BatchSizeMismatch(BatchedError, ValueError):
    """The batch function returned a different number of results than it got items."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(
            f"the batch function returned {got} results for a batch of {expected} items; "
            f"it must return exactly one result per item"
        )
        self.expected = expected
        self.got = got

    def __reduce__(self) -> tuple[type[BatchSizeMismatch], tuple[int, int]]:
        return type(self), (self.expected, self.got)


@final
@attrs.frozen
class Failure:
    """A per-item failure: return ``Failure(exc)`` in a result slot and that caller alone
    gets ``exc`` raised, while the rest of the batch gets its results.

    :ivar exception: the exception to raise in the caller of that item
    """

    exception: Exception = attrs.field(validator=attrs.validators.instance_of(Exception))
