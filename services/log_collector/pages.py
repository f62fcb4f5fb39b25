"""An edge's page as the collector sees it, checked, and what it appends for it (pure).

The partition is the edge that published the page, read from the subject the broker let
only that edge publish on; nothing in the headers or the body can name another. The body
is forwarded as it came (or cut where Ops already holds its start); lines are looked into
only for their ``seq``, which the page's headers must agree with.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from edgepub.shared import log_lines, subjects

from .decisions import PageRange

_seqs = msgspec.json.Decoder(list[log_lines.Seq])


class CorruptPage(Exception):
    """A page no edge shipper writes: dropped (termed) with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Watermark(msgspec.Struct, frozen=True, kw_only=True):
    """The body of an edge's watermark message (``edgepub.wm.<edge>``)."""

    edge: str
    last_seq: int


_wm_encoder = msgspec.json.Encoder()
_wm_decoder = msgspec.json.Decoder(Watermark)


def encode_watermark(edge: str, last_seq: int) -> bytes:
    return _wm_encoder.encode(Watermark(edge=edge, last_seq=last_seq))


def decode_watermark(data: bytes) -> Watermark:
    return _wm_decoder.decode(data)


@dataclass(frozen=True, slots=True)
class Page:
    edge: str  # the partition
    workspace: int
    pipeline: str
    body: bytes
    lines: list[bytes]
    seqs: list[int]
    rows: int
    range: PageRange

    @property
    def first(self) -> int:
        return self.seqs[0]

    @property
    def last(self) -> int:
        return self.seqs[-1]

    @property
    def log_subject(self) -> str:
        return subjects.pipeline_log(self.workspace, self.pipeline, self.edge)


def _int_header(headers: dict[str, str], name: str, *, low: int) -> int:
    raw = headers.get(name)
    if raw is None:
        raise CorruptPage(f"header {name} is missing")
    try:
        value = int(raw)
    except ValueError:
        raise CorruptPage(f"header {name}={raw[:40]!r} is not a whole number") from None
    if value < low:
        raise CorruptPage(f"header {name}={value} is below {low}")
    return value


def parse(subject: str, headers: dict[str, str], body: bytes) -> Page:
    """The page, or CorruptPage naming what is wrong with it."""
    try:
        edge = subjects.edge_of(subject)
    except ValueError as exc:
        raise CorruptPage(str(exc)) from None
    pipeline = headers.get(subjects.HEADER_PIPELINE, "")
    try:
        subjects.token(pipeline)
    except ValueError:
        name = subjects.HEADER_PIPELINE
        raise CorruptPage(f"header {name}={pipeline[:40]!r} is no pipeline name") from None
    workspace = _int_header(headers, subjects.HEADER_WORKSPACE, low=0)
    first = _int_header(headers, subjects.HEADER_FIRST_SEQ, low=1)
    last = _int_header(headers, subjects.HEADER_LAST_SEQ, low=first)
    rows = _int_header(headers, subjects.HEADER_ROWS, low=0)
    lines = log_lines.split_lines(body)
    seqs = _line_seqs(body, lines)
    if seqs[0] != first or seqs[-1] != last:
        raise CorruptPage(f"headers say seq {first}..{last}, the lines hold {seqs[0]}..{seqs[-1]}")
    gaps = sum(1 for line in lines if log_lines.is_gap(line))
    if len(lines) - gaps != rows:
        raise CorruptPage(
            f"header {subjects.HEADER_ROWS}={rows}, the page holds {len(lines) - gaps} rows"
        )
    span = PageRange(reach=_reach(lines[0], first), end=_end(lines[-1], last))
    return Page(
        edge=edge,
        workspace=workspace,
        pipeline=pipeline,
        body=body,
        lines=lines,
        seqs=seqs,
        rows=rows,
        range=span,
    )


def _line_seqs(body: bytes, lines: list[bytes]) -> list[int]:
    """Every line's seq, strictly ascending: one decode of the lines as a JSON array (each
    line must be one JSON object: a line holding two would change the count)."""
    if not lines:
        raise CorruptPage("the page holds no lines")
    try:
        body.decode("utf-8")
        seqs = [s.seq for s in _seqs.decode(b"[" + b",".join(lines) + b"]")]
    except UnicodeDecodeError as exc:
        raise CorruptPage(f"the body is not UTF-8 (byte {exc.start})") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptPage(f"the lines are not NDJSON with a seq each: {exc}") from None
    if len(seqs) != len(lines):
        raise CorruptPage(f"{len(lines)} lines hold {len(seqs)} JSON values")
    for i in range(1, len(seqs)):
        if seqs[i] <= seqs[i - 1]:
            raise CorruptPage(f"line {i + 1} has seq {seqs[i]} after {seqs[i - 1]}")
    return seqs


def _gap(line: bytes) -> log_lines.Gap | None:
    if not log_lines.is_gap(line):
        return None
    try:
        decoded = log_lines.decode_line(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptPage(f"a gap line does not decode: {exc}") from None
    assert isinstance(decoded, log_lines.GapLine)
    if not 0 < decoded.gap.first_seq <= decoded.gap.last_seq:
        raise CorruptPage(
            f"gap line {decoded.seq} has range {decoded.gap.first_seq}..{decoded.gap.last_seq}"
        )
    return decoded.gap


def _reach(line: bytes, first: int) -> int:
    gap = _gap(line)
    return first if gap is None else min(first, gap.first_seq)


def _end(line: bytes, last: int) -> int:
    gap = _gap(line)
    return last if gap is None else max(last, gap.last_seq)


def stored_end(headers: dict[str, str], body: bytes) -> int:
    """The highest edge sequence a page the collector filed at Ops accounts for: its
    ``Edgepub-Last-Seq``, or the range of a gap line it ends with (what the batch that
    stored it moved the watermark to). CorruptPage if it is no page this service wrote."""
    last = _int_header(headers, subjects.HEADER_LAST_SEQ, low=1)
    lines = log_lines.split_lines(body)
    if not lines:
        raise CorruptPage("the page holds no lines")
    return _end(lines[-1], last)


def appended(page: Page, start: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers filed at Ops for the page's lines from index ``start`` on: the
    bytes as they came when nothing is cut, the partition the edge's name."""
    if start == 0:
        body, rows = page.body, page.rows
    else:
        kept = page.lines[start:]
        body = log_lines.join_lines(kept)
        rows = sum(1 for line in kept if not log_lines.is_gap(line))
    headers = {
        subjects.HEADER_FIRST_SEQ: str(page.seqs[start]),
        subjects.HEADER_LAST_SEQ: str(page.last),
        subjects.HEADER_ROWS: str(rows),
        subjects.HEADER_PIPELINE: page.pipeline,
        subjects.HEADER_WORKSPACE: str(page.workspace),
        subjects.HEADER_PARTITION: page.edge,
    }
    return body, headers
