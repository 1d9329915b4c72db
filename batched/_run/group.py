"""The task group a driver owns for the length of a batcher's ``async with`` block.

Every driver that runs tasks of its own (a ``Batcher``'s slots, a ``Continuous``'s step
loop, the dispatcher of pulled batches) opens and ends its group the same way; what
differs — how to drain, how to let every caller go — is passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup

__all__ = ["close_group", "open_group"]


async def open_group(main: Callable[..., Any]) -> TaskGroup:
    """A task group, entered, with ``main`` started in it (``task_status.started()``)."""
    tg = anyio.create_task_group()
    await tg.__aenter__()
    try:
        await tg.start(main)
    except BaseException as exc:
        tg.cancel_scope.cancel()
        await tg.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    return tg


async def close_group(
    tg: TaskGroup,
    exc: BaseException | None,
    drain: Callable[[], object],
    release: Callable[[], object],
    fatal: Callable[[], BaseException | None] = lambda: None,
) -> bool | None:
    """End ``tg`` as the block ends with ``exc``: ``drain()`` then wait for the tasks to
    finish (a normal exit), or ``release()`` every caller and cancel them. What the
    block's ``__aexit__`` returns. A ``fatal()`` BaseException (from ``fn`` or a step)
    is raised instead of whatever ending the group raised: the task group re-raises the
    block's own cancellation when ``fn`` raised it as the owner was being cancelled."""
    try:
        suppress = await _end(tg, exc, drain, release)
    except BaseException:
        if fatal() is None:
            raise
    error = fatal()
    if error is not None:
        raise error
    return suppress


async def _end(
    tg: TaskGroup,
    exc: BaseException | None,
    drain: Callable[[], object],
    release: Callable[[], object],
) -> bool | None:
    if exc is None:
        drain()
        await tg.__aexit__(None, None, None)
        return None
    release()
    tg.cancel_scope.cancel()
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        # The task group's scope may own this cancellation: it must see it.
        return await tg.__aexit__(type(exc), exc, exc.__traceback__)
    # Any other exception propagates unchanged, never in an ExceptionGroup.
    await tg.__aexit__(None, None, None)
    return None
