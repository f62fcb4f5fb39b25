"""Inference events' records as row lines, byte for byte what ``encode_line(RowLine(...))``
gives, without building a Struct per record.

The local log encodes every row once; this is its hot path. Consecutive events of one
pipeline version whose tensors are numeric arrays of the same names, dtypes and trailing
shapes (one request after another of the same model) are encoded as one group: each
column is concatenated, encoded in one call and cut at its top-level commas (numbers hold
no brackets or commas), and what records share (pipeline, version, models) is encoded
once. Anything else (strings, lists, other shapes) is encoded a record at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from .inference_log import InferenceEvent

_NUMERIC = frozenset("biuf")
Run = tuple[str, list[bytes]]  # a pipeline and its records' line bodies


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_json = msgspec.json.Encoder(enc_hook=_enc_hook)


def _fast(column: Any, records: int) -> bool:
    return (
        isinstance(column, np.ndarray)
        and column.dtype.kind in _NUMERIC
        and column.ndim in (1, 2)
        and len(column) == records
    )


def _cells(column: Any, records: int) -> list[bytes]:
    """Each record's value of ``column`` as JSON."""
    if _fast(column, records):
        if column.ndim == 1:
            return _json.encode(column.tolist())[1:-1].split(b",")
        parts = _json.encode(column.tolist())[2:-2].split(b"],[")
        return [b"[" + part + b"]" for part in parts]
    encode = _json.encode
    return [encode(column[i]) for i in range(records)]


def _objects(names: Sequence[str], columns: Sequence[Any], records: int) -> list[bytes]:
    """Per record ``{"name":value,...}``."""
    if not names:
        return [b"{}"] * records
    keys = [_json.encode(str(name)) + b":" for name in names]
    cells = [_cells(col, records) for col in columns]
    if len(keys) == 1:
        key = b"{" + keys[0]
        return [key + cell + b"}" for cell in cells[0]]
    return [
        b"{" + b",".join(k + c for k, c in zip(keys, row, strict=True)) + b"}"
        for row in zip(*cells, strict=True)
    ]


Spec = tuple[tuple[str, Any, tuple[int, ...]], ...]  # (name, dtype, trailing shape) per column


def _spec(columns: Mapping[str, Any], records: int) -> Spec | None:
    spec = []
    for name, col in columns.items():
        if not _fast(col, records):
            return None
        spec.append((name, col.dtype, col.shape[1:]))
    return tuple(spec)


def _matches(columns: Mapping[str, Any], spec: Spec, records: int) -> bool:
    """``columns`` are arrays like ``spec`` says, of ``records`` records (the hot check:
    identity first, equality only when it fails)."""
    if len(columns) != len(spec):
        return False
    for (name, dtype, trailing), (given, col) in zip(spec, columns.items(), strict=True):
        if given != name or type(col) is not np.ndarray or len(col) != records:
            return False
        if (col.dtype is not dtype and col.dtype != dtype) or col.shape[1:] != trailing:
            return False
    return True


def _same(event: InferenceEvent, first: InferenceEvent, ins: Spec, outs: Spec) -> bool:
    records = event.records
    return (
        records > 0
        and (event.pipeline is first.pipeline or event.pipeline == first.pipeline)
        and (
            event.pipeline_version is first.pipeline_version
            or event.pipeline_version == first.pipeline_version
        )
        and (
            event.model_versions is first.model_versions
            or event.model_versions == first.model_versions
        )
        and len(event.elapsed_ns) == len(first.elapsed_ns)
        and _matches(event.inputs, ins, records)
        and _matches(event.outputs, outs, records)
    )


def _group_end(events: Sequence[InferenceEvent], start: int) -> int:
    first = events[start]
    ins, outs = _spec(first.inputs, first.records), _spec(first.outputs, first.records)
    end = start + 1
    if ins is None or outs is None:
        return end
    while end < len(events) and _same(events[end], first, ins, outs):
        end += 1
    return end


def _column(group: Sequence[InferenceEvent], side: str, name: str) -> Any:
    cols = [getattr(e, side)[name] for e in group]
    return cols[0] if len(cols) == 1 else np.concatenate(cols)


def _group_bodies(group: Sequence[InferenceEvent]) -> list[bytes]:
    """The group's records as lines without their ``{"seq":n`` (``with_seqs`` adds it)."""
    first = group[0]
    total = sum(e.records for e in group)
    in_names, out_names = list(first.inputs), list(first.outputs)
    ins = _objects(in_names, [_column(group, "inputs", n) for n in in_names], total)
    outs = _objects(out_names, [_column(group, "outputs", n) for n in out_names], total)
    head = b',"pipeline":%s,"pipeline_version":%s,"in":' % (
        _json.encode(first.pipeline),
        _json.encode(first.pipeline_version),
    )
    models = b""
    if first.model_versions:
        models = b',"models":' + _json.encode(
            [[m.name, m.version, m.sha256] for m in first.model_versions]
        )
    bodies: list[bytes] = []
    record = 0
    for event in group:
        tail = b',"anomaly":{"count":0}'
        if event.elapsed_ns:
            tail += b',"elapsed_ns":' + _json.encode(list(event.elapsed_ns))
        tail += models + b"}"
        when = event.time
        for i in range(record, record + event.records):
            bodies.append(b',"time":%d%s%s,"out":%s%s' % (when, head, ins[i], outs[i], tail))
        record += event.records
    return bodies


def bodies_of(events: Sequence[InferenceEvent]) -> list[Run]:
    """``(pipeline, bodies)`` runs of the events' records, in order, before seqs are known."""
    runs: list[Run] = []
    start = 0
    while start < len(events):
        end = _group_end(events, start)
        group = events[start:end]
        bodies = _group_bodies(group)
        if bodies:
            runs.append((group[0].pipeline, bodies))
        start = end
    return runs


def with_seqs(bodies: Sequence[bytes], first_seq: int) -> list[bytes]:
    return [b'{"seq":%d%s' % (seq, body) for seq, body in enumerate(bodies, first_seq)]


def row_lines(event: InferenceEvent, first_seq: int) -> list[bytes]:
    """One event's records as lines with seqs ``first_seq``, ``first_seq + 1``, ..."""
    return with_seqs([b for _, bodies in bodies_of([event]) for b in bodies], first_seq)
