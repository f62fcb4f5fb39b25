"""Pages and gaps of the local inference log, as plain data (no SQLite here).

The log hands the shipper ``Page``s: consecutive lines (``shared/log_lines.py``) in
sequence order, at most ``max_rows`` lines and ``max_bytes`` of body, never rows of two
pipelines in one page (gap lines belong to no pipeline and join any page). ``next_page``
cuts one from ``Chunk``s, the log's stored blocks: a run of consecutive row lines of one
pipeline already joined by ``\\n``, or one gap line. A chunk that fits is taken whole, its
bytes as stored, so a page costs a few joins and not a step per line; only the chunk at
the page's end is split into lines.

``evicted_gap`` decides the one gap line that takes the place of an evicted range: it
keeps the range's last sequence number (the seq space stays ordered) and counts every row
lost in it, including rows that gap lines inside the range already counted (those lines
are evicted too, so their counts fold into the evicted gap: the total stays exact).

``Handed`` keeps what the log handed the shipper above the file's watermark: the rows in
it, and the pages Ops has not acknowledged. A fresh file that replaces a corrupt one stores
those pages again (``chunks_of``), so its gap line counts only rows never handed out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from edgepub.shared.log_lines import (
    Gap,
    GapLine,
    GapReason,
    encode_line,
    is_gap,
    seq_of,
    split_lines,
)


class Chunk(msgspec.Struct, frozen=True):
    """Lines ``first_seq..last_seq`` of one pipeline joined by ``\\n`` (one per seq), or
    one gap line (``pipeline`` None) counting ``lost`` rows."""

    first_seq: int
    last_seq: int
    pipeline: str | None
    lost: int
    body: bytes

    @property
    def lines(self) -> int:
        return 1 if self.pipeline is None else self.last_seq - self.first_seq + 1

    def after(self, seq: int) -> Chunk:
        """The chunk without its lines at or below ``seq`` (a page ended inside it)."""
        if self.pipeline is None or self.first_seq > seq:
            return self
        rest = self.body.split(b"\n", seq + 1 - self.first_seq)[-1]
        return Chunk(seq + 1, self.last_seq, self.pipeline, self.lost, rest)


class Page(msgspec.Struct, frozen=True, kw_only=True):
    first_seq: int
    last_seq: int
    body: bytes  # the lines joined by \n, as shipped
    line_count: int
    rows: int  # row lines
    gaps: int  # rows the gap lines in this page count as lost
    pipeline: str | None  # None: gap lines only

    @property
    def body_bytes(self) -> int:
        return len(self.body)

    def lines(self) -> list[bytes]:
        return split_lines(self.body)


def next_page(chunks: Iterable[Chunk], max_rows: int, max_bytes: int) -> Page | None:
    """The longest prefix of ``chunks``' lines that is a page; None when there are none.

    Consumes ``chunks`` lazily and at most one chunk past the page (a generator over a
    cursor reads no further). A first line bigger than ``max_bytes`` goes alone.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    parts: list[bytes] = []
    first = last = lines = rows = gaps = size = 0
    pipeline: str | None = None
    for chunk in chunks:
        if chunk.pipeline is not None and pipeline not in (None, chunk.pipeline):
            break
        grown = size + len(chunk.body) + (1 if parts else 0)
        whole = lines + chunk.lines <= max_rows and grown <= max_bytes
        if whole or (chunk.pipeline is None and not parts):
            taken, n, end, size = chunk.body, chunk.lines, chunk.last_seq, grown
        elif chunk.pipeline is None:
            break
        else:  # the page ends inside this block of rows
            taken, n, size = _prefix(chunk.body, max_rows - lines, max_bytes, size, bool(parts))
            if n == 0:
                break
            end = chunk.first_seq + n - 1
        if not parts:
            first = chunk.first_seq
        parts.append(taken)
        last, lines = end, lines + n
        if chunk.pipeline is None:
            gaps += chunk.lost
        else:
            pipeline = chunk.pipeline
            rows += n
        if not whole:
            break
    if not parts:
        return None
    return Page(
        first_seq=first,
        last_seq=last,
        body=parts[0] if len(parts) == 1 else b"\n".join(parts),
        line_count=lines,
        rows=rows,
        gaps=gaps,
        pipeline=pipeline,
    )


