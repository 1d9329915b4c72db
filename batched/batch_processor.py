"""The seed's module path ``batched.batch_processor``: the thread-side processor.

Code written for mixedbread's ``batched`` imports from here; the names are
:class:`batched.BatchProcessor` and :func:`batched.dynamically`.
"""

from __future__ import annotations

from ._front.dynamically import dynamically as dynamically
from ._front.seed import BatchProcessor as BatchProcessor

__all__ = ["BatchProcessor", "dynamically"]
