"""One message of the pipeline log as the rows a read keeps, without the bus.

A page is NDJSON (``shared/log_lines.py``). Arrow's JSON reader takes the whole page in one
C++ pass, so a row is never a Python object: the page is cut to the rows a window holds and
shaped into the columns ``log_columns`` names (``time``, ``in.*``, ``out.*``,
``anomaly.*``, ``metadata.*``). A page that reader cannot take whole (a line that is not
JSON, a field that is a list in one row and text in the next, a row without a required
field) is read line by line instead: a line that does not decode is skipped and logged,
and the others become the same columns (a field of conflicting types as JSON text).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import structlog

from edgepub.shared import subjects
from edgepub.shared.log_lines import GapLine, RowLine, decode_line, split_lines

from .log_columns import (
    LINE_LIMIT,
    METADATA,
    ORDER,
    TIME,
    Selection,
    batch_table,
    empty_lists,
    last_model_text,
    order_of,
)
from .log_window import Window

log = structlog.get_logger("edgepub.sdk")

# A row line must carry these (shared.log_lines.RowLine); a gap line carries "gap".
ROW_FIELDS = {
    "seq": pa.int64(),
    "time": pa.int64(),
    "pipeline": pa.string(),
    "pipeline_version": pa.string(),
}
GROUP_FIELDS = ("in", "out")  # objects every row has
LINE = "__line"
# Arrow refusing the page (or a line shaped like nothing the reader expects): the page is
# then read line by line, which says which line and why.
_ARROW_ERRORS = (pa.ArrowException, KeyError, TypeError, ValueError)


class Page(msgspec.Struct, frozen=True):
    """A page's rows as Python objects (``edgepub logs tail`` prints them one by one)."""

    seq: int  # stream sequence
    ts_ms: int  # when the server appended it
    partition: str
    rows: list[tuple[int, RowLine]]  # (line index, row)
    gap_rows: int


@dataclass(frozen=True)
class PageRows:
    """The rows of a page a read keeps, as columns (None when it keeps none)."""

    table: pa.Table | None
    gap_rows: int  # rows the page's gap lines count as lost at the edge

    @property
    def rows(self) -> int:
        return 0 if self.table is None else int(self.table.num_rows)


def partition_of(msg: Any) -> str:
    headers = msg.headers or {}
    return str(headers.get(subjects.HEADER_PARTITION) or msg.subject.rsplit(".", 1)[-1])


