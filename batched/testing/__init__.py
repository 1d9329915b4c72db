"""Test code that uses batching: virtual time, hypothesis strategies and invariants.

Needs the ``testing`` extra (pytest, hypothesis, trio); ``import batched`` never imports it,
and ``import batched.testing`` imports pytest and hypothesis only when a name that needs
them is first used (so batched's pytest plugin loads without them).

- Instant, deterministic time on asyncio and trio: :func:`virtual_time_backends`, the
  :func:`anyio_backend` fixture (also through batched's pytest plugin) and :func:`settle`.
- Hypothesis strategies: :func:`batcher_settings`, :func:`arrival_schedules` and
  :func:`fn_outcomes`.
- :func:`run_schedule` plays a schedule of callers against your batcher on virtual time
  and records what happened; :func:`check_invariants` checks what must hold of any run.
- :func:`run_continuous` and :func:`check_continuous` do the same for a
  :class:`batched.Continuous`, with :func:`continuous_settings` and
  :func:`continuous_schedules`.
- :func:`check_batch_invariant` checks that your batch function gives an item the same
  result whatever batch it travels in.

Together: ``run_schedule`` shows the batcher hands each caller what the batch function
computed for its own items, and ``check_batch_invariant`` that this is what the item
would get alone. Example::

    from hypothesis import given, settings
    import batched
    from batched.testing import arrival_schedules, check_invariants, run_schedule

    @settings(deadline=None)
    @given(schedule=arrival_schedules())
    def test_my_settings(schedule):
        result = run_schedule(lambda fn: batched.Batcher(fn, batch_size=4), schedule)
        check_invariants(result)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._continuous import run_continuous as run_continuous
from ._continuous_checks import check_continuous as check_continuous
from ._continuous_records import ContinuousResult as ContinuousResult
from ._continuous_records import ContinuousSchedule as ContinuousSchedule
from ._continuous_records import ReaderOutcome as ReaderOutcome
from ._continuous_records import ReaderPlan as ReaderPlan
from ._continuous_records import StepRecord as StepRecord
from ._continuous_records import StepState as StepState
from ._invariants import check_invariants as check_invariants
from ._player import run_schedule as run_schedule
from ._records import OUTCOME_KINDS as OUTCOME_KINDS
from ._records import Arrival as Arrival
from ._records import BatchOutcome as BatchOutcome
from ._records import BatchRecord as BatchRecord
from ._records import CallerOutcome as CallerOutcome
from ._records import PlannedError as PlannedError
from ._records import Schedule as Schedule
from ._records import ScheduleResult as ScheduleResult
from ._virtual_time import VirtualTimeLoop as VirtualTimeLoop
from ._virtual_time import fresh_backend_options as fresh_backend_options
from ._virtual_time import real_time as real_time
from ._virtual_time import settle as settle
from ._virtual_time import virtual_time_backends as virtual_time_backends

if TYPE_CHECKING:  # loaded on first use, below: they import pytest or hypothesis
    from ._continuous_schedules import continuous_schedules as continuous_schedules
    from ._continuous_schedules import continuous_settings as continuous_settings
    from ._fixture import anyio_backend as anyio_backend
    from ._invariance import check_batch_invariant as check_batch_invariant
    from ._schedules import arrival_schedules as arrival_schedules
    from ._schedules import batcher_settings as batcher_settings
    from ._schedules import fn_outcomes as fn_outcomes

__all__ = [
    "OUTCOME_KINDS",
    "Arrival",
    "BatchOutcome",
    "BatchRecord",
    "CallerOutcome",
    "ContinuousResult",
    "ContinuousSchedule",
    "PlannedError",
    "PulledRecord",
    "PulledScript",
    "ReaderOutcome",
    "ReaderPlan",
    "Schedule",
    "ScheduleResult",
    "StepRecord",
    "StepState",
    "VirtualTimeLoop",
    "anyio_backend",
    "arrival_schedules",
    "batcher_settings",
    "check_batch_invariant",
    "check_continuous",
    "check_invariants",
    "check_pulled",
    "continuous_schedules",
    "continuous_settings",
    "fn_outcomes",
    "fresh_backend_options",
    "pulled_scripts",
    "real_time",
    "run_continuous",
    "run_pulled",
    "run_schedule",
    "settle",
    "virtual_time_backends",
]

_LAZY = {
    "anyio_backend": "._fixture",
    "arrival_schedules": "._schedules",
    "batcher_settings": "._schedules",
    "fn_outcomes": "._schedules",
    "check_batch_invariant": "._invariance",
    "continuous_schedules": "._continuous_schedules",
    "continuous_settings": "._continuous_schedules",
    "PulledRecord": "._pulled",
    "PulledScript": "._pulled",
    "check_pulled": "._pulled",
    "pulled_scripts": "._pulled",
    "run_pulled": "._pulled",
}


def _public(obj: object) -> object:
    # Show the public path in reprs and tracebacks, not the private module.
    if getattr(obj, "__module__", "").startswith(f"{__name__}."):
        obj.__module__ = __name__
    return obj


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    obj = _public(getattr(importlib.import_module(module, __name__), name))
    globals()[name] = obj
    return obj


for _name in __all__:
    if _name not in _LAZY:
        _public(globals()[_name])
del _name