def _prefix(
    body: bytes, room_rows: int, max_bytes: int, size: int, joined: bool
) -> tuple[bytes, int, int]:
    """The first lines of ``body`` that fit: (their bytes, how many, the page's new size).
    A page's first line always fits (it goes alone when too big)."""
    lines = body.split(b"\n")
    n = 0
    while n < len(lines) and n < room_rows:
        grown = size + len(lines[n]) + (1 if joined or n else 0)
        if grown > max_bytes and (joined or n):
            break
        size, n = grown, n + 1
    return b"\n".join(lines[:n]), n, size


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


def chunks_of(page: Page) -> list[Chunk]:
    """A page's lines as the log stores them: each run of row lines one chunk, each gap
    line one of its own."""
    chunks: list[Chunk] = []
    run: list[bytes] = []

    def close() -> None:
        if run:
            if page.pipeline is None:
                raise ValueError(f"page {page.first_seq}-{page.last_seq} has rows but no pipeline")
            body = b"\n".join(run)
            chunks.append(Chunk(seq_of(run[0]), seq_of(run[-1]), page.pipeline, 0, body))
            run.clear()

    for line in page.lines():
        if is_gap(line):
            close()
            seq = seq_of(line)
            chunks.append(Chunk(seq, seq, None, lost_of(line), line))
        else:
            run.append(line)
    close()
    return chunks


def rows_after(page: Page, seq: int) -> int:
    """Rows (row lines and gap counts) of ``page``'s lines above ``seq``."""
    rows = 0
    for line in page.lines():
        if seq_of(line) > seq:
            rows += lost_of(line) if is_gap(line) else 1
    return rows


class Handed:
    """What the log handed the shipper above the file's watermark: ``top`` (the highest
    seq handed out), ``rows`` (row lines and gap counts in ``(watermark, top]``) and the
    pages above what Ops acknowledged, by the seq each starts after: a page the shipper
    may still be sending, or sent and lost the ack of. Re-read pages start where earlier
    ones ended (the shipper starts again from an acked page's end) and hold the same lines
    up to ``top`` (lines handed out are never evicted), so the longest page per start tiles
    what Ops may hold. Used on the log's worker thread only."""

    def __init__(self) -> None:
        self.watermark = 0  # the file's stored watermark
        self.top = 0
        self.rows = 0
        self._pages: dict[int, Page] = {}
        self._acked = 0

    def read(self, after: int, page: Page) -> None:
        floor = max(self.top, self.watermark)
        if page.last_seq > floor:
            fresh = page.first_seq > floor
            self.rows += page.rows + page.gaps if fresh else rows_after(page, floor)
            self.top = page.last_seq
        if page.last_seq > self._acked:
            kept = self._pages.get(after)
            if kept is None or kept.last_seq < page.last_seq:
                self._pages[after] = page

    def stored(self, watermark: int, rows: int) -> None:
        """The file's watermark moved to ``watermark``; the acks deleted ``rows`` rows."""
        if watermark <= self.watermark:
            return
        self.rows = self.rows - rows if watermark <= self.top else 0
        self.watermark = watermark
        self.acked(watermark)

    def acked(self, up_to: int) -> None:
        """Ops holds everything up to ``up_to``: pages that end there are let go."""
        if up_to <= self._acked:
            return
        self._acked = up_to
        for after in [a for a, page in self._pages.items() if page.last_seq <= up_to]:
            del self._pages[after]

    def since(self, seq: int) -> list[Page] | None:
        """Pages tiling ``(seq, top]`` (none past ``top``), or None when they do not."""
        tiles: list[Page] = []
        at = seq
        while at < self.top:
            page = self._pages.get(at)
            if page is None:
                return None
            tiles.append(page)
            at = page.last_seq
        return tiles

    def restart(self, watermark: int, rows: int) -> None:
        """A fresh file under the same seqs: its watermark, and the rows it holds in
        ``(watermark, top]`` (the pages it stored again)."""
        self.watermark = watermark
        self.rows = rows
        self.acked(watermark)