def page_of(msg: Any, seq: int, ts: datetime) -> Page:
    """A pipeline log message's rows; a line that does not decode is skipped and logged
    (the collector forwards pages without decoding them)."""
    rows: list[tuple[int, RowLine]] = []
    gaps = 0
    for i, line in enumerate(split_lines(msg.data or b"")):
        try:
            decoded = decode_line(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.warning("log_line_unreadable", seq=seq, line=i, error=str(exc))
            continue
        if isinstance(decoded, GapLine):
            gaps += decoded.gap.count
        else:
            rows.append((i, decoded))
    return Page(seq, int(ts.timestamp() * 1000), partition_of(msg), rows, gaps)


def page_rows(msg: Any, seq: int, ts: datetime, sel: Selection, w: Window | None) -> PageRows:
    """The rows of the page with ``w.start_ms <= time < w.end_ms`` (every row without a
    window), in ``log_columns``' columns, and the rows its gap lines count."""
    raw = _parse(msg.data or b"")
    if raw is not None:
        try:
            got = _columns(raw, seq, partition_of(msg), sel, w)
        except _ARROW_ERRORS:
            got = None
        if got is not None:
            return got
    log.debug("log_page_read_by_lines", seq=seq, parsed=raw is not None)
    page = page_of(msg, seq, ts)
    held = [
        (row, page.partition, order_of(seq, i))
        for i, row in page.rows
        if w is None or w.holds(row.time)
    ]
    return PageRows(batch_table(held, sel) if held else None, page.gap_rows)


def _parse(body: bytes) -> pa.Table | None:
    """The page as one Arrow table (one block: one schema for the page), or None."""
    if not body.strip():
        return None
    options = pj.ReadOptions(use_threads=False, block_size=len(body) + 1)
    try:
        return pj.read_json(pa.BufferReader(body), read_options=options)
    except _ARROW_ERRORS:
        return None


def _columns(
    raw: pa.Table, seq: int, partition: str, sel: Selection, w: Window | None
) -> PageRows | None:
    """None when a line is not a well-formed row or gap line (the caller then reads the
    page line by line, which says which line and why)."""
    if raw.num_rows >= LINE_LIMIT or LINE in raw.column_names:
        return None
    raw = raw.combine_chunks().append_column(LINE, pa.array(np.arange(raw.num_rows)))
    gap_rows, is_gap = _gaps(raw)
    if gap_rows is None:
        return None
    rows = raw.filter(pc.invert(is_gap)) if is_gap is not None else raw
    if rows.num_rows == 0:
        return PageRows(None, gap_rows)
    if not _well_formed(rows):
        return None
    if w is not None:
        time = rows.column("time")
        held = pc.and_(
            pc.greater_equal(time, pa.scalar(w.start_ms, pa.int64())),
            pc.less(time, pa.scalar(w.end_ms, pa.int64())),
        )
        rows = rows.filter(held)
        if rows.num_rows == 0:
            return PageRows(None, gap_rows)
    columns = _shape(rows, seq, partition, sel)
    return None if columns is None else PageRows(pa.table(columns), gap_rows)


def _gaps(raw: pa.Table) -> tuple[int | None, pa.Array | None]:
    """Rows the gap lines count, and which lines are gap lines (None: no gap line);
    (None, None) when a gap line has no count."""
    if "gap" not in raw.column_names:
        return 0, None
    gap = raw.column("gap").combine_chunks()
    if pa.types.is_null(gap.type):
        return 0, None
    if not pa.types.is_struct(gap.type) or gap.type.get_field_index("count") < 0:
        return None, None
    is_gap = pc.is_valid(gap)
    count = gap.flatten()[gap.type.get_field_index("count")].filter(is_gap)
    if not pa.types.is_integer(count.type) or count.null_count:
        return None, None
    return int(pc.sum(count).as_py() or 0), is_gap


def _well_formed(rows: pa.Table) -> bool:
    names = set(rows.column_names)
    for name, kind in ROW_FIELDS.items():
        if name not in names or rows.schema.field(name).type != kind:
            return False
        if rows.column(name).null_count:
            return False
    for name in GROUP_FIELDS:
        if name not in names or not pa.types.is_struct(rows.schema.field(name).type):
            return False
        if rows.column(name).null_count:
            return False
    return True


def _shape(rows: pa.Table, seq: int, partition: str, sel: Selection) -> dict[str, pa.Array] | None:
    n = rows.num_rows
    line = rows.column(LINE).combine_chunks()
    columns: dict[str, pa.Array] = {
        "time": rows.column("time").combine_chunks().cast(TIME),
        ORDER: pc.add(line, pa.scalar(order_of(seq, 0), pa.int64())),
    }
    for group in ("in", "out"):
        for name, values in _fields(group, rows.column(group).combine_chunks()):
            if sel.wants(name) and values.null_count < n:  # a field no row kept has: no column
                columns[name] = values
    anomaly = _anomaly(rows, sel)
    if anomaly is None:
        return None
    columns.update(anomaly)
    if sel.wants_group("metadata"):
        for field in METADATA:
            name = f"metadata.{field}"
            if sel.wants(name):
                values = _metadata(field, rows, partition)
                if values is None:
                    return None
                columns[name] = values
    return columns


def _fields(group: str, struct: pa.StructArray) -> list[tuple[str, pa.Array]]:
    return [(f"{group}.{f.name}", a) for f, a in zip(struct.type, struct.flatten(), strict=True)]


def _anomaly(rows: pa.Table, sel: Selection) -> dict[str, pa.Array] | None:
    """``anomaly.<key>``: a row without an anomaly object has the default ``{"count": 0}``
    (the encoder omits it)."""
    n = rows.num_rows
    zero = pa.scalar(0, pa.int64())
    if "anomaly" not in rows.column_names or pa.types.is_null(rows.schema.field("anomaly").type):
        return (
            {"anomaly.count": pa.array(np.zeros(n, np.int64))} if sel.wants("anomaly.count") else {}
        )
    struct = rows.column("anomaly").combine_chunks()
    if not pa.types.is_struct(struct.type):
        return None
    absent = pc.is_null(struct)
    out: dict[str, pa.Array] = {}
    fields = dict(_fields("anomaly", struct))
    if "anomaly.count" not in fields:
        fields = {"anomaly.count": pa.nulls(n, pa.int64()), **fields}
    for name, values in fields.items():
        if name == "anomaly.count":
            if not (pa.types.is_integer(values.type) or pa.types.is_null(values.type)):
                return None
            values = pc.if_else(absent, zero, values.cast(pa.int64()))
        elif values.null_count == n:
            continue
        if sel.wants(name):
            out[name] = values
    return out


def _metadata(field: str, rows: pa.Table, partition: str) -> pa.Array | None:
    n = rows.num_rows
    if field == "last_model":
        return _last_model(rows)
    if field == "pipeline_version":
        return rows.column("pipeline_version").combine_chunks()
    if field == "elapsed":
        if "elapsed_ns" not in rows.column_names:
            return empty_lists(n, pa.int64())
        elapsed = rows.column("elapsed_ns").combine_chunks()
        kind = elapsed.type
        if not pa.types.is_null(kind) and not (
            pa.types.is_list(kind)
            and (pa.types.is_integer(kind.value_type) or pa.types.is_null(kind.value_type))
        ):
            return None
        return pc.fill_null(elapsed.cast(pa.list_(pa.int64())), empty_lists(1, pa.int64())[0])
    if field == "dropped":  # steps that dropped the row: an edge logs none
        return empty_lists(n, pa.string())
    return pc.fill_null(pa.nulls(n, pa.string()), partition)


def _last_model(rows: pa.Table) -> pa.Array | None:
    """``{"model_name", "model_sha"}`` of each row's last step (``models`` holds
    ``[name, version, sha256]`` per step), made once per distinct model."""
    n = rows.num_rows
    if "models" not in rows.column_names:
        return pa.nulls(n, pa.string())
    models = rows.column("models").combine_chunks()
    if pa.types.is_null(models.type) or (
        pa.types.is_list(models.type) and pa.types.is_null(models.type.value_type)
    ):
        return pa.nulls(n, pa.string())
    kind = models.type
    if not (pa.types.is_list(kind) and pa.types.is_list(kind.value_type)):
        return None
    if not pa.types.is_string(kind.value_type.value_type):
        return None
    steps = pc.fill_null(pc.list_value_length(models), 0).to_numpy(zero_copy_only=False)
    has = steps > 0
    last = pc.list_flatten(models).take(pa.array((np.cumsum(steps) - 1)[has]))
    if int(pc.min(pc.list_value_length(last)).as_py() or 0) < 3:
        return None  # a step is [name, version, sha256]
    pairs = pc.binary_join_element_wise(
        pc.list_element(last, 0), pc.list_element(last, 2), "\n"
    ).dictionary_encode()
    texts = pa.array(
        [
            None if p is None else last_model_text(*p.rsplit("\n", 1))
            for p in pairs.dictionary.to_pylist()
        ],
        pa.string(),
    )
    codes = np.full(n, -1, np.int64)
    codes[has] = pc.fill_null(pairs.indices, -1).to_numpy(zero_copy_only=False)
    return texts.take(pa.array(codes, mask=codes < 0))
