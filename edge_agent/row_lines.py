"""An ``InferenceEvent``'s records as row lines, byte for byte what
``encode_line(RowLine(...))`` gives, without building a Struct per record.

The local log encodes every row once; this is its hot path. What one event's records
share (time, pipeline, version, elapsed, models) is encoded once, and a numeric column of
a 1-D or 2-D array is encoded in one call and cut at its top-level commas (numbers hold no
brackets or commas), which is several times cheaper than a call per record.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from .inference_log import InferenceEvent

_NUMERIC = frozenset("biuf")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_json = msgspec.json.Encoder(enc_hook=_enc_hook)


def _cells(column: Any, records: int) -> list[bytes]:
    """Each record's value of ``column`` as JSON."""
    if isinstance(column, np.ndarray) and column.dtype.kind in _NUMERIC and len(column) == records:
        if column.ndim == 1:
            return _json.encode(column.tolist())[1:-1].split(b",")
        if column.ndim == 2:
            parts = _json.encode(column.tolist())[2:-2].split(b"],[")
            return [b"[" + part + b"]" for part in parts]
    encode = _json.encode
    return [encode(column[i]) for i in range(records)]


def _objects(columns: Any, records: int) -> list[bytes]:
    """Per record ``{"name":value,...}`` of a name -> column mapping."""
    if not columns:
        return [b"{}"] * records
    keys = [_json.encode(str(name)) + b":" for name in columns]
    cells = [_cells(col, records) for col in columns.values()]
    if len(keys) == 1:
        key = b"{" + keys[0]
        return [key + cell + b"}" for cell in cells[0]]
    return [
        b"{" + b",".join(k + c for k, c in zip(keys, row, strict=True)) + b"}"
        for row in zip(*cells, strict=True)
    ]


def row_lines(event: InferenceEvent, first_seq: int) -> list[bytes]:
    """The event's records as lines with seqs ``first_seq``, ``first_seq + 1``, ..."""
    n = event.records
    if n <= 0:
        return []
    head = b'%d,"time":%d,"pipeline":%s,"pipeline_version":%s,"in":' % (
        0,
        event.time,
        _json.encode(event.pipeline),
        _json.encode(event.pipeline_version),
    )
    head = head[1:]  # the seq goes in front, per line
    tail = b',"anomaly":{"count":0}'
    if event.elapsed_ns:
        tail += b',"elapsed_ns":' + _json.encode(list(event.elapsed_ns))
    if event.model_versions:
        tail += b',"models":' + _json.encode(
            [[m.name, m.version, m.sha256] for m in event.model_versions]
        )
    tail += b"}"
    ins = _objects(event.inputs, n)
    outs = _objects(event.outputs, n)
    return [
        b'{"seq":%d%s%s,"out":%s%s' % (seq, head, i, o, tail)
        for seq, i, o in zip(range(first_seq, first_seq + n), ins, outs, strict=True)
    ]
