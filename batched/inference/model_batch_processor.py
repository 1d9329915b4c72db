"""The seed's module path ``batched.inference.model_batch_processor``.

Code written for mixedbread's ``batched`` imports from here; the names are
:class:`batched.inference.ModelBatchProcessor` and :func:`batched.inference.dynamically`.
"""

from __future__ import annotations

from . import ModelBatchProcessor as ModelBatchProcessor
from . import dynamically as dynamically

__all__ = ["ModelBatchProcessor", "dynamically"]
