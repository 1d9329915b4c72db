"""What a batch function may return: one result per item, in a sequence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from .._errors import BatchSizeMismatch

__all__ = ["check_results"]

_NOT_RESULTS = (str, bytes, bytearray, memoryview, Mapping, Set)


def check_results(out: object, n: int) -> Sequence[Any]:
    """The batch function's output as a sequence of ``n`` results, or an error.

    A list or a tuple is taken as it is; an array-like (numpy, torch: ``len`` and integer
    indexing) is indexed once per result. A mapping, set, str, bytes, iterator or anything
    else is a ``TypeError`` naming the type; a wrong count is ``BatchSizeMismatch``.
    """
    kind = type(out)
    if kind is not list and kind is not tuple:
        if isinstance(out, _NOT_RESULTS) or not (
            hasattr(kind, "__len__") and hasattr(kind, "__getitem__")
        ):
            msg = (
                f"the batch function must return a list, a tuple or an array-like of results, "
                f"not {kind.__qualname__}"
            )
            raise TypeError(msg)
        try:
            size = len(out)  # type: ignore[arg-type]
            out = [out[i] for i in range(min(size, n))]  # type: ignore[index]
        except TypeError:
            msg = f"the batch function returned a {kind.__qualname__} without a length"
            raise TypeError(msg) from None
    else:
        size = len(out)  # type: ignore[arg-type]
    if size != n:
        raise BatchSizeMismatch(n, size)
    return out  # type: ignore[return-value]
