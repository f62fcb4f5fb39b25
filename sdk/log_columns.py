"""Rows of the pipeline log as columns, without the bus: which columns a ``logs()`` call
wants (Wallaroo's ``dataset``/``dataset_exclude``/``dataset_separator``), rows built into
Arrow tables a batch at a time, and the newest ``limit`` rows held in a bounded heap.

Columns: ``time`` (timestamp[ms, UTC]), ``in.<field>``, ``out.<field>``,
``anomaly.<key>`` (``anomaly.count``), and with ``"metadata"`` in ``dataset``:
``metadata.last_model`` (JSON ``{"model_name", "model_sha"}`` of the last step),
``metadata.pipeline_version``, ``metadata.elapsed`` (ns per step), ``metadata.dropped``
and ``metadata.partition`` (the edge). Rows from before and after a replace that changed
the inputs or outputs share one table: a field a row lacks is null.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import pyarrow as pa

from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.log_lines import RowLine

GROUPS = ("time", "in", "out", "anomaly", "metadata")
DEFAULT_DATASET = ("time", "in", "out", "anomaly")  # Wallaroo's "*": metadata only on request
METADATA = ("last_model", "pipeline_version", "elapsed", "dropped", "partition")
BATCH_ROWS = 4096  # rows held as Python objects before they become one Arrow table
ORDER = "__order"  # the row's place in the stream: newest first among equal times
TIME = pa.timestamp("ms", tz="UTC")
_LINE_BITS = 20  # a page holds fewer than 2**20 lines


def order_of(stream_seq: int, line_index: int) -> int:
    return (stream_seq << _LINE_BITS) | line_index


class Selection(msgspec.Struct, frozen=True):
    """Each item names a group (``"out"``) or one column (``"out.variable"``)."""

    include: tuple[str, ...] = DEFAULT_DATASET
    exclude: tuple[str, ...] = ()
    separator: str = "."

    def wants(self, column: str) -> bool:
        return any(_covers(i, column) for i in self.include) and not any(
            _covers(e, column) for e in self.exclude
        )

    def wants_group(self, group: str) -> bool:
        """Whether any column of ``group`` may be wanted (metadata is built only then)."""
        return any(_covers(i, group) or i.startswith(group + ".") for i in self.include)

    def name(self, column: str) -> str:
        group, dot, field = column.partition(".")
        return f"{group}{self.separator}{field}" if dot else column


def _covers(item: str, column: str) -> bool:
    return column == item or column.startswith(item + ".")


def selection(
    dataset: Sequence[str] | str | None = None,
    dataset_exclude: Sequence[str] | str | None = None,
    dataset_separator: str | None = None,
) -> Selection:
    include = _items("dataset", dataset)
    expanded = tuple(g for i in include for g in (DEFAULT_DATASET if i == "*" else (i,)))
    separator = "." if dataset_separator is None else dataset_separator
    if not isinstance(separator, str) or not separator:
        raise InvalidRequestError(f"dataset_separator takes a non-empty string, not {separator!r}")
    return Selection(
        expanded or DEFAULT_DATASET, _items("dataset_exclude", dataset_exclude), separator
    )


def _items(what: str, value: Sequence[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise InvalidRequestError(
                f"{what} takes column groups {list(GROUPS)} or column names such as "
                f"'out.variable', not {item!r}"
            )
    return items


Entry = tuple[RowLine, str, int]  # a row, its partition (the edge) and its order


class TableBuilder:
    """Rows in any order in, one Arrow table out (newest first); at most BATCH_ROWS rows are
    held as Python objects at a time."""

    def __init__(self, sel: Selection, batch_rows: int = BATCH_ROWS) -> None:
        self.sel = sel
        self.batch_rows = batch_rows
        self._pending: list[Entry] = []
        self._tables: list[pa.Table] = []
        self.rows = 0

    def add(self, row: RowLine, partition: str, order: int) -> None:
        self._pending.append((row, partition, order))
        self.rows += 1
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._tables.append(batch_table(self._pending, self.sel))
            self._pending = []

    def finish(self) -> pa.Table:
        self._flush()
        if not self._tables:
            return _finish(
                pa.table({"time": pa.array([], TIME), ORDER: pa.array([], pa.int64())}), self.sel
            )
        table = concat(self._tables)
        self._tables = []
        return _finish(table, self.sel)


class Newest:
    """The newest ``limit`` rows seen (by time, then stream order), and how many were seen."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self._heap: list[tuple[int, int, RowLine, str]] = []

    def add(self, row: RowLine, partition: str, order: int) -> None:
        self.seen += 1
        item = (row.time, order, row, partition)
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, item)
        elif (row.time, order) > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def kth_newest_ms(self) -> int | None:
        """The time of the oldest row held, once ``limit`` are held."""
        return self._heap[0][0] if len(self._heap) >= self.limit else None

    def entries(self) -> Iterable[Entry]:
        return ((row, partition, order) for _, order, row, partition in self._heap)


