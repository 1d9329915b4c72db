"""Shared test configuration: batched.testing's virtual-time backends, hypothesis profiles."""

from __future__ import annotations

import importlib
import os

import pytest
import trio.testing  # noqa: F401 - at top on purpose: a missing trio must fail loudly
from hypothesis import HealthCheck, settings

# The kit's fixture, imported so that it is this suite's own (a conftest's fixture takes
# precedence over every plugin's): asyncio on a VirtualTimeLoop whose exception handler
# must stay empty, and trio on MockClock(autojump_threshold=0), a fresh loop and clock
# per test. Its params are explicit, so a missing trio fails loudly too.
from batched.testing import anyio_backend  # noqa: F401

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

# Every async test runs on these, in this order. On "asyncio+uvloop" the kit's fixture
# runs asyncio on uvloop, in real time (uvloop's clock cannot be virtualised), and skips
# the tests marked `virtual_time`.
BACKENDS = ["asyncio", "trio"]
if os.environ.get("BATCHED_UVLOOP") == "1":
    BACKENDS.append("asyncio+uvloop")


def pytest_configure(config: pytest.Config) -> None:
    # batched's pytest plugin registers the `virtual_time` marker. An editable install
    # made before the plugin's entry point existed lacks it: load it by its module then.
    manager = config.pluginmanager
    if not manager.has_plugin("batched") and not manager.is_blocked("batched"):
        manager.register(importlib.import_module("batched.testing._plugin"), "batched")


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # As a marker, so that pytest's own hooks take these params instead of the fixture's.
    if "anyio_backend" not in metafunc.fixturenames or len(BACKENDS) == 2:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "anyio_backend" in (
            [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        ):
            return  # the test picks its backends itself
    metafunc.definition.add_marker(
        pytest.mark.parametrize("anyio_backend", BACKENDS, indirect=True)
    )
