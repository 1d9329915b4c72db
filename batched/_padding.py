"""Rows in, padded features out, and back: the array work of ``batched.inference``.

A call sends features shaped ``(rows, length, ...)``; each row is one item of the
batcher. A batch pads each sequence feature to its longest row (on the padding side,
with the feature's pad value) and stacks the rows, keeping dtype and device; the
function's output is split back into rows, and each caller's rows are stacked again.
numpy is imported on first use, torch never (its tensors are recognised by type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, final

from ._errors import Failure

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Row", "collate", "partition", "split_call", "split_output", "stack_rows"]


def _np() -> Any:
    try:
        import numpy
    except ImportError:
        msg = "batched.inference needs numpy: pip install 'batched-anyio[inference]'"
        raise ImportError(msg) from None
    return numpy


def is_tensor(value: object) -> bool:
    """A torch tensor, recognised without importing torch."""
    kind = type(value)
    return kind.__module__.startswith("torch") and hasattr(value, "device")


def _kind(value: object) -> str:
    if is_tensor(value):
        return "torch"
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        return "numpy"
    return ""


@final
class Row:
    """One item: one row of every feature of a call, and its sequence length."""

    __slots__ = ("features", "length", "padded", "signature", "size")

    def __init__(self, features: dict[str, Any], length: int, padded: frozenset[str]) -> None:
        self.features = features
        self.length = length
        # The length the row costs in a batch: its own, or its bucket of allowed_lengths.
        self.size = length
        self.padded = padded  # the names of the features padded on their first axis
        # Rows batch together only when these agree: names, array kinds, devices, dtypes,
        # and the shapes beyond the padded axis.
        self.signature = tuple(
            (
                name,
                _kind(value),
                str(getattr(value, "device", "")),
                str(value.dtype),
                ("padded", *value.shape[1:]) if name in padded else tuple(value.shape),
            )
            for name, value in features.items()
        )

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(v.shape)}" for name, v in self.features.items())
        return f"Row({shapes})"


def split_call(features: object, pad_tokens: Mapping[str, Any]) -> list[Row]:
    """A call's features as rows; a clear error for anything that cannot batch."""
    if not isinstance(features, Mapping) or not features:
        msg = f"features must be a non-empty mapping of name to array, not {features!r}"
        raise TypeError(msg)
    arrays: dict[str, Any] = {}
    rows = -1
    for name, value in features.items():
        if not isinstance(name, str):
            msg = f"feature names must be str, not {name!r}"
            raise TypeError(msg)
        if not _kind(value):
            if isinstance(value, list | tuple):
                value = _np().asarray(value)
            else:
                msg = (
                    f"feature {name!r} must be a numpy array or a torch tensor shaped "
                    f"(rows, length, ...), not {type(value).__qualname__}"
                )
                raise TypeError(msg)
        if value.ndim < 1:
            msg = f"feature {name!r} needs a leading rows axis, got shape {tuple(value.shape)}"
            raise ValueError(msg)
        if rows < 0:
            rows = int(value.shape[0])
        elif int(value.shape[0]) != rows:
            first = next(iter(arrays))
            msg = (
                f"features {first!r} and {name!r} have different numbers of rows: "
                f"{rows} and {int(value.shape[0])}"
            )
            raise ValueError(msg)
        arrays[name] = value
    # Padded: every 2-D feature (rows, length) and any feature named in pad_tokens.
    padded = frozenset(
        name
        for name, value in arrays.items()
        if value.ndim >= 2 and (value.ndim == 2 or name in pad_tokens)
    )
    lengths = {name: int(arrays[name].shape[1]) for name in padded}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        msg = f"the padded features of one call must have one length, got {shown}"
        raise ValueError(msg)
    if rows == 0:
        msg = "a call must send at least one row (the features have 0 rows)"
        raise ValueError(msg)
    # The sequence length: the padded features', else axis 1 of the first feature.
    if lengths:
        length = next(iter(lengths.values()))
    else:
        first = next(iter(arrays.values()))
        length = int(first.shape[1]) if first.ndim >= 2 else 1
    return [
        Row({name: value[i] for name, value in arrays.items()}, length, padded) for i in range(rows)
    ]


