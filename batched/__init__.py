"""Dynamic batching for async Python, on anyio: asyncio, uvloop and trio alike.

Many tasks each ``await`` one item; a :class:`Batcher` gathers them into batches,
calls one batch function, and hands each caller its own result.
"""

from __future__ import annotations

import typing as _typing

from . import aio as aio
from ._batch import Batch as Batch
from ._batch import current_batch as current_batch
from ._errors import BatchedError as BatchedError
from ._errors import BatcherClosed as BatcherClosed
from ._errors import BatchSizeMismatch as BatchSizeMismatch
from ._errors import Failure as Failure
from ._errors import QueueFull as QueueFull
from ._front.batcher import Batcher as Batcher
from ._front.continuous import Continuous as Continuous
from ._front.decorator import BatchedFunction as BatchedFunction
from ._front.decorator import BatchedMethod as BatchedMethod
from ._front.decorator import BatcherOptions as BatcherOptions
from ._front.dynamically import dynamically as dynamically
from ._front.seed import BatchProcessor as BatchProcessor
from ._front.sync import SyncBatchedFunction as SyncBatchedFunction
from ._front.sync import SyncBatchedMethod as SyncBatchedMethod
from ._observe import BatchInfo as BatchInfo
from ._observe import OutcomeCounts as OutcomeCounts
from ._settings import BatcherSettings as BatcherSettings
from ._stats import BatchStats as BatchProcessorStats
from ._stats import BatchStats as BatchStats
from ._step import Last as Last
from ._step import Next as Next
from ._strategies import ByDeadline as ByDeadline
from ._strategies import ByLength as ByLength
from ._strategies import ByPriority as ByPriority
from ._strategies import Entry as Entry
from ._strategies import Fifo as Fifo
from ._strategies import Pool as Pool
from ._strategies import PriorityStrategy as PriorityStrategy
from ._strategies import Strategy as Strategy

if _typing.TYPE_CHECKING:
    from . import inference as inference
    from . import types as types
    from . import utils as utils

__version__ = "0.1.0.dev0"

__all__ = [
    "Batch",
    "BatchInfo",
    "BatchProcessor",
    "BatchProcessorStats",
    "BatchSizeMismatch",
    "BatchStats",
    "BatchedError",
    "BatchedFunction",
    "BatchedMethod",
    "Batcher",
    "BatcherClosed",
    "BatcherOptions",
    "BatcherSettings",
    "ByDeadline",
    "ByLength",
    "ByPriority",
    "Continuous",
    "Entry",
    "Failure",
    "Fifo",
    "Last",
    "Next",
    "OutcomeCounts",
    "Pool",
    "PriorityStrategy",
    "QueueFull",
    "Strategy",
    "SyncBatchedFunction",
    "SyncBatchedMethod",
    "aio",
    "current_batch",
    "dynamically",
    "inference",
    "types",
    "utils",
]

# Show the public path in reprs and tracebacks, not the private module.
for _name in __all__:
    _obj = globals().get(_name)  # None: a submodule that loads on first use
    if getattr(_obj, "__module__", "").startswith("batched."):
        _obj.__module__ = "batched"
del _name, _obj


def __getattr__(name: str) -> object:
    # Submodules load on first use: `batched.testing` needs hypothesis and trio, which
    # `import batched` must not import; `batched.inference` (numpy on first call) and the
    # seed's `batched.types` and `batched.utils` need not cost every import; nor
    # `batched.metrics` (prometheus_client, opentelemetry: an extra).
    if name in ("inference", "metrics", "testing", "types", "utils"):
        import importlib

        return importlib.import_module(f"batched.{name}")
    msg = f"module 'batched' has no attribute {name!r}"
    raise AttributeError(msg)
