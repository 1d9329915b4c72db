"""Steering an open front: ``configure``, ``settings``, ``stop_accepting``, ``accepting``.

Shared by the fronts that hold their settings and, while open, one driver over a core
(``Batcher``, ``Continuous``): the rules live here once, and each front says only
which settings it lets change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .._settings import BatcherSettings, public_settings, reconfigure

if TYPE_CHECKING:
    from .._core.queue import Core
    from .._settings import Settings

__all__ = ["Steered"]


class _Driver(Protocol):
    core: Core

    def configure(self, settings: Settings) -> None: ...


class Steered:
    """The steering methods of a front with ``_settings`` and ``_run`` (its driver
    while open, else None)."""

    if not TYPE_CHECKING:  # storage from the fronts' own slots; the checker sees fields
        __slots__ = ()

    _settings: Settings
    _run: _Driver | None
    # The settings configure() may change, when fewer than every batcher's: a name
    # outside them is refused like a setting no batcher lets change.
    _tunable: ClassVar[tuple[str, ...] | None] = None

    @property
    def settings(self) -> BatcherSettings:
        """The settings now in force (a frozen snapshot; see :meth:`configure`)."""
        return public_settings(self._settings)

    def configure(self, **settings: Any) -> None:
        """Change settings, open or not: ``batch_size``, ``timeout_ms``,
        ``max_batch_length``, ``max_queue_size`` and, on a :class:`Batcher`,
        ``max_concurrent_batches``, ``small_batch_threshold``, ``max_wait_ms``.

        Checked like the constructor's; nothing changes if one is refused. Every batch
        cut after this returns keeps the new limits (a :class:`Continuous`: every join,
        and active items stay); running batches go on (a lower
        ``max_concurrent_batches`` cancels none); calls waiting for queue room get in
        if ``max_queue_size`` grew. When closed they apply from the next ``async with``.

        :raises TypeError: a setting this does not change, or a value of a wrong type
        :raises ValueError: a value out of range, or ``max_batch_length`` set on an
            open batcher made without one (its waiting items have no lengths counted)
        """
        tunable = self._tunable
        if tunable is not None:
            fixed = [name for name in settings if name not in tunable]
            if fixed:
                names = ", ".join(repr(name) for name in fixed)
                msg = (
                    f"configure() of a {type(self).__name__} cannot change {names}: it "
                    f"changes {', '.join(tunable)}"
                )
                raise TypeError(msg)
        new = reconfigure(self._settings, settings)
        run = self._run
        if run is not None:
            run.configure(new)
        self._settings = new

    def stop_accepting(self) -> None:
        """Refuse new calls with :exc:`BatcherClosed` from now on, while every call
        already accepted is served as usual (a SIGTERM handler, a readiness probe).

        Calls waiting for queue room were not accepted yet: they get
        :exc:`BatcherClosed` now. Leaving the block then drains as usual; entering it
        again accepts calls again. Does nothing when closed.
        """
        run = self._run
        if run is not None:
            run.core.stop_accepting()

    @property
    def accepting(self) -> bool:
        """Whether a call made now would be accepted: open, and not stopped."""
        run = self._run
        return run is not None and run.core.accepting
