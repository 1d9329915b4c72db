"""Review of the commits of 2026-12-02: failing tests for the bugs found (strict xfails).

8188623 keeps a method's binding in the instance's ``__dict__`` and trusts it when its
``_for`` equals ``id(instance)``; a binding deep-copies and pickles to None.
"""

from __future__ import annotations

import copy
import gc
import pickle
from typing import Any

import pytest

import batched


class SyncModel:
    """A sync batched method: its binding holds the instance weakly (``weak_method``).

    The unused slots only make an instance big (> 512 bytes, so malloc'd in a size class
    of its own), so that the allocator reuses a collected instance's address at once.
    """

    __slots__ = ("__dict__", "__weakref__", *(f"_pad{i}" for i in range(80)))

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @batched.dynamically(batch_size=4, timeout_ms=1)
    def predict(self, items: list[int]) -> list[int]:
        return [item * self.factor for item in items]


class AsyncModel:
    """Module level, so that instances and their bound methods can be pickled."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @batched.dynamically(batch_size=4, timeout_ms=1)
    async def scale(self, items: list[int]) -> list[int]:
        return [item * self.factor for item in items]


def _binding_key(instance: object) -> str:
    return next(key for key in vars(instance) if key.startswith("__batched_"))


@pytest.mark.xfail(
    strict=True,
    reason="id() reuse: a shallow copy carries a binding whose (weakly held) instance died; "
    "a later copy allocated at the dead instance's address passes the `_for == id(instance)` "
    "check and gets the dead instance's binding (ReferenceError on every call)",
)
def test_a_copy_at_a_dead_instance_address_does_not_get_its_binding() -> None:
    found = _copy_at_a_dead_instance_address()
    if found is None:
        pytest.skip("the allocator did not reuse a collected instance's address")
    clone, stale = found
    clone.factor = 10
    bound = clone.predict
    try:
        assert bound(3) == 30  # today: ReferenceError, the instance of the binding is gone
        assert bound is not stale, "the copy got its dead original's binding"
    finally:
        bound.close()
        stale.close()


def _copy_at_a_dead_instance_address() -> tuple[SyncModel, Any] | None:
    """A copy of a copy that lands where the (collected) original was, with the
    original's binding in its ``__dict__``; None if the address was never reused."""
    for _ in range(50):
        original = SyncModel(2)
        original.predict  # noqa: B018 - binds: the binding lands in original.__dict__
        key = _binding_key(original)
        address = id(original)
        carrier = copy.copy(original)  # carries original's binding; never looks it up
        stale = carrier.__dict__[key]
        del original
        gc.collect()  # the sync binding holds its instance weakly: it is gone now
        keep: list[SyncModel] = []
        for _ in range(100):
            clone = copy.copy(carrier)  # e.g. a copy of a copy, made later
            if id(clone) == address:
                return clone, stale
            keep.append(clone)  # keep it, so that the next copy lands elsewhere
    return None


@pytest.mark.xfail(
    strict=True,
    reason="Binding.__deepcopy__ returns None for any bound binding: a bound batched "
    "method held outside its instance's __dict__ deep-copies to None (a plain bound "
    "method deep-copies to the copy's method)",
)
def test_a_bound_method_held_elsewhere_deep_copies_to_the_copys_method() -> None:
    model = AsyncModel(2)
    state: dict[str, Any] = {"model": model, "op": model.scale}
    clone = copy.deepcopy(state)
    assert clone["op"] is not None, "the deep copy of a bound batched method is None"
    assert clone["op"] is clone["model"].scale


@pytest.mark.xfail(
    strict=True,
    reason="Binding.__reduce__ returns (_unbound, ()) for any bound binding: a pickled "
    "bound batched method unpickles to None (a plain bound method unpickles to the "
    "unpickled instance's method)",
)
def test_a_bound_method_pickles_to_the_unpickled_instances_method() -> None:
    model = AsyncModel(2)
    restored_model, restored_op = pickle.loads(pickle.dumps((model, model.scale)))
    assert restored_op is not None, "a pickled bound batched method unpickles to None"
    assert restored_op is restored_model.scale
