"""Inference events' records as row lines, byte for byte what ``encode_line(RowLine(...))``
gives, without building a Struct per record.

The local log encodes every row once; this is its hot path. Consecutive events of one
pipeline version whose tensors are numeric arrays of the same names, dtypes and trailing
shapes (one request after another of the same model) are encoded as one run: each
column is concatenated, encoded in one call and cut at its top-level commas (numbers hold
no brackets or commas), what records share (pipeline, version, models) is encoded once,
and each line is one ``%`` format with its seq. Whether a whole batch is one run is
checked with C-level passes (``map`` over the events) before any per-event step.
Anything else (strings, lists, other shapes) is grouped where it can and encoded a record
at a time where it cannot.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, TypeVar

import msgspec
import numpy as np

from .inference_log import InferenceEvent

_NUMERIC = frozenset("biuf")
T = TypeVar("T")
Run = tuple[str, list[bytes]]  # a pipeline and its records' lines


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


_pipeline = attrgetter("pipeline")
_version = attrgetter("pipeline_version")
_models = attrgetter("model_versions")
_steps = attrgetter("elapsed_ns")
_records = attrgetter("records")
_dtype = attrgetter("dtype")


def _all_same(values: list[Any]) -> bool:
    return values.count(values[0]) == len(values)


def _alike(events: Sequence[InferenceEvent]) -> bool:
    """Every event shares the first's pipeline, version, models, step count and tensor
    names in order (one pass in C per property, no step per event in Python)."""
    return (
        _all_same(list(map(_pipeline, events)))
        and _all_same(list(map(_version, events)))
        and _all_same(list(map(_models, events)))
        and _all_same(list(map(len, map(_steps, events))))
        and _all_same(list(map(tuple, map(attrgetter("inputs"), events))))
        and _all_same(list(map(tuple, map(attrgetter("outputs"), events))))
    )


def _run_end(events: Sequence[InferenceEvent], start: int) -> int:
    """The end of the run of events from ``start`` that ``_alike`` would pass."""
    if _alike(events[start:]):
        return len(events)
    end = start + 1
    while end < len(events) and _alike([events[start], events[end]]):
        end += 1
    return end


def _run_column(columns: list[Any], counts: list[int]) -> Any:
    """The run's column as one array, or None when it is not numeric arrays of one dtype
    and trailing shape whose lengths are the events' record counts."""
    first = columns[0]
    if type(first) is not np.ndarray or first.dtype.kind not in _NUMERIC or first.ndim > 2:
        return None
    if set(map(type, columns)) != {np.ndarray} or not _all_same(list(map(_dtype, columns))):
        return None
    if list(map(len, columns)) != counts:
        return None
    if len(columns) == 1:
        return first
    try:
        return np.concatenate(columns)  # trailing shapes that differ raise
    except ValueError:
        return None


def _literal(data: bytes) -> bytes:
    """``data`` inside a ``%`` template."""
    return data.replace(b"%", b"%%")


def _side(names: list[str], columns: list[Any]) -> tuple[bytes, list[list[bytes]]]:
    """A tensor map's part of the line template (``{"x":[%s],...}``) and each column's
    per-record cells, cut from one encode of the column."""
    slots, cells = [], []
    for name, column in zip(names, columns, strict=True):
        key = _literal(_json.encode(str(name)))
        if column.ndim == 1:
            slots.append(key + b":%s")
            cells.append(_json.encode(column.tolist())[1:-1].split(b","))
        else:
            slots.append(key + b":[%s]")
            cells.append(_json.encode(column.tolist())[2:-2].split(b"],["))
    return b"{" + b",".join(slots) + b"}", cells


def _run_lines(run: Sequence[InferenceEvent], first_seq: int) -> list[bytes] | None:
    """The run's records as lines from ``first_seq``: each column encoded in one call,
    each step list in one, each line one ``%`` format of a template the run shares; None
    when a column is not numeric arrays alike."""
    first = run[0]
    counts = list(map(_records, run))
    total = sum(counts)
    parts, cells = [], []
    for side in ("inputs", "outputs"):
        names = list(getattr(first, side))
        columns = []
        for name in names:
            column = _run_column([getattr(e, side)[name] for e in run], counts)
            if column is None:
                return None
            columns.append(column)
        part, side_cells = _side(names, columns)
        parts.append(part)
        cells.extend(side_cells)
    template = b'{"seq":%%d,"time":%%d,"pipeline":%s,"pipeline_version":%s,"in":%s,"out":%s%%s' % (
        _literal(_json.encode(first.pipeline)),
        _literal(_json.encode(first.pipeline_version)),
        parts[0],
        parts[1],
    )
    models = b""
    if first.model_versions:
        models = b',"models":' + _json.encode(
            [[m.name, m.version, m.sha256] for m in first.model_versions]
        )
    if first.elapsed_ns:
        steps = _json.encode(list(map(_steps, run)))[2:-2].split(b"],[")
        tail = b',"anomaly":{"count":0},"elapsed_ns":[%s]' + _literal(models) + b"}"
        tails = [tail % step for step in steps]
    else:
        tails = [b',"anomaly":{"count":0}%s}' % models] * len(run)
    times: Iterable[int] = map(attrgetter("time"), run)
    if total != len(run):  # requests of several records: what they share, per record
        times = _per_record(list(times), counts)
        tails = _per_record(tails, counts)
    rows = zip(itertools.count(first_seq), times, *cells, tails)
    return [template % row for row in rows]


def _per_record(values: list[T], counts: list[int]) -> list[T]:
    return list(itertools.chain.from_iterable(map(itertools.repeat, values, counts)))


def lines_of(events: Sequence[InferenceEvent], first_seq: int) -> list[Run]:
    """``(pipeline, lines)`` runs of the events' records, in order, numbered from
    ``first_seq``. A run of like events is encoded at once; a run that is not goes
    through the general path, which groups what it can."""
    runs: list[Run] = []
    start, seq = 0, first_seq
    while start < len(events):
        end = _run_end(events, start)
        run = events[start:end]
        lines = _run_lines(run, seq) if all(map(_records, run)) else None
        if lines is None:
            lines = with_seqs(_general(run), seq)
        if lines:
            runs.append((run[0].pipeline, lines))
            seq += len(lines)
        start = end
    return runs


def _general(events: Sequence[InferenceEvent]) -> list[bytes]:
    bodies: list[bytes] = []
    start = 0
    while start < len(events):
        end = _group_end(events, start)
        bodies.extend(_group_bodies(events[start:end]))
        start = end
    return bodies


def with_seqs(bodies: Sequence[bytes], first_seq: int) -> list[bytes]:
    return [b'{"seq":%d%s' % (seq, body) for seq, body in enumerate(bodies, first_seq)]


def row_lines(event: InferenceEvent, first_seq: int) -> list[bytes]:
    """One event's records as lines with seqs ``first_seq``, ``first_seq + 1``, ..."""
    return [line for _, lines in lines_of([event], first_seq) for line in lines]
