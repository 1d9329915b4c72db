"""The virtual-time ``anyio_backend`` fixture (see ``_plugin`` for how it reaches a project)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ._virtual_time import BACKEND_NAMES, VirtualTimeLoop, drain_reports, fresh_backend_options

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["anyio_backend"]


@pytest.fixture(params=list(BACKEND_NAMES))
def anyio_backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """anyio's ``anyio_backend`` fixture on virtual time: asyncio, then trio.

    Fresh options per test. On asyncio the test also fails if anything reached the
    loop's exception handler ("Task was destroyed but it is pending!"), checked after the
    loop closed, so reports made while it shut down count too. Get it with
    ``batched_virtual_time = true`` in your pytest configuration, or import it into your
    ``conftest.py`` (or a test module)::

        from batched.testing import anyio_backend  # noqa: F401

    Other parameters run on real time, and tests marked ``virtual_time`` are skipped on
    them: ``"asyncio+uvloop"`` (asyncio on uvloop), or a ``(backend, options)`` pair,
    used as given. Pick them with ``pytest.mark.parametrize("anyio_backend", [...],
    indirect=True)``.
    """
    param: str | tuple[str, dict[str, Any]] = request.param
    label = param if isinstance(param, str) else param[0]
    if param == "asyncio+uvloop":
        import uvloop  # lazily: only this parameter needs it

        param = ("asyncio", {"loop_factory": uvloop.new_event_loop})
    if not isinstance(param, str):
        if request.node.get_closest_marker("virtual_time"):
            pytest.skip(f"relies on virtual time; {label} runs on real time")
        yield param
        return
    if param != "asyncio":
        yield param, fresh_backend_options(param)
        return
    loops: list[VirtualTimeLoop] = []

    def loop_factory() -> VirtualTimeLoop:
        loop = VirtualTimeLoop()
        loops.append(loop)
        return loop

    yield "asyncio", {"loop_factory": loop_factory}
    errors = drain_reports(loops)
    if errors:
        msg = f"event loop exception handler was called: {errors!r}"
        raise AssertionError(msg)
