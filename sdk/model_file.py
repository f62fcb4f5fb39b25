"""Checking that a file is an ONNX model by loading it, and reading its tensor specs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgepub.shared.errors import InvalidModelError
from edgepub.shared.schemas import TensorSpec

# onnxruntime's type strings -> numpy dtype names
_ORT_TYPES = {
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


def _spec(arg: object) -> TensorSpec:
    name = str(getattr(arg, "name", ""))
    ort_type = str(getattr(arg, "type", ""))
    shape = tuple(
        d if isinstance(d, int) or d is None else str(d) for d in getattr(arg, "shape", []) or []
    )
    return TensorSpec(name=name, dtype=_ORT_TYPES.get(ort_type, ort_type), shape=shape)


def inspect_onnx(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Load ``path`` with onnxruntime; return its (inputs, outputs) or raise InvalidModelError."""
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    import onnxruntime as ort  # heavy import: only when a model is uploaded

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{path}: not a loadable ONNX model: {reason}") from exc
    return (
        tuple(_spec(i) for i in session.get_inputs()),
        tuple(_spec(o) for o in session.get_outputs()),
    )


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
