"""batched's pytest plugin: the ``virtual_time`` marker and the virtual-time ``anyio_backend``.

Registered by the ``pytest11`` entry point ``batched``; ``-p no:batched`` turns it off.
It imports neither hypothesis nor trio (trio only when a test runs on it), so it never
gets in the way of a project that has batched installed but not its ``testing`` extra.

The ``anyio_backend`` fixture reaches a project in one of two ways, and in neither does it
replace a fixture of the project's own:

- ``from batched.testing import anyio_backend`` in a ``conftest.py`` or a test module:
  fixtures defined there take precedence over every plugin's.
- ``batched_virtual_time = true`` in the pytest configuration: the plugin then registers
  the fixture at configure time, after the entry-point plugins (anyio's among them), so it
  replaces anyio's default one; a conftest's own ``anyio_backend`` still takes precedence.
  Off by default: merely installing batched must not move a project's async tests onto
  virtual time (where a ``fail_after`` around real network I/O fires at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _fixture

if TYPE_CHECKING:
    import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_report_header"]

_INI = "batched_virtual_time"
_MARKER = (
    "virtual_time: the test relies on virtual time (long sleeps, exact clock readings); "
    "batched's anyio_backend skips it on a real-time (backend, options) parameter"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI,
        type="bool",
        default=False,
        help="run anyio tests on batched's virtual-time anyio_backend (asyncio and trio) "
        "unless a conftest defines its own",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)
    if config.getini(_INI) and not config.pluginmanager.has_plugin("batched-anyio-backend"):
        # Registered now, after every entry-point plugin: later plugin fixtures of one
        # name take precedence over earlier ones, and conftest fixtures over all of them.
        config.pluginmanager.register(_fixture, "batched-anyio-backend")


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.pluginmanager.has_plugin("batched-anyio-backend"):
        return (
            "batched: anyio_backend on virtual time (asyncio, trio) unless a conftest "
            f"defines its own ({_INI} = true)"
        )
    return None
