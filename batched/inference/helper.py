"""The seed's ``batched.inference.helper``: stacking rows of features and outputs by hand.

``batched.inference`` pads and stacks for you; these functions serve code written for
mixedbread's ``batched`` that calls them itself. Each works on numpy arrays and torch
tensors alike (torch is never imported unless a tensor is passed); a padded feature keeps
its dtype.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import ModuleType

__all__ = ["stack_features", "stack_outputs", "torch_or_np", "unstack_features", "unstack_outputs"]


def torch_or_np(item: Any) -> ModuleType:
    """The array library of ``item`` (or of the first value of a dict, list or tuple):
    ``torch`` or ``numpy``.

    :raises ValueError: for anything that is neither a numpy array nor a torch tensor
    """
    while isinstance(item, dict | list | tuple) and item:
        item = next(iter(item.values())) if isinstance(item, dict) else item[0]
    torch = sys.modules.get("torch")
    if torch is not None and (torch.is_tensor(item) or isinstance(item, torch.dtype)):
        return torch
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(item, numpy.ndarray | numpy.generic):
        return numpy
    msg = f"expected numpy arrays or torch tensors, not {type(item).__qualname__}"
    raise ValueError(msg)


def stack_features(
    inputs: Sequence[Mapping[str, Any]],
    pad_tokens: Mapping[str, Any],
    padding_side: str = "right",
) -> dict[str, Any]:
    """One batch from rows of 1-D features: each feature padded to the longest row with
    ``pad_tokens[name]`` (default 0) on ``padding_side``, then stacked on a new axis 0.

    :raises ValueError: for a ``padding_side`` other than "right" or "left"
    """
    if padding_side not in ("right", "left"):
        msg = f"'padding_side' must be 'right' or 'left': {padding_side!r}"
        raise ValueError(msg)
    lib = torch_or_np(list(inputs))
    batch: dict[str, Any] = {}
    for name in inputs[0]:
        rows = [row[name] for row in inputs]
        longest = max(row.shape[0] for row in rows)
        padded = lib.full((len(rows), longest), pad_tokens.get(name, 0), dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            size = row.shape[0]
            if padding_side == "left":
                padded[i, longest - size :] = row
            else:
                padded[i, :size] = row
        batch[name] = padded
    return batch


def unstack_features(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a batch of features: one dict per index of axis 0."""
    rows = len(next(iter(inputs.values())))
    return [{name: value[i] for name, value in inputs.items()} for i in range(rows)]


def stack_outputs(outputs: Sequence[Any]) -> Any:
    """Per-row outputs (arrays, dicts of them, or lists of them) stacked on a new axis 0,
    in the rows' structure."""
    lib = torch_or_np(list(outputs))
    head = outputs[0]
    if isinstance(head, dict):
        return {name: lib.stack([output[name] for output in outputs]) for name in head}
    if isinstance(head, list):
        return [lib.stack(list(column)) for column in zip(*outputs, strict=True)]
    return lib.stack(list(outputs))


def unstack_outputs(outputs: Any) -> list[Any]:
    """The rows of a batch of outputs (an array, a dict or a list of them), in its
    structure: one per index of axis 0."""
    if isinstance(outputs, dict):
        rows = len(next(iter(outputs.values())))
        return [{name: value[i] for name, value in outputs.items()} for i in range(rows)]
    if isinstance(outputs, list):
        return [list(row) for row in zip(*outputs, strict=True)]
    return [outputs[i] for i in range(len(outputs))]
