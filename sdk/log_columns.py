"""Rows of the pipeline log as columns, without the bus: which columns a ``logs()`` call
wants (Wallaroo's ``dataset``/``dataset_exclude``/``dataset_separator``), and the rows a
read keeps, held as Arrow tables: every row of a window (``TableBuilder``), or only the
newest ``limit`` (``Newest``, trimmed as it goes). Pages arrive as Arrow tables
(``log_pages``); rows that are Python objects (a page read line by line) are held at most
BATCH_ROWS at a time before they become one.

Columns: ``time`` (timestamp[ms, UTC]), ``in.<field>``, ``out.<field>``,
``anomaly.<key>`` (``anomaly.count``), and with ``"metadata"`` in ``dataset``:
``metadata.last_model`` (JSON ``{"model_name", "model_sha"}`` of the last step),
``metadata.pipeline_version``, ``metadata.elapsed`` (ns per step), ``metadata.dropped``
and ``metadata.partition`` (the edge). Rows from before and after a replace that changed
the inputs or outputs share one table: a field a row lacks is null.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.log_lines import RowLine

GROUPS = ("time", "in", "out", "anomaly", "metadata")
DEFAULT_DATASET = ("time", "in", "out", "anomaly")  # Wallaroo's "*": metadata only on request
METADATA = ("last_model", "pipeline_version", "elapsed", "dropped", "partition")
BATCH_ROWS = 4096  # rows held as Python objects before they become one Arrow table
ORDER = "__order"  # the row's place in the stream: newest first among equal times
TIME = pa.timestamp("ms", tz="UTC")
_LINE_BITS = 20
LINE_LIMIT = 1 << _LINE_BITS  # a page holds fewer lines than this
# A column made JSON text (its values had no one type) is marked, so that joining it again
# with another batch encodes only that batch's values, never the text twice.
_JSON_TEXT = {b"edgepub.values": b"json"}


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


class _Held:
    """Arrow tables of rows, and Python rows waiting to become one (at most batch_rows)."""

    def __init__(self, sel: Selection, batch_rows: int) -> None:
        self.sel = sel
        self.batch_rows = batch_rows
        self._pending: list[Entry] = []
        self._tables: list[pa.Table] = []
        self._held = 0  # rows in _tables

    def _hold_row(self, entry: Entry) -> None:
        self._pending.append(entry)
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def _hold(self, table: pa.Table) -> None:
        if table.num_rows:
            self._tables.append(table)
            self._held += table.num_rows

    def _flush(self) -> None:
        if self._pending:
            table = batch_table(self._pending, self.sel)
            self._pending = []
            self._hold(table)

    def _joined(self) -> pa.Table:
        self._flush()
        if not self._tables:
            return pa.table({"time": pa.array([], TIME), ORDER: pa.array([], pa.int64())})
        table = concat(self._tables) if len(self._tables) > 1 else self._tables[0]
        self._tables = [table]
        return table


class TableBuilder(_Held):
    """Every row added, in any order, as one Arrow table (newest first)."""

    def __init__(self, sel: Selection, batch_rows: int = BATCH_ROWS) -> None:
        super().__init__(sel, batch_rows)
        self.rows = 0

    def add(self, row: RowLine, partition: str, order: int) -> None:
        self.rows += 1
        self._hold_row((row, partition, order))

    def add_table(self, table: pa.Table) -> None:
        """Rows in ``log_pages``' columns (``time``, ORDER, then the selected ones)."""
        self.rows += table.num_rows
        self._hold(table)

    def finish(self) -> pa.Table:
        table = self._joined()
        self._tables = []
        return _finish(table, self.sel)


