"""Apache Arrow IPC in and out, for batches.

In: an Arrow table (IPC file or stream) with one column per model input; a record's value
is a scalar or a (nested) fixed-size list. Out: the same IPC flavour, columns ``time``,
``in`` (struct of the inputs), ``out`` (struct of the outputs), ``check_failures`` and
``metadata`` (struct), the Arrow form of the pandas-records answer.

pyarrow is imported on first use: an agent that never sees Arrow never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepub.shared.schemas import TensorSpec

from ..errors import BadRequest
from ..tensors import check_shape, column, convert

FILE = "application/vnd.apache.arrow.file"
STREAM = "application/vnd.apache.arrow.stream"


def _pa() -> Any:
    import pyarrow as pa

    return pa


def decode(body: bytes, stream: bool) -> Any:
    """The request's table; a body that is not Arrow IPC becomes a 400."""
    pa = _pa()
    try:
        buf = pa.py_buffer(body)
        reader = pa.ipc.open_stream(buf) if stream else pa.ipc.open_file(buf)
        table = reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        kind = "stream" if stream else "file"
        raise BadRequest(f"request body is not an Arrow IPC {kind}: {exc}", field="body") from None
    if table.num_rows == 0:
        raise BadRequest("the Arrow table has no rows", field="body")
    return table


def _fixed_list_array(col: Any, spec: TensorSpec) -> np.ndarray[Any, Any] | None:
    """Fast path: fixed-size lists of primitives, without Python objects."""
    pa = _pa()
    arr = col.combine_chunks()
    dims: list[int] = [len(arr)]
    while pa.types.is_fixed_size_list(arr.type):
        dims.append(arr.type.list_size)
        arr = arr.flatten()
    if arr.null_count or not (
        pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        return None
    values = arr.to_numpy(zero_copy_only=False)
    array = convert(spec, values.reshape(dims))
    check_shape(spec, array.shape, per_record=True)
    return array


def to_feed(
    table: Any, inputs: Sequence[TensorSpec]
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
    """(arrays for onnxruntime, the input columns to echo as ``in``)."""
    feed: dict[str, np.ndarray[Any, Any]] = {}
    echoed: dict[str, Any] = {}
    names = table.column_names
    for spec in inputs:
        if spec.name not in names:
            listed = ", ".join(repr(s.name) for s in inputs)
            raise BadRequest(
                f"the Arrow table has no column {spec.name!r}; the model's inputs are {listed}",
                field=spec.name,
            )
        col = table.column(spec.name)
        array = _fixed_list_array(col, spec)
        feed[spec.name] = array if array is not None else column(spec, col.to_pylist())
        echoed[spec.name] = col
    return feed, echoed


def _metadata_type() -> Any:
    pa = _pa()
    return pa.struct(
        [
            ("last_model", pa.string()),
            ("pipeline_version", pa.string()),
            ("elapsed", pa.list_(pa.int64())),
            ("dropped", pa.list_(pa.string())),
            ("partition", pa.string()),
        ]
    )


def column_of(values: list[Any]) -> Any:
    """An Arrow column from JSON values (records in, Arrow out)."""
    return _pa().chunked_array([_pa().array(values)])


def _arrow_column(value: Any) -> Any:
    pa = _pa()
    if not isinstance(value, np.ndarray):
        return pa.array(list(value))
    if value.ndim <= 1:
        return pa.array(value)
    flat = pa.array(np.ascontiguousarray(value).reshape(-1))
    for size in reversed(value.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def encode(
    echoed: dict[str, Any],
    outputs: dict[str, Any],
    records: int,
    time_ms: int,
    metadata: dict[str, Any],
    stream: bool,
) -> bytes:
    pa = _pa()
    ins = pa.StructArray.from_arrays(
        [c.combine_chunks() for c in echoed.values()], names=list(echoed)
    )
    outs = pa.StructArray.from_arrays(
        [_arrow_column(v) for v in outputs.values()], names=list(outputs)
    )
    meta = pa.array([metadata] * records, type=_metadata_type())
    table = pa.table(
        {
            "time": pa.array([time_ms] * records, type=pa.timestamp("ms")),
            "in": ins,
            "out": outs,
            "check_failures": pa.array([[]] * records, type=pa.list_(pa.string())),
            "metadata": meta,
        }
    )
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
