"""Page slicing, gap lines and row encoding of the local log, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.edge_agent.inference_log import InferenceEvent, ModelUsed, rows_of
from edgepub.edge_agent.pages import LineRef, Span, evict_until, evicted_gap, gap_line, next_page
from edgepub.edge_agent.row_lines import row_lines
from edgepub.shared.log_lines import GapLine, RowLine, decode_line, encode_line, join_lines


@st.composite
def line_refs(draw: st.DrawFn) -> list[LineRef]:
    kinds = draw(st.lists(st.sampled_from(["a", "b", None]), max_size=40))
    sizes = draw(st.lists(st.integers(1, 300), min_size=len(kinds), max_size=len(kinds)))
    out: list[LineRef] = []
    for seq, (kind, size) in enumerate(zip(kinds, sizes, strict=True), start=1):
        line = gap_line(seq, 2, "evicted") if kind is None else b"r" * size
        out.append((seq, kind, line))
    return out


@given(line_refs(), st.integers(1, 50), st.integers(1, 4000))
def test_pages_cover_every_line_once_within_their_limits(
    lines: list[LineRef], max_rows: int, max_bytes: int
) -> None:
    rest, seen = list(lines), []
    while (page := next_page(iter(rest), max_rows, max_bytes)) is not None:
        assert 1 <= len(page.lines) <= max_rows
        assert page.body_bytes == len(join_lines(list(page.lines)))
        assert page.body_bytes <= max_bytes or len(page.lines) == 1
        taken, rest = rest[: len(page.lines)], rest[len(page.lines) :]
        assert page.lines == tuple(line for _, _, line in taken)
        assert (page.first_seq, page.last_seq) == (taken[0][0], taken[-1][0])
        pipelines = {p for _, p, _ in taken if p is not None}
        assert len(pipelines) <= 1 and page.pipeline == (pipelines.pop() if pipelines else None)
        assert page.rows == sum(p is not None for _, p, _ in taken)
        assert page.gaps == 2 * sum(p is None for _, p, _ in taken)
        if rest and len(page.lines) < max_rows:  # it stopped for a reason
            grown = page.body_bytes + 1 + len(rest[0][2])
            assert grown > max_bytes or rest[0][1] not in (None, page.pipeline)
        seen.extend(taken)
    assert seen == lines


def test_an_oversized_line_goes_alone_and_no_lines_no_page() -> None:
    page = next_page(iter([(5, "a", b"x" * 100), (6, "a", b"y")]), 10, 10)
    assert page is not None and page.lines == (b"x" * 100,) and page.body_bytes == 100
    assert next_page(iter([]), 10, 10) is None
    with pytest.raises(ValueError):
        next_page(iter([]), 0, 10)


def test_next_page_reads_one_line_past_the_page_at_most() -> None:
    consumed = []

    def source():  # type: ignore[no-untyped-def]
        for seq in range(1, 100):
            consumed.append(seq)
            yield seq, "a", b"x"

    page = next_page(source(), 3, 1000)
    assert page is not None and page.last_seq == 3 and consumed == [1, 2, 3, 4]


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5), st.integers(0, 9)), min_size=1))
def test_an_evicted_gap_counts_every_row_and_folded_gap(spec: list[tuple[bool, int, int]]) -> None:
    spans, seq = [], 0
    for is_gap, rows, lost in spec:
        if is_gap:
            seq += 1
            spans.append(Span(first_seq=seq, last_seq=seq, rows=0, lost=lost, lost_from=seq - 1))
        else:
            spans.append(
                Span(first_seq=seq + 1, last_seq=seq + rows, rows=rows, lost=0, lost_from=seq + 1)
            )
            seq += rows
    line = decode_line(evicted_gap(spans))
    assert isinstance(line, GapLine)
    assert line.seq == line.gap.last_seq == seq and line.gap.reason == "evicted"
    assert line.gap.count == sum(s.rows + s.lost for s in spans)
    assert line.gap.first_seq == min(s.lost_from for s in spans)


def test_evict_until_takes_the_oldest_until_enough() -> None:
    spans = [(Span(first_seq=i, last_seq=i, rows=1, lost=0, lost_from=i), 10) for i in range(5)]
    assert [s.first_seq for s in evict_until(iter(spans), 25)[0]] == [0, 1, 2]
    assert len(evict_until(iter(spans), 1000)[0]) == 5


floats = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(
    st.integers(1, 6),
    st.integers(0, 4),
    st.sampled_from(["float32", "float64", "int64", "bool"]),
    st.text(max_size=8),
    st.booleans(),
)
def test_row_lines_are_exactly_encode_line(
    records: int, width: int, dtype: str, name: str, two_d: bool
) -> None:
    rng = np.random.default_rng(records * 31 + width)
    shape = (records, width) if two_d else (records,)
    column = (rng.random(shape) * 100).astype(dtype)
    event = InferenceEvent(
        time=1_700_000_000_000,
        pipeline='p"1\n',
        pipeline_version="v-1",
        records=records,
        inputs={name: column, "list": [[i, "s"] for i in range(records)]},
        outputs={"y": rng.random((records, 1)).astype("float32")},
        elapsed_ns=[12, 34],
        model_versions=(ModelUsed("m", "1", "ab" * 32),),
        partition="edge",
    )
    expected = [
        encode_line(
            RowLine(
                seq=40 + i,
                time=row.time,
                pipeline=row.pipeline,
                pipeline_version=row.pipeline_version,
                in_=row.inputs,
                out=row.outputs,
                elapsed_ns=row.elapsed_ns,
                models=tuple((m.name, m.version, m.sha256) for m in row.model_versions),
            )
        )
        for i, row in enumerate(rows_of(event))
    ]
    assert row_lines(event, 40) == expected


def test_row_lines_without_steps_or_records() -> None:
    base = dict(
        time=1,
        pipeline="p",
        pipeline_version="v",
        inputs={},
        outputs={},
        elapsed_ns=[],
        model_versions=(),
        partition="e",
    )
    assert row_lines(InferenceEvent(records=0, **base), 1) == []  # type: ignore[arg-type]
    (line,) = row_lines(InferenceEvent(records=1, **base), 7)  # type: ignore[arg-type]
    assert line == encode_line(
        RowLine(seq=7, time=1, pipeline="p", pipeline_version="v", in_={}, out={})
    )
