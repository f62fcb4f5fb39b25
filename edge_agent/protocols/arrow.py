"""Apache Arrow IPC in and out, for batches.

In: an Arrow table (IPC file or stream) with one column per model input and no other (but
a pandas index); a record's value is a scalar or a (nested) list, all of one length. Out:
the same IPC flavour, columns ``time``, ``in`` (struct of the inputs), ``out`` (struct of
the outputs), ``check_failures`` and ``metadata`` (struct), the Arrow form of the
pandas-records answer.

Hostile bodies: ``ipc.measure`` bounds what a body decodes to before pyarrow reads it, and
every batch is validated in full before anything touches its values.

pyarrow is imported on first use: an agent that never sees Arrow never pays for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepub.shared.schemas import TensorSpec

from ..errors import BadRequest, PayloadTooLarge
from ..tensors import check_shape, convert
from . import ipc

FILE = "application/vnd.apache.arrow.file"
STREAM = "application/vnd.apache.arrow.stream"
MAX_MESSAGES = 10_000  # a batch request is a few large batches, not a million tiny ones
_MAGIC = b"ARROW1"
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")  # what Table.from_pandas adds for an index
_IN_COLUMN = re.compile(r"In column (\d+)")


def _pa() -> Any:
    import pyarrow as pa

    return pa


def _stream_part(body: bytes, stream: bool) -> memoryview:
    """The IPC stream inside the body.

    A file is ``ARROW1``, padding, the stream, a footer, its int32 length and ``ARROW1``;
    reading the stream part (not the footer's block index) means what ``ipc.measure`` checked
    is exactly what pyarrow then reads.
    """
    view = memoryview(body)
    if stream:
        return view
    size = len(body)
    footer = int.from_bytes(body[-10:-6], "little", signed=True) if size >= 18 else -1
    if body[:6] != _MAGIC or body[-6:] != _MAGIC or not 0 <= footer <= size - 18:
        raise BadRequest(
            "request body is not an Arrow IPC file: it must start and end with ARROW1 "
            "and hold a footer",
            field="body",
        )
    return view[8 : size - 10 - footer]


def _check_extent(extent: ipc.Extent, max_decoded: int, max_records: int) -> None:
    if extent.messages > MAX_MESSAGES:
        raise PayloadTooLarge(
            f"the Arrow body holds more than {MAX_MESSAGES} messages; send fewer, larger "
            "record batches",
            field="body",
        )
    if extent.decoded > max_decoded:
        raise PayloadTooLarge(
            f"the Arrow body decodes to {extent.decoded} bytes; this edge accepts at most "
            f"{max_decoded} (EDGEPUB_MAX_BODY)",
            field="body",
        )
    if extent.records > max_records:
        raise PayloadTooLarge(
            f"the Arrow body holds {extent.records} records; this edge accepts at most "
            f"{max_records} per request (EDGEPUB_MAX_RECORDS)",
            field="records",
        )


def _malformed(exc: Exception, schema: Any) -> BadRequest:
    found = _IN_COLUMN.search(str(exc))
    if found is not None and schema is not None and int(found[1]) < len(schema.names):
        name = schema.names[int(found[1])]
        return BadRequest(f"Arrow column {name!r} does not hold together: {exc}", field=name)
    return BadRequest(f"the Arrow record batch does not hold together: {exc}", field="body")


def _names(schema: Any) -> None:
    try:
        schema.names  # noqa: B018 -- decoded lazily, and pyarrow raises on bad UTF-8 there
    except UnicodeDecodeError:
        raise BadRequest(
            "the Arrow schema has a column name that is not UTF-8", field="body"
        ) from None


def decode(body: bytes, stream: bool, max_decoded: int, max_records: int) -> Any:
    """The request's table, every batch validated in full before anything reads it.

    Refused before pyarrow decompresses anything: more than ``max_decoded`` bytes once
    decoded or ``max_records`` rows (413). Refused after reading, before use: a batch whose
    offsets, lengths or dictionary indexes point outside its buffers (400) -- pyarrow would
    read out of bounds.
    """
    pa = _pa()
    kind = "stream" if stream else "file"
    part = _stream_part(body, stream)
    try:
        extent = ipc.measure(part, stop_after=MAX_MESSAGES)
    except ipc.IpcError as exc:
        raise BadRequest(f"request body is not an Arrow IPC {kind}: {exc}", field="body") from None
    _check_extent(extent, max_decoded, max_records)
    schema = None
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(part))
        schema = reader.schema
        _names(schema)
        batches = []
        for batch in reader:
            try:
                batch.validate(full=True)
            except pa.ArrowException as exc:
                raise _malformed(exc, schema) from None
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=schema)
    except (pa.ArrowException, OSError) as exc:
        raise BadRequest(f"request body is not an Arrow IPC {kind}: {exc}", field="body") from None
    if table.num_rows == 0:
        raise BadRequest("the Arrow table has no rows", field="body")
    return table


def _unnest(arr: Any, spec: TensorSpec) -> tuple[Any, list[int]]:
    """(the leaf values, the dimensions) of (fixed-size) lists of lists, checked rectangular."""
    pa = _pa()
    dims: list[int] = [len(arr)]
    while True:
        kind = arr.type
        nested = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        if not (nested or pa.types.is_fixed_size_list(kind)):
            return arr, dims
        if arr.null_count:
            raise BadRequest(f"input {spec.name!r} holds null records or lists", field=spec.name)
        if nested:
            lengths = np.diff(arr.offsets.to_numpy())
            width = int(lengths[0]) if len(lengths) else 0
            uneven = np.flatnonzero(lengths != width)
            if len(uneven):
                record = int(uneven[0]) // max(1, int(np.prod(dims[1:])))
                raise BadRequest(
                    f"input {spec.name!r}: record {record} holds a list of "
                    f"{int(lengths[uneven[0]])} values where record 0 holds {width}",
                    field=spec.name,
                )
            dims.append(width)
        else:
            dims.append(kind.list_size)
        arr = arr.flatten()


def _values(col: Any, spec: TensorSpec) -> np.ndarray[Any, Any]:
    """One input column as the array onnxruntime takes, without a Python object per value
    (but for strings)."""
    pa = _pa()
    leaf, dims = _unnest(col.combine_chunks(), spec)
    kind = leaf.type
    if leaf.null_count:
        raise BadRequest(f"input {spec.name!r} holds null values", field=spec.name)
    if spec.dtype == "string" and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        values = np.array(leaf.to_pylist(), dtype=object)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        values = leaf.to_numpy(zero_copy_only=False)
    else:
        raise BadRequest(
            f"input {spec.name!r}: an Arrow column of {col.type} cannot feed {spec.dtype} "
            "values; send numbers, or (fixed-size) lists of them",
            field=spec.name,
        )
    array = convert(spec, values.reshape(dims))
    check_shape(spec, array.shape, per_record=True)
    return array


def _check_columns(names: list[str], inputs: Sequence[TensorSpec]) -> None:
    listed = ", ".join(repr(s.name) for s in inputs)
    for spec in inputs:
        if spec.name not in names:
            raise BadRequest(
                f"the Arrow table has no column {spec.name!r}; the model's inputs are {listed}",
                field=spec.name,
            )
    known = {s.name for s in inputs}
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadRequest(f"the Arrow table has two columns named {name!r}", field=name)
        seen.add(name)
        if name not in known and not _PANDAS_INDEX.fullmatch(name):
            raise BadRequest(
                f"the Arrow table has a column {name!r} the model does not take; its inputs "
                f"are {listed}",
                field=name,
            )


def to_feed(
    table: Any, inputs: Sequence[TensorSpec]
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
    """(arrays for onnxruntime, the input columns to echo as ``in``)."""
    _check_columns(table.column_names, inputs)
    feed = {spec.name: _values(table.column(spec.name), spec) for spec in inputs}
    echoed = {spec.name: table.column(spec.name) for spec in inputs}
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


def column_of(values: list[Any] | np.ndarray[Any, Any]) -> Any:
    """An Arrow column from JSON values (records in, Arrow out): per-record lists, or the
    array they were decoded into (a large body), as the same Arrow type (nested lists)."""
    pa = _pa()
    if not isinstance(values, np.ndarray):
        return pa.chunked_array([pa.array(values)])
    column = pa.array(values.reshape(-1)) if values.ndim > 1 else pa.array(values)
    for size in reversed(values.shape[1:]):
        offsets = np.arange(0, len(column) + 1, size, dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), column)
    return pa.chunked_array([column])


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


def _repeated(value: Any, kind: Any, count: int) -> Any:
    return _pa().repeat(_pa().scalar(value, type=kind), count)


def _lists(items: Sequence[Any], kind: Any, count: int) -> Any:
    """``count`` copies of the list ``items``, without a Python object per copy."""
    pa = _pa()
    width = len(items)
    offsets = pa.array(np.arange(0, (count + 1) * width, width or 1, dtype=np.int32))
    if not width:
        offsets = pa.array(np.zeros(count + 1, dtype=np.int32))
    one = pa.array(list(items), type=kind)
    values = one if not width else pa.array(np.tile(one.to_numpy(zero_copy_only=False), count))
    return pa.ListArray.from_arrays(offsets, values.cast(kind))


def _metadata(metadata: dict[str, Any], count: int) -> Any:
    pa = _pa()
    return pa.StructArray.from_arrays(
        [
            _repeated(metadata["last_model"], pa.string(), count),
            _repeated(metadata["pipeline_version"], pa.string(), count),
            _lists(metadata["elapsed"], pa.int64(), count),
            _lists(metadata["dropped"], pa.string(), count),
            _repeated(metadata["partition"], pa.string(), count),
        ],
        fields=list(_metadata_type()),
    )


def encode(
    echoed: dict[str, Any],
    outputs: dict[str, Any],
    records: int,
    time_ms: int,
    metadata: dict[str, Any],
    stream: bool,
) -> Any:
    """The answer table as an IPC buffer (``pyarrow.Buffer``, not copied into ``bytes``);
    columns that repeat one value per record are built by Arrow, not from a Python list
    per record (a batch of a million would hold the GIL for a second)."""
    pa = _pa()
    ins = pa.StructArray.from_arrays(
        [c.combine_chunks() for c in echoed.values()], names=list(echoed)
    )
    outs = pa.StructArray.from_arrays(
        [_arrow_column(v) for v in outputs.values()], names=list(outputs)
    )
    table = pa.table(
        {
            "time": _repeated(time_ms, pa.timestamp("ms"), records),
            "in": ins,
            "out": outs,
            "check_failures": _lists([], pa.string(), records),
            "metadata": _metadata(metadata, records),
        }
    )
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()