def _pad_stack(
    name: str, values: list[Any], pad: Any, left: bool, length: int, total: int
) -> tuple[Any, int]:
    """Stack rows of one feature, padding its first axis to the longest (at least
    ``length``) and adding filler rows of ``pad`` up to ``total``; (batch, length)."""
    first = values[0]
    longest = max(length, *(int(value.shape[0]) for value in values))
    shape = (total, longest, *tuple(first.shape[1:]))
    if is_tensor(first):
        import torch

        out = torch.full(shape, pad, dtype=first.dtype, device=first.device)
    else:
        out = _np().full(shape, pad, dtype=first.dtype)
    for i, value in enumerate(values):
        if tuple(value.shape[1:]) != shape[2:]:
            msg = (
                f"feature {name!r} cannot be padded into one batch: row shapes "
                f"{tuple(first.shape)} and {tuple(value.shape)} differ beyond the length axis"
            )
            raise ValueError(msg)
        n = int(value.shape[0])
        if left:
            out[i, longest - n :] = value
        else:
            out[i, :n] = value
    return out, longest


def _stack(name: str, values: list[Any], pad: Any, total: int) -> Any:
    first = values[0]
    shape = tuple(first.shape)
    for value in values:
        if tuple(value.shape) != shape:
            msg = (
                f"feature {name!r} cannot be stacked into one batch: rows shaped {shape} "
                f"and {tuple(value.shape)} (only 2-D features and those in pad_tokens are padded)"
            )
            raise ValueError(msg)
    if total > len(values):
        # Filler rows (allowed_batch_sizes) hold the feature's pad value.
        if is_tensor(first):
            import torch

            out = torch.full((total, *shape), pad, dtype=first.dtype, device=first.device)
        else:
            out = _np().full((total, *shape), pad, dtype=first.dtype)
        for i, value in enumerate(values):
            out[i] = value
        return out
    if is_tensor(first):
        import torch

        return torch.stack(values)
    return _np().stack(values)


def collate(
    rows: list[Row], pad_tokens: Mapping[str, Any], left: bool, total: int = 0
) -> tuple[dict[str, Any], int]:
    """One batch of features from rows of the same signature; and the padded length.

    Sequence features are padded to the longest row's ``size`` (its bucket of allowed
    lengths, if any); with ``total`` above the rows' count, filler rows of pad values
    follow the real ones (allowed batch sizes).
    """
    longest = 0
    total = max(total, len(rows))
    size = max(row.size for row in rows)
    features: dict[str, Any] = {}
    padded = rows[0].padded
    for name in rows[0].features:
        values = [row.features[name] for row in rows]
        pad = pad_tokens.get(name, 0)
        if name in padded:
            features[name], length = _pad_stack(name, values, pad, left, size, total)
            longest = max(longest, length)
        else:
            features[name] = _stack(name, values, pad, total)
    return features, longest


def _is_batched_array(value: object, n: int) -> bool:
    return bool(_kind(value)) and getattr(value, "ndim", 0) >= 1 and int(value.shape[0]) == n  # type: ignore[attr-defined]


def split_output(
    out: object,
    rows: list[Row],
    trimmed: Callable[[object], bool],
    longest: int,
    left: bool,
    total: int = 0,
) -> list[Any]:
    """The model's output for a batch, as one output per row.

    With ``total`` above the rows' count the batch carried filler rows after the real
    ones: the output has ``total`` rows, and the fillers' are dropped here.

    An array or tensor with a leading batch axis, a mapping of them, or a tuple/list of
    them; else (no array in it) a sequence of one result per row. The outputs for which
    ``trimmed(key)`` holds (key: None for a lone array, the dict key, the tuple index)
    have the sequence on axis 1: each row's is cut back to the row's own length.
    """
    n = max(total, len(rows))
    real = range(len(rows))

    def part(value: Any, i: int, key: object) -> Any:
        piece = value[i]
        if trimmed(key) and longest:  # longest 0: nothing was padded, nothing to cut
            length = rows[i].length
            if getattr(piece, "ndim", 0) < 1 or int(piece.shape[0]) != longest:
                positions = int(piece.shape[0]) if getattr(piece, "ndim", 0) else 0
                msg = (
                    f"sequence output {key!r} has {positions} positions on axis 1, "
                    f"but the batch was padded to {longest}"
                )
                raise ValueError(msg)
            piece = piece[longest - length :] if left else piece[:length]
        return piece

    if _is_batched_array(out, n):
        return [part(out, i, None) for i in real]
    if isinstance(out, Mapping):
        for key, value in out.items():
            if not _is_batched_array(value, n):
                msg = (
                    f"output {key!r} must be an array or tensor with a leading batch axis of "
                    f"{n}, got {type(value).__qualname__} {tuple(getattr(value, 'shape', ()))}"
                )
                raise ValueError(msg)
        return [{key: part(value, i, key) for key, value in out.items()} for i in real]
    if isinstance(out, tuple | list) and out:
        batched = [_is_batched_array(value, n) for value in out]
        if all(batched):
            kind: Callable[[Any], Any] = type(out) if type(out) in (tuple, list) else tuple
            return [kind(part(value, i, k) for k, value in enumerate(out)) for i in real]
        if any(batched) or any(_kind(value) for value in out):
            # Arrays that are not all per row (a loss next to logits, say): no guessing.
            index = batched.index(False)
            value = out[index]
            msg = (
                f"output {index} must be an array or tensor with a leading batch axis of "
                f"{n}, got {type(value).__qualname__} {tuple(getattr(value, 'shape', ()))}"
            )
            raise ValueError(msg)
        if len(out) == n:
            return [PerRow(out[i]) for i in real]  # one result per row
    msg = (
        f"the model must return an array or tensor with a leading batch axis of {n}, a "
        f"dict or a tuple of them, or one result per row; got {type(out).__qualname__}"
    )
    raise TypeError(msg)


