"""Inference events' records as row lines, byte for byte what ``encode_line(RowLine(...))``
gives, without building a Struct per record.

The local log encodes every row once; this is its hot path. Consecutive events of one
pipeline version with the same tensor names in the same order and the same steps (one
request after another of the same model) are encoded as one run:

- each tensor's records over the whole run are encoded in one call and cut into cells:
  numbers hold no brackets, commas or quotes, so a column of numbers (or of flat lists of
  numbers) cuts at its top-level commas; the cut is checked by counting bytes, and a
  column it does not fit (strings, nesting) has each cell encoded on its own instead;
- what records share (pipeline, version, tensor names, models) goes into one ``%``
  template, and each line is one format of it with its seq, time, cells and steps.

Whether a batch is one run is checked with C-level passes (``map`` over the events)
before any step per event. Requests answered with their inputs echoed as lists (the
pandas-records path) and numpy columns take the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
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
_pipeline = attrgetter("pipeline")
_version = attrgetter("pipeline_version")
_models = attrgetter("model_versions")
_steps = attrgetter("elapsed_ns")
_records = attrgetter("records")
_time = attrgetter("time")
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


def _item(value: Any, index: int) -> Any:
    item = value[index]
    return item.tolist() if isinstance(item, np.ndarray | np.generic) else item


def _values(columns: list[Any], counts: list[int]) -> list[Any]:
    """The run's records of one tensor as plain values, in order (what ``rows_of`` puts
    in each record): numeric arrays of one dtype and trailing shape in one conversion."""
    first = columns[0]
    if (
        type(first) is np.ndarray
        and first.dtype.kind in _NUMERIC
        and set(map(type, columns)) == {np.ndarray}
        and _all_same(list(map(_dtype, columns)))
        and list(map(len, columns)) == counts
    ):
        try:
            joined = first if len(columns) == 1 else np.concatenate(columns)
            return list(joined.tolist())
        except ValueError:  # trailing shapes differ
            pass
    out: list[Any] = []
    for column, n in zip(columns, counts, strict=True):
        if isinstance(column, list) and len(column) == n:
            out.extend(column)
        else:
            out.extend(_item(column, i) for i in range(n))
    return out


def _cells(values: list[Any]) -> tuple[bytes, list[bytes]]:
    """Each value as JSON, and the slot its cell fills (``%s`` or ``[%s]``): one encode
    of the whole column cut at its top-level commas where the bytes show that is safe
    (no quotes or braces; scalars, or flat lists), else one encode per value."""
    encoded = _json.encode(values)
    inner = encoded[1:-1]
    n = len(values)
    if b'"' not in inner and b"{" not in inner:
        if b"[" not in inner:
            cells = inner.split(b",")
            if len(cells) == n:
                return b"%s", cells
        elif inner[:1] == b"[" and inner[-1:] == b"]":
            flat = inner[1:-1]
            if flat.count(b"[") == n - 1 == flat.count(b"]"):
                return b"[%s]", flat.split(b"],[")
    return b"%s", list(map(_json.encode, values))


def _literal(data: bytes) -> bytes:
    """``data`` inside a ``%`` template."""
    return data.replace(b"%", b"%%")


def _side(
    run: Sequence[InferenceEvent], side: str, counts: list[int]
) -> tuple[bytes, list[list[bytes]]]:
    """A tensor map's part of the line template (``{"x":[%s],...}``) and each tensor's
    cells, record by record."""
    slots, cells = [], []
    for name in getattr(run[0], side):
        slot, column = _cells(_values([getattr(e, side)[name] for e in run], counts))
        slots.append(_literal(_json.encode(str(name))) + b":" + slot)
        cells.append(column)
    return b"{" + b",".join(slots) + b"}", cells


def _run_lines(run: Sequence[InferenceEvent], first_seq: int) -> list[bytes]:
    """The run's records as lines numbered from ``first_seq``."""
    first = run[0]
    counts = list(map(_records, run))
    ins, in_cells = _side(run, "inputs", counts)
    outs, out_cells = _side(run, "outputs", counts)
    template = b'{"seq":%%d,"time":%%d,"pipeline":%s,"pipeline_version":%s,"in":%s,"out":%s%%s' % (
        _literal(_json.encode(first.pipeline)),
        _literal(_json.encode(first.pipeline_version)),
        ins,
        outs,
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
    times: Iterable[int] = map(_time, run)
    if sum(counts) != len(run):  # requests of several records: what they share, per record
        times = _per_record(list(times), counts)
        tails = _per_record(tails, counts)
    rows = zip(itertools.count(first_seq), times, *in_cells, *out_cells, tails)
    return [template % row for row in rows]


def _per_record(values: list[T], counts: list[int]) -> list[T]:
    return list(itertools.chain.from_iterable(map(itertools.repeat, values, counts)))


def lines_of(events: Sequence[InferenceEvent], first_seq: int) -> list[Run]:
    """``(pipeline, lines)`` runs of the events' records, in order, numbered from
    ``first_seq``."""
    runs: list[Run] = []
    start, seq = 0, first_seq
    while start < len(events):
        end = _run_end(events, start)
        run = events[start:end]
        if not all(map(_records, run)):  # requests of no records have no lines
            run = [e for e in run if e.records > 0]
        if run:
            lines = _run_lines(run, seq)
            runs.append((run[0].pipeline, lines))
            seq += len(lines)
        start = end
    return runs


def row_lines(event: InferenceEvent, first_seq: int) -> list[bytes]:
    """One event's records as lines with seqs ``first_seq``, ``first_seq + 1``, ..."""
    return [line for _, lines in lines_of([event], first_seq) for line in lines]
