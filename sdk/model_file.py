"""Checking that a file is an ONNX model edgepub can publish, and reading its tensor specs.

Checked before any byte is uploaded, so the error points at the file: it must load in
onnxruntime, keep all its tensors inside itself (no external data: only the one file is
uploaded, and an edge would never find the rest), and have only tensor inputs and outputs
within the limits the publish service takes (``CheckedTensorSpec``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from edgepub.shared.dtypes import DTYPES, spec_from_ort
from edgepub.shared.errors import InvalidModelError, ModelExternalDataError
from edgepub.shared.onnx_scan import describe, scan_file
from edgepub.shared.schemas import CheckedTensorSpec, CheckedTensorSpecs, TensorSpec

Specs = tuple[CheckedTensorSpec, ...]


def inspect_onnx(path: Path) -> tuple[Specs, Specs]:
    """Load ``path`` with onnxruntime; return its (inputs, outputs) or raise InvalidModelError
    (ModelExternalDataError for a model whose tensors live in other files)."""
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    # First, and cheaply (a walk over the file's fields, ~3 ms for 50 MB): onnxruntime
    # would load the external data from beside the file without a word.
    scan = scan_file(path)
    if scan.external_count:
        raise ModelExternalDataError(describe(scan, str(path)))
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
    if scan.problem is not None:  # onnxruntime took what we could not read: say so, plainly
        raise InvalidModelError(describe(scan, str(path)))
    inputs = tuple(spec_from_ort(i) for i in session.get_inputs())
    outputs = tuple(spec_from_ort(o) for o in session.get_outputs())
    return _checked(path, "input", inputs), _checked(path, "output", outputs)


def _checked(path: Path, kind: str, specs: tuple[TensorSpec, ...]) -> Specs:
    for spec in specs:
        if spec.dtype not in DTYPES:
            raise InvalidModelError(
                f"{path}: {kind} {spec.name!r} is {spec.dtype}, not a tensor; edgepub serves "
                "models whose inputs and outputs are all tensors (a scikit-learn classifier: "
                "convert it with options={'zipmap': False})"
            )
    try:
        return msgspec.convert(msgspec.to_builtins(specs), CheckedTensorSpecs)
    except msgspec.ValidationError as exc:
        raise InvalidModelError(f"{path}: its {kind}s cannot be published: {exc}") from None


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
