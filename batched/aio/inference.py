"""The seed's ``batched.aio.inference``: always-awaitable batched model inference."""

from __future__ import annotations

from ..inference import AsyncInferenceFunction as AsyncInferenceFunction
from ..inference import aio_dynamically as dynamically

__all__ = ["AsyncInferenceFunction", "dynamically"]

dynamically.__name__ = dynamically.__qualname__ = "dynamically"
dynamically.__module__ = __name__