@final
class PerRow:
    """One row's own result, when the model returns one per row: never stacked."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _pad_to(piece: Any, shape: tuple[int, ...], left: bool) -> Any:
    """``piece`` padded with zeros up to ``shape``: its first axis on the padding side."""
    if tuple(piece.shape) == shape:
        return piece
    if is_tensor(piece):
        import torch

        out = torch.zeros(shape, dtype=piece.dtype, device=piece.device)
    else:
        out = _np().zeros(shape, dtype=piece.dtype)
    index = tuple(
        slice(size - own, size) if axis == 0 and left else slice(0, own)
        for axis, (own, size) in enumerate(zip(piece.shape, shape, strict=True))
    )
    out[index] = piece
    return out


def stack_rows(outputs: list[Any], left: bool) -> Any:
    """A caller's row outputs, stacked back into the output's structure.

    Rows that travelled in different batches may come back padded to different lengths
    (token-level outputs): they are padded to the longest, as one batch would have.
    """
    first = outputs[0]
    if type(first) is PerRow:
        return [out.value for out in outputs]
    if isinstance(first, dict):
        return {key: stack_rows([out[key] for out in outputs], left) for key in first}
    if isinstance(first, tuple | list) and first and all(_kind(v) for v in first):
        parts = (stack_rows([out[i] for out in outputs], left) for i in range(len(first)))
        return type(first)(parts)
    kind = _kind(first)
    if not kind:
        return list(outputs)
    shapes = {tuple(out.shape) for out in outputs}
    if len(shapes) > 1 and len({len(shape) for shape in shapes}) == 1:
        shape = tuple(max(sizes) for sizes in zip(*shapes, strict=True))
        outputs = [_pad_to(out, shape, left) for out in outputs]
    if kind == "torch":
        import torch

        return torch.stack(outputs)
    return _np().stack(outputs)


def partition(rows: list[Row]) -> tuple[list[int], list[Any]]:
    """The rows of the batch's largest group of equal features (indexes), and a result
    list where every other row already holds its ``Failure``: it fails alone."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.signature, []).append(index)
    main = max(groups.values(), key=len)
    results: list[Any] = [None] * len(rows)
    if len(groups) > 1:
        want = _describe(rows[main[0]].signature)
        for indexes in groups.values():
            if indexes is main:
                continue
            error = ValueError(
                f"this call's features {_describe(rows[indexes[0]].signature)} differ from "
                f"the batch's {want}: calls batch together only with the same features, "
                f"array types, devices, dtypes and shapes beyond the padded axis"
            )
            for index in indexes:
                results[index] = Failure(error)
    return main, results


def _describe(signature: tuple[Any, ...]) -> str:
    parts = []
    for name, kind, device, dtype, shape in signature:
        where = f" on {device}" if kind == "torch" else ""
        parts.append(f"{name}: {kind} {dtype}{where} {shape}")
    return "{" + ", ".join(parts) + "}"
