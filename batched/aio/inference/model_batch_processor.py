"""The seed's module path ``batched.aio.inference.model_batch_processor``.

Code written for mixedbread's ``batched`` imports from here; the names are
:class:`batched.aio.inference.AsyncModelBatchProcessor` and
:func:`batched.aio.inference.dynamically`.
"""

from __future__ import annotations

from . import AsyncModelBatchProcessor as AsyncModelBatchProcessor
from . import dynamically as dynamically

__all__ = ["AsyncModelBatchProcessor", "dynamically"]
