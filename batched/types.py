"""The types of mixedbread's ``batched.types``, for code written for it.

The names map onto this library's own: :class:`PriorityStrategy` is
:class:`batched.PriorityStrategy`, :class:`BatchProcessorStats` is
:class:`batched.BatchStats`, :class:`AsyncCache` is :class:`batched.cache.AsyncCache`.
:class:`CacheStats` is the seed's own counter, which a cache written for the seed
updates in place; a batcher reads it into a :class:`batched.cache.CacheStats` snapshot.
numpy and torch are named here, never imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from ._stats import BatchStats as BatchProcessorStats
from ._strategies import PriorityStrategy as PriorityStrategy
from .cache import AsyncCache as AsyncCache

if TYPE_CHECKING:
    import numpy as np  # named by NDArrayOrTensor, never imported
    import torch

__all__ = [
    "AsyncCache",
    "BatchFunc",
    "BatchInfer",
    "BatchProcessorStats",
    "CacheStats",
    "Feature",
    "NDArrayOrTensor",
    "PriorityStrategy",
    "T",
    "U",
]

T = TypeVar("T")
"""The type of an item."""

U = TypeVar("U")
"""The type of an item's result."""

BatchFunc: TypeAlias = Callable[[list[T]], list[U]]
"""A batch function: a list of items to a list of results, one per item."""

NDArrayOrTensor = TypeVar("NDArrayOrTensor", "np.ndarray", "torch.Tensor")
"""A numpy array or a torch tensor."""

Feature: TypeAlias = NDArrayOrTensor | list[NDArrayOrTensor]
"""One feature of a batch (or a model output): an array, or a list of arrays."""

BatchInfer: TypeAlias = (
    Callable[[dict[str, Feature[NDArrayOrTensor]]], Feature[NDArrayOrTensor]]
    | Callable[..., Feature[NDArrayOrTensor]]
)
"""A model for ``batched.inference``: ``model(features)`` or ``model(**features)``."""


@dataclasses.dataclass
class CacheStats:
    """The seed's cache counters, updated in place by a cache written for it.

    ``update_get`` and ``update_set`` count one lookup or store and the seconds it took;
    ``avg_*`` read the averages. A batcher's ``stats.cache_stats`` is always a
    :class:`batched.cache.CacheStats` snapshot, read from this one.
    """

    gets: int = 0
    hits: int = 0
    sets: int = 0
    total_get_time: float = 0.0
    total_hit_time: float = 0.0
    total_set_time: float = 0.0

    @property
    def misses(self) -> int:
        """Lookups that found nothing."""
        return self.gets - self.hits

    @property
    def avg_get_time(self) -> float:
        """Seconds per lookup, or 0.0 before the first."""
        return self.total_get_time / self.gets if self.gets else 0.0

    @property
    def avg_hit_time(self) -> float:
        """Seconds per lookup that hit, or 0.0 before the first."""
        return self.total_hit_time / self.hits if self.hits else 0.0

    @property
    def avg_set_time(self) -> float:
        """Seconds per store, or 0.0 before the first."""
        return self.total_set_time / self.sets if self.sets else 0.0

    def update_get(self, *, hit: bool, time_taken: float) -> None:
        """Count one lookup that took ``time_taken`` seconds."""
        self.gets += 1
        self.total_get_time += time_taken
        if hit:
            self.hits += 1
            self.total_hit_time += time_taken

    def update_set(self, *, time_taken: float) -> None:
        """Count one store that took ``time_taken`` seconds."""
        self.sets += 1
        self.total_set_time += time_taken
