"""Tensor types and request validation against a model's declared inputs.

Pure numpy: every check raises ``BadRequest`` naming the input, and the record where that
helps, so a 400 tells the caller exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepub.shared.schemas import Dim, TensorSpec

from .errors import BadRequest

# numpy dtype names <-> Open Inference Protocol datatypes.
OIP_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}
DTYPES_BY_OIP = {v: k for k, v in OIP_DATATYPES.items()}
# Which numpy kinds a JSON/Arrow value may arrive as, per target kind.
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "OUS"}


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype onnxruntime wants for a TensorSpec dtype (strings are objects)."""
    if name == "string":
        return np.dtype(object)
    return np.dtype(name)


def shape_text(shape: Sequence[Dim]) -> str:
    """``(None, 18)`` -> ``"[?, 18]"``: how a person reads a declared shape."""
    return "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in shape) + "]"


def _row_shape_matches(actual: tuple[int, ...], declared: Sequence[Dim]) -> bool:
    if len(actual) != len(declared):
        return False
    return all(not isinstance(d, int) or d == a for a, d in zip(actual, declared, strict=True))


def check_shape(spec: TensorSpec, shape: Sequence[int], *, per_record: bool) -> None:
    """``per_record``: ``shape`` stacks records, so its first dimension is not checked."""
    declared: Sequence[Dim] = spec.shape[1:] if per_record and spec.shape else spec.shape
    actual = tuple(shape[1:] if per_record else shape)
    if spec.shape and not _row_shape_matches(actual, declared):
        what = "each record's value" if per_record else "the tensor"
        raise BadRequest(
            f"input {spec.name!r}: {what} has shape {list(actual)}; the model expects "
            f"{shape_text(declared)}",
            field=spec.name,
        )


def _first_bad_record(spec: TensorSpec, values: Sequence[Any], first: int = 0) -> str:
    """Which record made a column unconvertible, and why (slow path: errors only); the
    records are numbered from ``first``."""
    first_shape: tuple[int, ...] | None = None
    for index, value in enumerate(values, first):
        try:
            arr = np.asarray(value)
        except ValueError:
            return f"record {index} holds nested lists of different lengths"
        if arr.dtype.kind in "OUSb" and spec.dtype not in ("string", "bool"):
            return f"record {index} holds {value!r:.60}, not {spec.dtype} numbers"
        if first_shape is None:
            first_shape = arr.shape
        elif arr.shape != first_shape:
            return (
                f"record {first} has shape {list(first_shape)} but record {index} has "
                f"{list(arr.shape)}"
            )
    return "its values do not form one array"


def column(
    spec: TensorSpec, values: Sequence[Any], *, typed: bool = False, first: int = 0
) -> np.ndarray[Any, Any]:
    """Stack one input's per-record values into the array the model takes.

    ``typed``: the values were already checked to be of the input's element type (the
    records decoder does that), so they convert in one pass. ``first``: the number of
    the first record, for messages.
    """
    target = numpy_dtype(spec.dtype)
    try:
        array = np.asarray(values, dtype=target if typed else None)
    except ValueError:
        raise BadRequest(
            f"input {spec.name!r}: {_first_bad_record(spec, values, first)}", field=spec.name
        ) from None
    if not typed or array.dtype != target:
        array = convert(spec, array, target, lambda: _first_bad_record(spec, values, first))
    check_shape(spec, array.shape, per_record=True)
    return array


def convert(
    spec: TensorSpec,
    array: np.ndarray[Any, Any],
    target: np.dtype[Any] | None = None,
    explain: Any = None,
) -> np.ndarray[Any, Any]:
    """Cast ``array`` to the input's dtype if its kind allows it (no string -> float guessing)."""
    target = target if target is not None else numpy_dtype(spec.dtype)
    if array.dtype == target:
        return array
    accepted = _ACCEPTED_KINDS.get(target.kind, target.kind)
    if array.dtype.kind not in accepted or (array.dtype.kind == "O" and target.kind != "O"):
        why = explain() if explain else f"it holds {array.dtype} values"
        raise BadRequest(
            f"input {spec.name!r} must hold {spec.dtype} values: {why}", field=spec.name
        )
    if target.kind == "O":
        return array.astype(object)
    return array.astype(target)
