"""Page slicing, gap lines and row encoding of the local log, as pure functions."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.edge_agent.inference_log import InferenceEvent, ModelUsed
from edgepub.edge_agent.pages import (
    Chunk,
    Span,
    evict_until,
    evicted_gap,
    gap_line,
    next_page,
)
from edgepub.edge_agent.row_lines import bodies_of, enc_hook, row_lines, with_seqs
from edgepub.shared.log_lines import GapLine, RowLine, decode_line, encode_line, join_lines

LineRef = tuple[int, str | None, bytes]  # (seq, pipeline or None for a gap line, line)


@st.composite
def line_refs(draw: st.DrawFn) -> list[LineRef]:
    kinds = draw(st.lists(st.sampled_from(["a", "b", None]), max_size=40))
    sizes = draw(st.lists(st.integers(1, 300), min_size=len(kinds), max_size=len(kinds)))
    out: list[LineRef] = []
    for seq, (kind, size) in enumerate(zip(kinds, sizes, strict=True), start=1):
        line = gap_line(seq, 2, "evicted") if kind is None else bytes([97 + seq % 26]) * size
        out.append((seq, kind, line))
    return out


def as_chunks(lines: list[LineRef], cuts: list[int]) -> list[Chunk]:
    """The lines as the log stores them: runs of one pipeline's rows (cut where ``cuts``
    say, as blocks fill), each gap line alone."""
    chunks: list[Chunk] = []
    run: list[LineRef] = []

    def close() -> None:
        if run:
            body = join_lines([line for _, _, line in run])
            chunks.append(Chunk(run[0][0], run[-1][0], run[0][1], 0, body))
            run.clear()

    for i, (seq, pipeline, line) in enumerate(lines):
        if pipeline is None:
            close()
            chunks.append(Chunk(seq, seq, None, 2, line))
            continue
        if run and (run[0][1] != pipeline or i in cuts):
            close()
        run.append((seq, pipeline, line))
    close()
    return chunks


def rest_after(lines: list[LineRef], cuts: list[int], after: int) -> list[Chunk]:
    """What the store reads after ``after``: its blocks past it, the first one trimmed."""
    return [c.after(after) for c in as_chunks(lines, cuts) if c.last_seq > after]


@given(line_refs(), st.lists(st.integers(0, 40)), st.integers(1, 50), st.integers(1, 4000))
def test_pages_cover_every_line_once_within_their_limits(
    lines: list[LineRef], cuts: list[int], max_rows: int, max_bytes: int
) -> None:
    seen: list[LineRef] = []
    after = 0
    while page := next_page(iter(rest_after(lines, cuts, after)), max_rows, max_bytes):
        rest = [ref for ref in lines if ref[0] > after]
        assert 1 <= page.line_count <= max_rows
        assert page.body_bytes <= max_bytes or page.line_count == 1
        taken, rest = rest[: page.line_count], rest[page.line_count :]
        assert page.lines() == [line for _, _, line in taken]
        assert page.body == join_lines([line for _, _, line in taken])
        assert (page.first_seq, page.last_seq) == (taken[0][0], taken[-1][0])
        pipelines = {p for _, p, _ in taken if p is not None}
        assert len(pipelines) <= 1 and page.pipeline == (pipelines.pop() if pipelines else None)
        assert page.rows == sum(p is not None for _, p, _ in taken)
        assert page.gaps == 2 * sum(p is None for _, p, _ in taken)
        if rest and page.line_count < max_rows:  # it stopped for a reason
            grown = page.body_bytes + 1 + len(rest[0][2])
            assert grown > max_bytes or rest[0][1] not in (None, page.pipeline)
        seen.extend(taken)
        after = page.last_seq
    assert seen == lines


def test_an_oversized_line_goes_alone_and_no_lines_no_page() -> None:
    page = next_page(iter([Chunk(5, 6, "a", 0, b"x" * 100 + b"\ny")]), 10, 10)
    assert page is not None and page.lines() == [b"x" * 100] and page.body_bytes == 100
    gap = gap_line(7, 3, "evicted")
    page = next_page(iter([Chunk(7, 7, None, 3, gap)]), 10, 10)
    assert page is not None and page.body == gap and page.gaps == 3
    assert next_page(iter([]), 10, 10) is None
    with pytest.raises(ValueError):
        next_page(iter([]), 0, 10)


def test_next_page_reads_one_block_past_the_page_at_most() -> None:
    consumed = []

    def source():  # type: ignore[no-untyped-def]
        for seq in range(1, 100, 2):
            consumed.append(seq)
            yield Chunk(seq, seq + 1, "a", 0, b"x\nx")

    page = next_page(source(), 3, 1000)
    assert page is not None and page.last_seq == 3 and consumed == [1, 3]
    page = next_page(source(), 4, 1000)
    assert page is not None and page.last_seq == 4 and consumed == [1, 3, 1, 3, 5]


def test_whole_blocks_are_shipped_as_stored() -> None:
    block = join_lines([b"r1", b"r2", b"r3"])
    page = next_page(iter([Chunk(1, 3, "a", 0, block)]), 10, 1000)
    assert page is not None and page.body is block


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
    expected = reference_lines(event, 40)
    assert row_lines(event, 40) == expected


_reference = msgspec.json.Encoder(enc_hook=enc_hook)


def reference_lines(event: InferenceEvent, first_seq: int) -> list[bytes]:
    """One RowLine Struct per record, each value the record's item as it is (numpy items
    written by the agent's ``enc_hook``): what every faster path must equal."""
    return [
        _reference.encode(
            RowLine(
                seq=first_seq + i,
                time=event.time,
                pipeline=event.pipeline,
                pipeline_version=event.pipeline_version,
                in_={name: column[i] for name, column in event.inputs.items()},
                out={name: column[i] for name, column in event.outputs.items()},
                elapsed_ns=tuple(event.elapsed_ns),
                models=tuple((m.name, m.version, m.sha256) for m in event.model_versions),
            )
        )
        for i in range(event.records)
    ]


