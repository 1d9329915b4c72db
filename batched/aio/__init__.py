"""The seed's ``batched.aio`` names: always-awaitable batched functions."""

from __future__ import annotations

from .._front.decorator import BatchedFunction as BatchedFunction
from .._front.dynamically import aio_dynamically as dynamically
from .._front.seed import AsyncBatchProcessor as AsyncBatchProcessor
from .._strategies import PriorityStrategy as PriorityStrategy

__all__ = ["AsyncBatchProcessor", "BatchedFunction", "PriorityStrategy", "dynamically"]

dynamically.__name__ = dynamically.__qualname__ = "dynamically"
dynamically.__module__ = AsyncBatchProcessor.__module__ = __name__
