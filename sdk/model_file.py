"""Checking that a file is an ONNX model by loading it, and reading its tensor specs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgepub.shared.dtypes import spec_from_ort
from edgepub.shared.errors import InvalidModelError
from edgepub.shared.schemas import TensorSpec


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
        tuple(spec_from_ort(i) for i in session.get_inputs()),
        tuple(spec_from_ort(o) for o in session.get_outputs()),
    )


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
