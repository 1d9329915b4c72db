"""``batched.Batch``: one cut batch as its batch function or its consumer sees it.

A running ``fn`` finds its batch with :func:`current_batch` (a context variable set
around the call); a consumer of ``Batcher.batches()`` receives it and answers it with
``set_results`` or ``fail``. Contexts and deadlines are read from the calls when asked
for, so that a batch costs its front nothing per item beyond the call's own capture.
"""

from __future__ import annotations

from contextvars import Context, ContextVar
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, final

from ._core.calls import CallCore, SharedCall, owner
from ._core.results import check_results

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._errors import BatcherClosed

__all__ = ["Batch", "Hub", "current_batch", "running"]

T = TypeVar("T")

# The batch whose fn runs in this context.
running: ContextVar[Batch[Any]] = ContextVar("batched.current_batch")

_OUT, _ANSWERED, _CLOSED = 0, 1, 2


class Hub(Protocol):
    """The pulled driver, as a batch it handed out sees it."""

    def answer(
        self,
        batch: Batch[Any],
        results: Sequence[Any] | None,
        error: Exception | None,
        counted: bool = True,
    ) -> None:
        """Hand the outcomes to the batch's callers and let the batch go; ``counted``:
        a batch answered by its consumer (one released unanswered is not)."""


@final
class Batch(Generic[T]):
    """One batch: its items and what is known of their callers.

    A batch function sees its own through :func:`current_batch`; a consumer of
    :meth:`Batcher.batches` receives it and answers it once, with :meth:`set_results`
    or :meth:`fail`.

    :ivar items: the items, in the order their results are expected
    :ivar reason: why the batch was cut: ``"full"`` (``batch_size`` items waited),
        ``"budget"`` (``max_batch_length`` was reached), ``"overdue"`` (its oldest item
        had waited ``max_wait_ms``), ``"timeout"`` (its oldest item had waited
        ``timeout_ms``) or ``"closing"`` (the batcher is closing)
    """

    __slots__ = (
        "_answer",
        "_deadline_of",
        "_entries",
        "_hub",
        "_state",
        "consumer",
        "cut",
        "items",
        "reason",
        "started",
    )

    def __init__(
        self,
        entries: list[Any],
        items: list[T],
        reason: str,
        deadline_of: Callable[[CallCore], float],
        hub: Hub | None = None,
    ) -> None:
        self._entries = entries
        self.items = items
        self.reason = reason
        self._deadline_of = deadline_of
        self._hub = hub
        self._state = _OUT
        self._answer = ""
        self.cut: Any = None  # the core's record of it (pulled batches)
        self.consumer: Any = None  # the stream that received it (pulled batches)
        self.started = 0.0  # when it was cut (pulled batches)

    def __repr__(self) -> str:
        return f"<batched.Batch of {len(self.items)} item(s), reason={self.reason!r}>"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def contexts(self) -> list[Context]:
        """Each caller's :class:`contextvars.Context` at call time, by item: read a
        caller's context variables with ``batch.contexts[i].run(var.get)``."""
        contexts = []
        for entry in self._entries:
            ctx = owner(entry).ctx
            contexts.append(Context() if ctx is None else ctx)
        return contexts

    @property
    def deadlines(self) -> list[float]:
        """Each caller's effective deadline (``anyio.current_effective_deadline()`` in
        its task; ``math.inf`` when none), by item. It is read now from the cancel
        scopes of the task that awaits the result, which have not changed since the
        call unless a scope's deadline was moved meanwhile. A call from a thread has
        none, nor does a caller that has left (``-math.inf`` while it is cancelled)."""
        deadline_of = self._deadline_of
        return [deadline_of(waiter(owner(entry))) for entry in self._entries]

    # -- answering a pulled batch -------------------------------------------------------

    def _take(self, how: str) -> Hub | None:
        hub = self._hub
        if hub is None:
            msg = (
                f"{how}() answers a batch pulled from Batcher.batches(); a batch function "
                f"returns its results instead"
            )
            raise RuntimeError(msg)
        if self._state == _ANSWERED:
            msg = (
                f"this batch was answered already, by {self._answer}(); a batch takes one "
                f"answer: set_results() or fail()"
            )
            raise RuntimeError(msg)
        if self._state == _CLOSED:
            return None  # its callers were released when the batcher or stream closed
        self._state = _ANSWERED
        self._answer = how
        return hub

    def set_results(self, results: Sequence[Any]) -> None:
        """Give each caller its result, in item order; a ``batched.Failure(exc)`` slot
        fails that caller alone. Checked like a batch function's results.

        :raises BatchSizeMismatch: the count differs from the items'; the batch's
            callers get the same error
        :raises TypeError: ``results`` is not a list, tuple or array-like; the batch's
            callers get the same error
        :raises RuntimeError: the batch was answered already (by ``set_results`` or
            ``fail``); its callers keep their first answer
        """
        hub = self._take("set_results")
        if hub is None:
            return
        try:
            checked = check_results(results, len(self.items))
        except Exception as exc:
            hub.answer(self, None, exc)
            raise
        hub.answer(self, checked, None)

    def fail(self, exc: Exception) -> None:
        """Every caller of the batch gets ``exc``.

        :raises TypeError: ``exc`` is not an ``Exception`` instance
        :raises RuntimeError: the batch was answered already
        """
        if not isinstance(cast("object", exc), Exception):  # untyped callers
            msg = f"fail() takes an Exception instance: {exc!r}"
            raise TypeError(msg)
        hub = self._take("fail")
        if hub is not None:
            hub.answer(self, None, exc)

    def close(self, error: BatcherClosed) -> bool:
        """Release the callers of a batch still out (its consumer left, or the batcher
        closed): whether it was out."""
        if self._state != _OUT:
            return False
        self._state = _CLOSED
        hub = self._hub
        if hub is not None:
            hub.answer(self, None, error, counted=False)
        return True


def waiter(call: CallCore) -> CallCore:
    """The call whose caller waits for ``call``'s outcome: a keyed item's first caller."""
    if type(call) is SharedCall:
        for sub in call.subscribers:
            return sub
    return call


def current_batch() -> Batch[Any]:
    """The :class:`Batch` that the running batch function was called with.

    Inside ``fn`` (also a plain function in its worker thread, and each retry of
    ``isolate_errors``, which sees its subset): its items, each caller's context and
    deadline, and why the batch was cut.

    :raises LookupError: outside a running batch function
    """
    try:
        return running.get()
    except LookupError:
        msg = "batched.current_batch() is called outside a running batch function"
        raise LookupError(msg) from None
