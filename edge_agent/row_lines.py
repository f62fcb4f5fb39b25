"""Inference events' records as row lines, byte for byte what ``encode_line(RowLine(...))``
gives, without building a Struct per record.

The local log encodes every row once; this is its hot path. Consecutive events of one
pipeline version with the same tensor names in the same order and the same steps (one
request after another of the same model) are encoded as one run:

- each tensor's records over the whole run are encoded in one call and cut into cells:
  numbers hold no brackets, commas or quotes, so a column of numbers (or of flat lists of
  numbers) cuts at its top-level commas; the cut is checked by counting bytes, and a
  column it does not fit (strings, nesting) has each cell encoded on its own instead;
  numpy columns are written by orjson straight from the array (``enc_hook``), Python
  values (the pandas-records path echoes its inputs as lists) by msgspec;
- what records share (pipeline, version, tensor names, models) goes into one ``%``
  template, and each line body is one format of it with its time, cells and steps; the
  store prefixes its seq when it numbers it (``with_seqs``).

Whether a batch is one run is checked with C-level passes (``map`` over the events)
before any step per event. Requests answered with their inputs echoed as lists (the
pandas-records path) and numpy columns take the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

import msgspec
import numpy as np
import orjson

from .inference_log import InferenceEvent

_NUMERIC = frozenset("biuf")
T = TypeVar("T")
Run = tuple[str, list[bytes]]  # a pipeline and its records' line bodies


def enc_hook(obj: Any) -> Any:
    """numpy values as orjson writes them: a float32 as its shortest float32 decimal
    (``0.1``, not the float64 widening's ``0.10000000149011612``), in one pass in C; a
    dtype orjson does not write goes through ``tolist``."""
    if isinstance(obj, np.ndarray | np.generic):
        try:
            value = np.ascontiguousarray(obj) if isinstance(obj, np.ndarray) else obj
            return msgspec.Raw(orjson.dumps(value, option=_NUMPY))
        except orjson.JSONEncodeError:
            return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_json = msgspec.json.Encoder(enc_hook=enc_hook)
_pipeline = attrgetter("pipeline")
_version = attrgetter("pipeline_version")
_models = attrgetter("model_versions")
_steps = attrgetter("elapsed_ns")
_records = attrgetter("records")
_time = attrgetter("time")


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


def _numeric(columns: list[Any], counts: list[int], total: int) -> tuple[bytes, list[bytes]] | None:
    """The run's records of one tensor cut from one JSON array, when they are numeric
    arrays of one dtype and trailing shape whose lengths are the events' record counts
    and of one or two dimensions (the array's shape says how it cuts: no check needed).
    A column one wide (a model's single output) is written flat and cut at its commas."""
    first = columns[0]
    if not (
        type(first) is np.ndarray
        and first.dtype.kind in _NUMERIC
        and 1 <= first.ndim <= 2
        and list(map(type, columns)).count(np.ndarray) == len(columns)
        and list(map(len, columns)) == counts
    ):
        return None
    try:  # casting="no": a column of another dtype (or byte order) fails, not widens
        joined = first if len(columns) == 1 else np.concatenate(columns, casting="no")
    except (ValueError, TypeError):  # trailing shapes or dtypes differ
        return None
    if joined.ndim == 2 and joined.shape[1] <= 1:
        if joined.shape[1] == 0:
            return b"[%s]", [b""] * total
        return b"[%s]", _json.encode(joined.ravel())[1:-1].split(b",")
    encoded = _json.encode(joined)
    if joined.ndim == 1:
        return b"%s", encoded[1:-1].split(b",")
    return b"[%s]", encoded[2:-2].split(b"],[")


def _values(columns: list[Any], counts: list[int]) -> list[Any]:
    """The run's records of one tensor, in order (numpy items are encoded by ``enc_hook``)."""
    out: list[Any] = []
    for column, n in zip(columns, counts, strict=True):
        if isinstance(column, list) and len(column) == n:
            out.extend(column)
        else:
            out.extend(column[i] for i in range(n))
    return out


def _cut(encoded: bytes, n: int) -> tuple[bytes, list[bytes]] | None:
    """A JSON array of ``n`` values cut into their cells, and the slot a cell fills
    (``%s`` or ``[%s]``), where the bytes show it is safe: no quotes or braces, and
    scalars or flat lists; None otherwise."""
    inner = encoded[1:-1]
    if b'"' in inner or b"{" in inner:
        return None
    if b"[" not in inner:
        cells = inner.split(b",")
        return (b"%s", cells) if len(cells) == n else None
    if inner[:1] == b"[" and inner[-1:] == b"]":
        flat = inner[1:-1]
        if flat.count(b"[") == n - 1 == flat.count(b"]"):
            # n cells: the n - 1 cuts took every bracket (``[[1,2],3,4,[[5],[6]]]`` has as
            # many brackets but cuts once)
            cells = flat.split(b"],[")
            return (b"[%s]", cells) if len(cells) == n else None
    return None


def _column(columns: list[Any], counts: list[int], total: int) -> tuple[bytes, list[bytes]]:
    """One tensor's cells over the run: one encode of the whole column where it cuts,
    else one encode per record."""
    numeric = _numeric(columns, counts, total)
    if numeric is not None:
        return numeric
    values = _values(columns, counts)
    cut = _cut(_json.encode(values), total)
    return cut if cut is not None else (b"%s", list(map(_json.encode, values)))


def _literal(data: bytes) -> bytes:
    """``data`` inside a ``%`` template."""
    return data.replace(b"%", b"%%")


def _side(
    run: Sequence[InferenceEvent], side: str, counts: list[int], total: int
) -> tuple[bytes, list[list[bytes]]]:
    """A tensor map's part of the line template (``{"x":[%s],...}``) and each tensor's
    cells, record by record."""
    slots, cells = [], []
    maps = list(map(attrgetter(side), run))
    for name in maps[0]:
        slot, column = _column(list(map(itemgetter(name), maps)), counts, total)
        slots.append(_literal(_json.encode(str(name))) + b":" + slot)
        cells.append(column)
    return b"{" + b",".join(slots) + b"}", cells


def _run_bodies(run: Sequence[InferenceEvent]) -> list[bytes]:
    """The run's records as line bodies: each line without its ``{"seq":n``. One ``%``
    format per line fills the time, every tensor's cell and the steps."""
    first = run[0]
    counts = list(map(_records, run))
    total = sum(counts)
    ins, in_cells = _side(run, "inputs", counts, total)
    outs, out_cells = _side(run, "outputs", counts, total)
    models = b""
    if first.model_versions:
        models = b',"models":' + _json.encode(
            [[m.name, m.version, m.sha256] for m in first.model_versions]
        )
    tail = b',"anomaly":{"count":0}' + _literal(models) + b"}"
    steps: list[list[bytes]] = []
    if first.elapsed_ns:
        tail = b',"anomaly":{"count":0},"elapsed_ns":[%s]' + _literal(models) + b"}"
        steps = [_json.encode(list(map(_steps, run)))[2:-2].split(b"],[")]
    template = b',"time":%%d,"pipeline":%s,"pipeline_version":%s,"in":%s,"out":%s%s' % (
        _literal(_json.encode(first.pipeline)),
        _literal(_json.encode(first.pipeline_version)),
        ins,
        outs,
        tail,
    )
    times: list[Any] = list(map(_time, run))
    if total != len(run):  # requests of several records: what they share, per record
        times = _per_record(times, counts)
        steps = [_per_record(column, counts) for column in steps]
    return [template % row for row in zip(times, *in_cells, *out_cells, *steps, strict=True)]


def _per_record(values: list[T], counts: list[int]) -> list[T]:
    return list(itertools.chain.from_iterable(map(itertools.repeat, values, counts)))


def bodies_of(events: Sequence[InferenceEvent]) -> list[Run]:
    """``(pipeline, bodies)`` runs of the events' records, in order, before their seqs
    are known (``with_seqs`` numbers them as they are stored)."""
    runs: list[Run] = []
    start = 0
    while start < len(events):
        end = _run_end(events, start)
        run = events[start:end]
        if not all(map(_records, run)):  # requests of no records have no lines
            run = [e for e in run if e.records > 0]
        if run:
            runs.append((run[0].pipeline, _run_bodies(run)))
        start = end
    return runs


def with_seqs(bodies: Sequence[bytes], first_seq: int) -> list[bytes]:
    return [b'{"seq":%d%s' % pair for pair in zip(itertools.count(first_seq), bodies)]


def row_lines(event: InferenceEvent, first_seq: int) -> list[bytes]:
    """One event's records as lines with seqs ``first_seq``, ``first_seq + 1``, ..."""
    return with_seqs([b for _, bodies in bodies_of([event]) for b in bodies], first_seq)
