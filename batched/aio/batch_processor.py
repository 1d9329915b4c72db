"""The seed's module path ``batched.aio.batch_processor``: the async processor.

Code written for mixedbread's ``batched`` imports from here; the names are
:class:`batched.aio.AsyncBatchProcessor` and :func:`batched.aio.dynamically`.
"""

from __future__ import annotations

from . import AsyncBatchProcessor as AsyncBatchProcessor
from . import dynamically as dynamically

__all__ = ["AsyncBatchProcessor", "dynamically"]
