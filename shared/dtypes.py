"""Tensor element types: onnxruntime's type strings -> the numpy dtype names TensorSpec uses.
The SDK reads a model's specs with it when uploading; the edge agent when loading; the
publish service takes only these names in a registered model's specs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from .schemas import TensorSpec

# Every element type the edge serves (edge_agent/tensors.py maps each to OIP and numpy).
DType = Literal[
    "float32",
    "float64",
    "float16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
]
DTYPES: frozenset[str] = frozenset(get_args(DType))

ORT_TYPES: dict[str, DType] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def dtype_of_ort(type_string: str) -> str:
    """``"tensor(float)"`` -> ``"float32"``; non-tensor types (maps, sequences) pass through."""
    return ORT_TYPES.get(type_string, type_string)


def spec_from_ort(node: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime ``NodeArg`` (free dimensions: None or their name)."""
    from .schemas import TensorSpec  # schemas imports this module's DType

    shape = tuple(d if isinstance(d, int) and d >= 0 else (d or None) for d in node.shape or ())
    return TensorSpec(name=node.name, dtype=dtype_of_ort(node.type), shape=shape)
