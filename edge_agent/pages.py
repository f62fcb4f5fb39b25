"""Pages and gaps of the local inference log, as plain data (no SQLite here).

The log hands the shipper ``Page``s: consecutive lines (``shared/log_lines.py``) in
sequence order, at most ``max_rows`` lines and ``max_bytes`` of body, never rows of two
pipelines in one page (gap lines belong to no pipeline and join any page). ``next_page``
cuts one from ``(seq, pipeline, line)`` tuples, where a gap line's pipeline is None.

``evicted_gap`` decides the one gap line that takes the place of an evicted range: it
keeps the range's last sequence number (the seq space stays ordered) and counts every row
lost in it, including rows that gap lines inside the range already counted (those lines
are evicted too, so their counts fold into the evicted gap: the total stays exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from edgepub.shared.log_lines import Gap, GapLine, GapReason, encode_line

LineRef = tuple[int, str | None, bytes]  # (seq, pipeline or None for a gap line, line)


class Page(msgspec.Struct, frozen=True, kw_only=True):
    first_seq: int
    last_seq: int
    lines: tuple[bytes, ...]
    rows: int  # row lines
    gaps: int  # rows the gap lines in this page count as lost
    pipeline: str | None  # None: gap lines only
    body_bytes: int  # len(join_lines(lines))


def next_page(lines: Iterable[LineRef], max_rows: int, max_bytes: int) -> Page | None:
    """The longest prefix of ``lines`` that is a page; None when there are none.

    Consumes ``lines`` lazily and at most one line past the page (a generator over a
    cursor reads no further). A first line bigger than ``max_bytes`` goes alone.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    taken: list[bytes] = []
    first = last = 0
    pipeline: str | None = None
    rows = size = 0
    gap_lines: list[bytes] = []
    for seq, line_pipeline, line in lines:
        grown = size + len(line) + (1 if taken else 0)
        if taken and (len(taken) >= max_rows or grown > max_bytes):
            break
        if line_pipeline is not None:
            if pipeline is None:
                pipeline = line_pipeline
            elif line_pipeline != pipeline:
                break
            rows += 1
        else:
            gap_lines.append(line)
        if not taken:
            first = seq
        taken.append(line)
        last, size = seq, grown
    if not taken:
        return None
    return Page(
        first_seq=first,
        last_seq=last,
        lines=tuple(taken),
        rows=rows,
        gaps=sum(lost_of(line) for line in gap_lines),
        pipeline=pipeline,
        body_bytes=size,
    )


_gap_decoder = msgspec.json.Decoder(GapLine)


def lost_of(gap_line: bytes) -> int:
    return _gap_decoder.decode(gap_line).gap.count


def first_lost_seq(gap_line: bytes) -> int:
    return _gap_decoder.decode(gap_line).gap.first_seq


def gap_line(seq: int, count: int, reason: GapReason, first_seq: int | None = None) -> bytes:
    """A gap line at ``seq``; rows that never had a seq (dropped, failed) get ``seq`` itself."""
    start = seq if first_seq is None else first_seq
    return encode_line(
        GapLine(seq=seq, gap=Gap(count=count, first_seq=start, last_seq=seq, reason=reason))
    )


class Span(msgspec.Struct, frozen=True, kw_only=True):
    """A run of stored lines: ``rows`` row lines, or one gap line losing ``lost`` rows."""

    first_seq: int
    last_seq: int
    rows: int
    lost: int
    lost_from: int  # a gap line's first lost seq (its own first_seq for rows)


def evicted_gap(spans: Sequence[Span]) -> bytes:
    """The gap line replacing ``spans`` (consecutive, oldest first), reason ``evicted``."""
    if not spans:
        raise ValueError("nothing evicted")
    count = sum(s.rows + s.lost for s in spans)
    start = min(s.lost_from for s in spans)
    return gap_line(spans[-1].last_seq, count, "evicted", first_seq=start)


def evict_until(spans: Iterable[tuple[Span, int]], need: int) -> tuple[list[Span], int]:
    """The oldest ``(span, bytes)`` whose bytes add up to at least ``need`` (all if they
    fall short), and their bytes. Consumes ``spans`` no further than it needs."""
    chosen: list[Span] = []
    freed = 0
    for span, size in spans:
        chosen.append(span)
        freed += size
        if freed >= need:
            break
    return chosen, freed