class Newest(_Held):
    """The newest ``limit`` rows added (by time, then stream order), and how many were
    added (``seen``). Rows are held as Arrow tables and trimmed to the newest ``limit``
    whenever half as many again (at least BATCH_ROWS) are held on top, so at most about
    1.5 x ``limit`` rows are held however many pass through; once ``limit`` are held, a
    row older than all of them is dropped as it arrives."""

    def __init__(
        self, limit: int, sel: Selection | None = None, batch_rows: int = BATCH_ROWS
    ) -> None:
        super().__init__(sel or Selection(), batch_rows)
        self.limit = limit
        self.seen = 0
        self._slack = max(limit // 2, batch_rows)
        self._kth: tuple[int, int] | None = None  # (time ms, order) of the limit-th newest

    def add(self, row: RowLine, partition: str, order: int) -> None:
        self.seen += 1
        if self._kth is None or (row.time, order) > self._kth:
            self._hold_row((row, partition, order))
            self._trim_when_full()

    def add_table(self, table: pa.Table) -> None:
        """Rows in ``log_pages``' columns (``time``, ORDER, then the selected ones)."""
        self.seen += table.num_rows
        if self._kth is not None and table.num_rows:
            table = table.filter(_newer_than(table, *self._kth))
        self._hold(table)
        self._trim_when_full()

    def _trim_when_full(self) -> None:
        if self._held + len(self._pending) > self.limit + self._slack:
            self._trim()

    def _trim(self) -> None:
        table = self._joined()
        if table.num_rows >= self.limit:
            keys = [("time", "descending"), (ORDER, "descending")]
            table = table.take(pc.select_k_unstable(table, k=self.limit, sort_keys=keys))
            kth = table.slice(self.limit - 1, 1)
            self._kth = (
                kth.column("time").cast(pa.int64())[0].as_py(),
                kth.column(ORDER)[0].as_py(),
            )
        self._tables, self._held = [table], table.num_rows

    def kth_newest_ms(self) -> int | None:
        """The time of the oldest row held, once ``limit`` are held."""
        self._trim()
        return None if self._kth is None else self._kth[0]

    def finish(self) -> pa.Table:
        self._trim()
        table = self._joined()
        self._tables = []
        return _finish(table, self.sel)


def _newer_than(table: pa.Table, time_ms: int, order: int) -> pa.Array:
    time = table.column("time")
    at = pa.scalar(time_ms, TIME)
    return pc.or_(
        pc.greater(time, at),
        pc.and_(pc.equal(time, at), pc.greater(table.column(ORDER), pa.scalar(order, pa.int64()))),
    )


def batch_table(entries: Sequence[Entry], sel: Selection) -> pa.Table:
    """Rows that are Python objects (a page read line by line) as one table."""
    fields = [pa.field("time", TIME), pa.field(ORDER, pa.int64())]
    arrays: list[pa.Array] = [
        pa.array([r.time for r, _, _ in entries], TIME),
        pa.array([o for _, _, o in entries], pa.int64()),
    ]
    for group, get in (("in", _in), ("out", _out), ("anomaly", _anomaly)):
        for field in _fields(get(r) for r, _, _ in entries):
            name = f"{group}.{field}"
            if sel.wants(name):
                values, as_json = _array([get(r).get(field) for r, _, _ in entries])
                fields.append(_json_field(name) if as_json else pa.field(name, values.type))
                arrays.append(values)
    if sel.wants_group("metadata"):
        for field in METADATA:
            name = f"metadata.{field}"
            if sel.wants(name):
                values = _metadata(field, entries)
                fields.append(pa.field(name, values.type))
                arrays.append(values)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _in(row: RowLine) -> dict[str, Any]:
    return row.in_


def _out(row: RowLine) -> dict[str, Any]:
    return row.out


def _anomaly(row: RowLine) -> dict[str, Any]:
    return row.anomaly


def _fields(dicts: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for d in dicts for k in d))


def _array(values: list[Any]) -> tuple[pa.Array, bool]:
    """Arrow infers the type; values no one type holds (a list here, a number there) are
    kept as their JSON text rather than failing the read (True: JSON text)."""
    try:
        return pa.array(values), False
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return _json_array(values), True


def _json_array(values: Iterable[Any]) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())


def _json_field(name: str) -> pa.Field:
    return pa.field(name, pa.string(), metadata=_JSON_TEXT)


def _is_json(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"edgepub.values") == b"json"


def empty_lists(n: int, kind: pa.DataType) -> pa.Array:
    """``n`` empty lists of ``kind`` (no Python object per row)."""
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], kind))


_json = msgspec.json.Encoder()


def last_model_text(name: str, sha: str) -> str:
    return _json.encode({"model_name": name, "model_sha": sha}).decode()


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
    return last_model_text(name, sha)


def concat(tables: list[pa.Table]) -> pa.Table:
    """One table from batches whose columns differ (a replace changed the schema): missing
    columns are null, numbers widen; a column of conflicting types becomes JSON text (in
    every batch: a column one batch holds as JSON text is JSON text in all)."""
    as_json = {f.name for t in tables for f in t.schema if _is_json(f)}
    tables = [_encoded(t, as_json) for t in tables]
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
    return pa.concat_tables([_encoded(t, mixed) for t in tables], promote_options="permissive")


def _encoded(table: pa.Table, names: set[str]) -> pa.Table:
    """``table`` with the columns ``names`` as JSON text (those that are not already)."""
    for name in names & set(table.column_names):
        i = table.schema.get_field_index(name)
        if not _is_json(table.schema.field(i)):
            values = _json_array(table.column(name).to_pylist())
            table = table.set_column(i, _json_field(name), values)
    return table


def _finish(table: pa.Table, sel: Selection) -> pa.Table:
    """Newest first; columns in group order, named with the separator."""
    table = table.sort_by([("time", "descending"), (ORDER, "descending")])
    names = [n for n in table.column_names if n != ORDER and sel.wants(n)]
    rank = {g: i for i, g in enumerate(GROUPS)}
    names.sort(key=lambda n: rank.get(n.partition(".")[0], len(GROUPS)))
    return pa.Table.from_arrays(  # fields without the JSON-text marks
        [table.column(n) for n in names], names=[sel.name(n) for n in names]
    )