def batch_table(entries: Sequence[Entry], sel: Selection) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "time": pa.array([r.time for r, _, _ in entries], TIME),
        ORDER: pa.array([o for _, _, o in entries], pa.int64()),
    }
    for group, get in (("in", _in), ("out", _out), ("anomaly", _anomaly)):
        for field in _fields(get(r) for r, _, _ in entries):
            name = f"{group}.{field}"
            if sel.wants(name):
                columns[name] = _array([get(r).get(field) for r, _, _ in entries])
    if sel.wants_group("metadata"):
        for field in METADATA:
            name = f"metadata.{field}"
            if sel.wants(name):
                columns[name] = _metadata(field, entries)
    return pa.table(columns)


def _in(row: RowLine) -> dict[str, Any]:
    return row.in_


def _out(row: RowLine) -> dict[str, Any]:
    return row.out


def _anomaly(row: RowLine) -> dict[str, Any]:
    return row.anomaly


def _fields(dicts: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for d in dicts for k in d))


def _array(values: list[Any]) -> pa.Array:
    """Arrow infers the type; values no one type holds (a list here, a number there) are
    kept as their JSON text rather than failing the read."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return _json_array(values)


def _json_array(values: Iterable[Any]) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


_json = msgspec.json.Encoder()


def _metadata(field: str, entries: Sequence[Entry]) -> pa.Array:
    rows = [r for r, _, _ in entries]
    if field == "last_model":
        return pa.array([_last_model(r) for r in rows], pa.string())
    if field == "pipeline_version":
        return pa.array([r.pipeline_version for r in rows], pa.string())
    if field == "elapsed":
        return pa.array([list(r.elapsed_ns) for r in rows], pa.list_(pa.int64()))
    if field == "dropped":  # steps that dropped the row: an edge logs none
        return pa.array([[] for _ in rows], pa.list_(pa.string()))
    return pa.array([p for _, p, _ in entries], pa.string())


def _last_model(row: RowLine) -> str | None:
    if not row.models:
        return None
    name, _version, sha = row.models[-1]
    return _json.encode({"model_name": name, "model_sha": sha}).decode()


def concat(tables: list[pa.Table]) -> pa.Table:
    """One table from batches whose columns differ (a replace changed the schema): missing
    columns are null, numbers widen; a column of conflicting types becomes JSON text."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    types: dict[str, set[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            if not pa.types.is_null(f.type):
                types.setdefault(f.name, set()).add(f.type)
    mixed = {name for name, ts in types.items() if len(ts) > 1}
    fixed = []
    for t in tables:
        for name in mixed & set(t.column_names):
            i = t.schema.get_field_index(name)
            t = t.set_column(i, name, _json_array(t.column(name).to_pylist()))
        fixed.append(t)
    return pa.concat_tables(fixed, promote_options="permissive")


def _finish(table: pa.Table, sel: Selection) -> pa.Table:
    """Newest first; columns in group order, named with the separator."""
    table = table.sort_by([("time", "descending"), (ORDER, "descending")])
    names = [n for n in table.column_names if n != ORDER and sel.wants(n)]
    rank = {g: i for i, g in enumerate(GROUPS)}
    names.sort(key=lambda n: rank.get(n.partition(".")[0], len(GROUPS)))
    table = table.select(names)
    return table.rename_columns([sel.name(n) for n in names])
