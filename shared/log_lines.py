"""Inference log rows on the wire: one JSON object per line (NDJSON), as the edge's local
log stores them, as pages carry them, and as the pipeline log at Ops holds them.

A page's body is the lines of consecutive edge sequence numbers, joined by ``\\n``; its
headers (``shared/subjects.py``: ``Edgepub-First-Seq``, ``-Last-Seq``, ``-Rows``,
``-Pipeline``, ``-Workspace``) say what it covers. The collector forwards the bytes without
decoding rows and adds ``Edgepub-Partition`` (the edge's authenticated name): a row never
names its own partition, so an edge cannot claim another's. Any NATS client reads the log
with a JSON parser and a line split.

Every sequence number is either a row or a gap line: rows the edge had to drop (its local
bound, a full hand-off queue, a failed write) are never silent, they are counted in a gap
line ``{"seq": n, "gap": {"count": c, "first_seq": a, "last_seq": b, "reason": r}}``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

LINE_VERSION = 1
GapReason = Literal[
    "evicted", "handoff_full", "write_failed", "too_large", "corrupt", "corrupt_at_most", "reset"
]  # corrupt_at_most: an upper bound; reset: a log started afresh (edge_agent/local_log.py)


class Gap(msgspec.Struct, frozen=True, kw_only=True):
    count: int  # rows lost
    first_seq: int  # the edge sequence range they had (equal for rows that never got one)
    last_seq: int
    reason: GapReason


class RowLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One inference record. ``in``/``out`` map a tensor name to this record's value."""

    seq: int
    time: int  # epoch milliseconds
    pipeline: str
    pipeline_version: str
    in_: dict[str, Any] = msgspec.field(name="in")
    out: dict[str, Any]
    anomaly: dict[str, int] = msgspec.field(default_factory=lambda: {"count": 0})
    elapsed_ns: tuple[int, ...] = ()
    models: tuple[tuple[str, str, str], ...] = ()  # (name, version, sha256) per step
    v: int = LINE_VERSION


class GapLine(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    gap: Gap
    v: int = LINE_VERSION


class Seq(msgspec.Struct, frozen=True):
    """Just a line's sequence number (the collector's one look inside, on overlaps)."""

    seq: int


_json = msgspec.json.Encoder()
_row = msgspec.json.Decoder(RowLine)
_gap = msgspec.json.Decoder(GapLine)
_seq = msgspec.json.Decoder(Seq)
_GAP_PREFIX = re.compile(rb'\{"seq":[0-9]+,"gap":')


def encode_line(line: RowLine | GapLine) -> bytes:
    return _json.encode(line)


def is_gap(line: bytes) -> bool:
    """Gap lines are written ``{"seq":n,"gap":...`` (field order is fixed by the encoder)."""
    return _GAP_PREFIX.match(line) is not None


def decode_line(data: bytes) -> RowLine | GapLine:
    """A row or a gap line; ``msgspec.ValidationError``/``DecodeError`` otherwise."""
    return _gap.decode(data) if is_gap(data) else _row.decode(data)


def seq_of(data: bytes) -> int:
    return _seq.decode(data).seq


def join_lines(lines: list[bytes]) -> bytes:
    return b"\n".join(lines)


def split_lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line]
