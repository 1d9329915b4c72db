"""Shared test configuration: both backends on virtual time, hypothesis profiles."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any

import pytest
import trio.testing  # at top on purpose: a missing trio must fail loudly, not drop tests
from hypothesis import HealthCheck, settings

from batched.testing import VirtualTimeLoop

if TYPE_CHECKING:
    from collections.abc import Iterator

_ci = settings(
    deadline=None,
    max_examples=200,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", _ci)
settings.register_profile("dev", parent=_ci, max_examples=50)
settings.register_profile("long", parent=_ci, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "virtual_time: the test relies on virtual time (long sleeps, exact clock readings);"
        " skipped on the real-time asyncio+uvloop backend",
    )


_BACKENDS = ["asyncio", "trio"]
if os.environ.get("BATCHED_UVLOOP") == "1":
    _BACKENDS.append("asyncio+uvloop")  # real time: uvloop's clock cannot be virtualised


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """Function-scoped so every test gets a fresh loop and a fresh MockClock.

    On asyncio it also fails the test (at teardown) if anything reached a
    ``VirtualTimeLoop``'s exception handler, e.g. "Task was destroyed but it is pending".
    Teardown runs after anyio's runner closed the loop, so reports made while shutting
    down (cancelling leftover tasks, finalising async generators) are covered too.
    """
    name: str = request.param
    if name == "trio":
        yield "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}
        return
    if name == "asyncio+uvloop":
        if request.node.get_closest_marker("virtual_time"):
            pytest.skip("relies on virtual time; uvloop runs on real time")
        import uvloop

        yield "asyncio", {"loop_factory": uvloop.new_event_loop}
        return

    loops: list[VirtualTimeLoop] = []

    def loop_factory() -> VirtualTimeLoop:
        loop = VirtualTimeLoop()
        loops.append(loop)
        return loop

    yield "asyncio", {"loop_factory": loop_factory}
    for loop in loops:
        # anyio's runner handler is still installed and would swallow late reports that
        # carry an exception; drop it, then collect so abandoned pending tasks report.
        loop.set_exception_handler(None)
    gc.collect()
    errors = [context for loop in loops for context in loop.recorded_errors]
    assert not errors, f"event loop exception handler was called: {errors!r}"