@st.composite
def batches(draw: st.DrawFn) -> list[InferenceEvent]:
    """Requests as a hand-off batch holds them: mostly alike, now and then another
    pipeline, dtype, shape, tensor order, step count or a non-numeric tensor."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    events = []
    for i in range(draw(st.integers(1, 30))):
        records = draw(st.sampled_from([1, 1, 1, 2, 3]))
        width = draw(st.sampled_from([4, 4, 4, 0, 2]))
        dtype = draw(st.sampled_from(["float32", "float32", "float64", "int64"]))
        x = (rng.random((records, width)) * 100).astype(dtype)
        # the pandas-records path echoes inputs as lists (of lists, of numbers, nested)
        shape = draw(st.sampled_from(["array", "array", "lists", "flat", "nested"]))
        column = {
            "array": x,
            "lists": x.tolist(),
            "flat": x[:, 0].tolist() if width else [0.5] * records,
            "nested": [[row.tolist(), [1]] for row in x],
        }[shape]
        ins: dict[str, object] = {"x": column}
        if draw(st.booleans()):
            ins["flag"] = rng.random(records) > 0.5
        if draw(st.integers(0, 9)) == 0:
            ins["note"] = [f"n%{i}" for _ in range(records)]
        if draw(st.integers(0, 9)) == 0:
            ins = dict(reversed(list(ins.items())))
        events.append(
            InferenceEvent(
                time=1_700_000_000_000 + i,
                pipeline=draw(st.sampled_from(["p", "p", "p", 'q"%'])),
                pipeline_version="v-1",
                records=records,
                inputs=ins,
                outputs={"y": rng.random((records, 1)).astype("float32")},
                elapsed_ns=draw(st.sampled_from([[41_000], [41_000], [1, 2], []])),
                model_versions=(ModelUsed("m%d", "1", "ab" * 32),),
                partition="edge",
            )
        )
    return events


@given(batches(), st.integers(1, 10**12))
def test_a_batch_encodes_as_its_records_one_at_a_time(
    events: list[InferenceEvent], first_seq: int
) -> None:
    expected, seq = [], first_seq
    for event in events:
        expected.extend(reference_lines(event, seq))
        seq += event.records
    runs = bodies_of(events)
    lines = with_seqs([body for _, bodies in runs for body in bodies], first_seq)
    assert lines == expected
    for pipeline, bodies in runs:  # a run is one pipeline's (blocks never mix two)
        run_lines = with_seqs(bodies, 1)
        assert {getattr(decode_line(line), "pipeline", None) for line in run_lines} == {pipeline}


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


def test_a_column_whose_brackets_count_as_flat_lists_but_are_not_is_encoded_per_record() -> None:
    """``[row], 91.2, 93.5, [[17.5, 86.3], [1]]`` holds as many brackets as four flat lists
    and cuts once: found by the batch property above (the write failed, its rows counted
    lost)."""
    base = dict(
        pipeline="p",
        pipeline_version="v-1",
        outputs={},
        elapsed_ns=[41_000],
        model_versions=(),
        partition="edge",
    )
    x = np.array([[63.696167, 26.978672]], dtype="float32")
    events = [
        InferenceEvent(time=1, records=1, inputs={"x": x}, **base),  # type: ignore[arg-type]
        InferenceEvent(time=2, records=2, inputs={"x": [91.2, 93.5]}, **base),  # type: ignore[arg-type]
        InferenceEvent(time=3, records=1, inputs={"x": [[[17.5, 86.3], [1]]]}, **base),  # type: ignore[arg-type]
    ]
    expected = reference_lines(events[0], 5) + reference_lines(events[1], 6)
    expected += reference_lines(events[2], 8)
    (run,) = bodies_of(events)
    assert with_seqs(run[1], 5) == expected
