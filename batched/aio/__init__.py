"""The seed's ``batched.aio`` names: always-awaitable batched functions.

``batched.aio.inference`` loads on first use (``from batched import aio`` then
``aio.inference.dynamically(...)`` works), so that ``import batched`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._front.decorator import BatchedFunction as BatchedFunction
from .._front.dynamically import aio_dynamically as dynamically
from .._front.seed import AsyncBatchProcessor as AsyncBatchProcessor
from .._strategies import PriorityStrategy as PriorityStrategy

if TYPE_CHECKING:
    from . import inference as inference

__all__ = ["AsyncBatchProcessor", "BatchedFunction", "PriorityStrategy", "dynamically", "inference"]

dynamically.__name__ = dynamically.__qualname__ = "dynamically"
dynamically.__module__ = AsyncBatchProcessor.__module__ = __name__


def __getattr__(name: str) -> object:
    if name == "inference":
        import importlib

        return importlib.import_module("batched.aio.inference")
    msg = f"module 'batched.aio' has no attribute {name!r}"
    raise AttributeError(msg)
