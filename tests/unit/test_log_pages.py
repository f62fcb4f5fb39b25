"""A page of the pipeline log as columns (sdk/log_pages.py): Arrow's JSON reader gives the
same table as decoding the page line by line, a page it cannot take whole is read line by
line (bad lines skipped, conflicting types as JSON text), and the newest-rows heap holds
Arrow tables trimmed to its limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.log_columns import Newest, TableBuilder, batch_table, order_of, selection
from edgepub.log_pages import page_of, page_rows
from edgepub.log_window import Window
from edgepub.shared import subjects
from edgepub.shared.log_lines import Gap, GapLine, RowLine, encode_line, join_lines

T0 = 1_700_000_000_000
SEQ = 41  # the page's stream sequence
TS = datetime.fromtimestamp(T0 / 1000 + 60, UTC)
EVERYTHING = selection(["*", "metadata"])


def msg(lines: list[bytes], edge: str = "edge-a") -> Any:
    return SimpleNamespace(
        data=join_lines(lines),
        headers={subjects.HEADER_PARTITION: edge},
        subject=f"edgepub.logs.1.p.{edge}",
    )


def row(seq: int, t: int, *, version: str = "v1", models: int = 1, **out: Any) -> RowLine:
    return RowLine(
        seq=seq,
        time=t,
        pipeline="p",
        pipeline_version=version,
        in_={"tensor": [float(seq), 1.5]},
        out=out or {"variable": [float(seq)]},
        anomaly={"count": seq % 3},  # the default {"count": 0} is not encoded
        elapsed_ns=tuple(range(100, 100 + models)),
        models=tuple((f"m{i}", str(i), f"{i:02x}" * 32) for i in range(models)),
    )


def by_lines(m: Any, w: Window | None, sel: Any = EVERYTHING) -> pa.Table:
    """What the page holds, decoded line by line (the reader's way for a page Arrow cannot
    take whole)."""
    page = page_of(m, SEQ, TS)
    held = [
        (r, page.partition, order_of(SEQ, i)) for i, r in page.rows if w is None or w.holds(r.time)
    ]
    b = TableBuilder(sel)
    if held:
        b.add_table(batch_table(held, sel))
    return b.finish()


def by_arrow(m: Any, w: Window | None, sel: Any = EVERYTHING) -> tuple[pa.Table, int]:
    got = page_rows(m, SEQ, TS, sel, w)
    b = TableBuilder(sel)
    if got.table is not None:
        b.add_table(got.table)
    return b.finish(), got.gap_rows


OUTS = st.fixed_dictionaries(
    {},
    optional={
        "variable": st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3),
        "label": st.text("abc", min_size=1, max_size=3),
        "n": st.integers(-(2**40), 2**40),
    },
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), OUTS, st.integers(0, 3)), min_size=1, max_size=30),
    st.lists(st.integers(0, 29), max_size=3),
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_arrow_reads_a_page_as_decoding_it_line_by_line(
    rows: list[tuple[int, dict[str, Any], int]], gaps_at: list[int], bounds: tuple[int, int]
) -> None:
    lines = [encode_line(row(i, T0 + t, models=k, **out)) for i, (t, out, k) in enumerate(rows)]
    for at in sorted(set(gaps_at), reverse=True):
        gap = GapLine(seq=at, gap=Gap(count=at + 1, first_seq=at, last_seq=at, reason="evicted"))
        lines.insert(min(at, len(lines)), encode_line(gap))
    lo, hi = sorted(bounds)
    for w in (None, Window(T0 + lo, T0 + hi)):
        want = by_lines(msg(lines), w)
        got, gap_rows = by_arrow(msg(lines), w)
        assert got.to_pylist() == want.to_pylist()  # a group's fields may come in another order
        assert {f.name: f.type for f in got.schema} == {f.name: f.type for f in want.schema}
        assert gap_rows == sum(a + 1 for a in set(gaps_at))


def test_columns_types_and_metadata() -> None:
    lines = [encode_line(row(1, T0, models=2)), encode_line(row(2, T0 + 1, models=0))]
    got, _ = by_arrow(msg(lines, "shop-9"), None)
    assert got.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    first, second = got.to_pylist()
    assert json.loads(second["metadata.last_model"]) == {"model_name": "m1", "model_sha": "01" * 32}
    assert first["metadata.last_model"] is None and first["metadata.elapsed"] == []
    assert second["metadata.elapsed"] == [100, 101] and second["metadata.partition"] == "shop-9"
    assert second["metadata.dropped"] == [] and second["anomaly.count"] == 1
    assert first["anomaly.count"] == 2
    default = RowLine(seq=3, time=T0, pipeline="p", pipeline_version="v1", in_={}, out={"y": 1})
    (only,) = by_arrow(msg([encode_line(default)]), None)[0].to_pylist()
    assert only["anomaly.count"] == 0  # omitted on the wire: the default


def test_a_page_arrow_cannot_take_is_read_line_by_line() -> None:
    lines = [
        encode_line(row(1, T0, v=[1.0, 2.0])),
        b"{not json",
        encode_line(row(2, T0 + 1, v="text")),  # a list in one row, text in the next
        b'{"seq": 3, "time": 5}',  # not a row: no pipeline, in, out
    ]
    got, gap_rows = by_arrow(msg(lines), None)
    assert got.num_rows == 2 and gap_rows == 0
    assert got.column("out.v").to_pylist() == ['"text"', "[1.0, 2.0]"]  # each as JSON


def test_json_text_is_never_encoded_twice() -> None:
    """A column that became JSON text in one page, joined with pages that hold it as a list
    or as text, holds each value's JSON once."""
    mixed = msg([encode_line(row(1, T0, v=[1.0])), encode_line(row(2, T0 + 1, v="a"))])
    lists = msg([encode_line(row(3, T0 + 2, v=[3.0]))])
    texts = msg([encode_line(row(4, T0 + 3, v="b"))])
    keep = Newest(10, EVERYTHING, batch_rows=1)
    for m in (mixed, lists, texts, lists):
        got = page_rows(m, SEQ, TS, EVERYTHING, None).table
        assert got is not None
        keep.add_table(got)
        keep.kth_newest_ms()  # joins what it holds each time
    assert keep.finish().column("out.v").to_pylist() == ['"b"', "[3.0]", "[3.0]", '"a"', "[1.0]"]


@given(st.lists(st.integers(0, 200), min_size=1, max_size=400), st.integers(1, 30))
def test_newest_trims_to_its_limit_and_keeps_the_newest(times: list[int], limit: int) -> None:
    keep = Newest(limit, selection(), batch_rows=4)
    for start in range(0, len(times), 7):  # pages of 7 rows
        page = [(row(i, T0 + times[i]), "e", order_of(1, i)) for i in range(start, start + 7)
                if i < len(times)]  # fmt: skip
        keep.add_table(batch_table(page, selection()))
        assert keep._held <= limit + max(limit // 2, 4) + 7
    assert keep.seen == len(times)
    want = sorted(((T0 + t, i) for i, t in enumerate(times)), reverse=True)[:limit]
    held = keep.finish().to_pylist()
    got = [(round(r["time"].timestamp() * 1000), int(r["in.tensor"][0])) for r in held]
    assert got == want


def test_a_row_naming_the_readers_own_column_is_still_read() -> None:
    line = encode_line(row(1, T0))[:-1] + b',"__line":7}'
    got, _ = by_arrow(msg([line, encode_line(row(2, T0 + 1))]), None)
    assert got.to_pylist() == by_lines(msg([line, encode_line(row(2, T0 + 1))]), None).to_pylist()
    assert got.num_rows == 2
