"""The collector's decisions (pure): a page against its edge's watermark, and an edge's pages
delivered in any order, any number of times, cut any way, end up in Ops exactly once and
in order."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.services.log_collector import decisions, pages
from edgepub.services.log_collector.decisions import Append, Covered, PageRange, Wait
from edgepub.shared import log_lines, subjects

EDGE = "shop-1"


def row(seq: int) -> bytes:
    return log_lines.encode_line(
        log_lines.RowLine(
            seq=seq, time=1, pipeline="p", pipeline_version="v", in_={"x": [1.0]}, out={"y": 2}
        )
    )


def gap(seq: int, first: int, last: int) -> bytes:
    g = log_lines.Gap(count=last - first + 1, first_seq=first, last_seq=last, reason="evicted")
    return log_lines.encode_line(log_lines.GapLine(seq=seq, gap=g))


def headers(lines: list[bytes], *, rows: int | None = None) -> dict[str, str]:
    seqs = [log_lines.seq_of(line) for line in lines]
    n = sum(1 for line in lines if not log_lines.is_gap(line))
    return {
        subjects.HEADER_FIRST_SEQ: str(seqs[0]),
        subjects.HEADER_LAST_SEQ: str(seqs[-1]),
        subjects.HEADER_ROWS: str(n if rows is None else rows),
        subjects.HEADER_PIPELINE: "p",
        subjects.HEADER_WORKSPACE: "1",
    }


def page_of(lines: list[bytes]) -> pages.Page:
    body = log_lines.join_lines(lines)
    return pages.parse(subjects.edge_subject(EDGE, subjects.EDGE_LOGS), headers(lines), body)


def test_decide_covers_cuts_and_waits() -> None:
    assert decisions.decide(PageRange(reach=1, end=10), 10) == Covered()
    assert decisions.decide(PageRange(reach=1, end=10), 0) == Append(after=0, watermark=10)
    assert decisions.decide(PageRange(reach=5, end=10), 7) == Append(after=7, watermark=10)
    assert decisions.decide(PageRange(reach=12, end=20), 10) == Wait(11, 11)
    assert decisions.cut([3, 4, 8, 9], 4) == 2 and decisions.cut([3, 4], 0) == 0
    with pytest.raises(ValueError):
        PageRange(reach=0, end=1)


def test_a_page_reaches_as_far_as_its_gap_lines() -> None:
    p = page_of([gap(10, 3, 10), row(11), row(12), gap(13, 13, 40)])
    assert p.range == PageRange(reach=3, end=40)
    assert (p.first, p.last, p.rows) == (10, 13, 2)
    body, hdrs = pages.appended(p, decisions.cut(p.seqs, 11))
    assert body == row(12) + b"\n" + gap(13, 13, 40)
    assert hdrs[subjects.HEADER_FIRST_SEQ] == "12" and hdrs[subjects.HEADER_ROWS] == "1"
    assert hdrs[subjects.HEADER_PARTITION] == EDGE


def test_uncut_pages_are_forwarded_byte_for_byte() -> None:
    p = page_of([row(1), row(2)])
    body, _ = pages.appended(p, 0)
    assert body is p.body


def _corrupt(subject: str, hdrs: dict[str, str], body: bytes) -> str:
    with pytest.raises(pages.CorruptPage) as exc:
        pages.parse(subject, hdrs, body)
    return exc.value.reason


def test_corrupt_pages_name_what_is_wrong() -> None:
    good = [row(1), row(2)]
    subject = subjects.edge_subject(EDGE, subjects.EDGE_LOGS)
    body = log_lines.join_lines(good)
    no_first = {k: v for k, v in headers(good).items() if k != subjects.HEADER_FIRST_SEQ}
    assert "Edgepub-First-Seq is missing" in _corrupt(subject, no_first, body)
    assert "no pipeline name" in _corrupt(subject, {}, body)
    assert "Edgepub-Rows=5" in _corrupt(subject, headers(good, rows=5), body)
    assert "not UTF-8" in _corrupt(subject, headers(good), b'{"seq":1,"a":"\xff"}\n' + row(2))
    assert "NDJSON" in _corrupt(subject, headers(good), b"not json\n" + row(2))
    assert "JSON values" in _corrupt(subject, headers(good), row(1) + b"," + row(2))
    assert "lines hold 1..2" in _corrupt(subject, {**headers(good), "Edgepub-Last-Seq": "3"}, body)
    assert "after" in _corrupt(subject, headers([row(2), row(2)]), row(2) + b"\n" + row(2))
    assert "no lines" in _corrupt(subject, headers(good), b"\n\n")
    assert "no pipeline" in _corrupt(subject, {**headers(good), "Edgepub-Pipeline": "a.b"}, body)
    assert "not an edge subject" in _corrupt("edgepub.other", headers(good), body)
    assert "range" in _corrupt(subject, headers([gap(1, 5, 2)]), gap(1, 5, 2))


@st.composite
def edge_logs(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """An edge's local log: rows, and evicted ranges as one gap line numbered at either end
    of the range it stands for (so numbering skips across it)."""
    out: list[tuple[int, bytes]] = []
    seq = 1
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.integers(0, 5)) == 0:
            width = draw(st.integers(1, 20))
            at = seq if draw(st.booleans()) else seq + width - 1
            out.append((at, gap(at, seq, seq + width - 1)))
            seq += width
        else:
            out.append((seq, row(seq)))
            seq += 1
    return out


def _split(lines: list[bytes], rng: random.Random) -> list[list[bytes]]:
    out, i = [], 0
    while i < len(lines):
        n = rng.randint(1, 6)
        out.append(lines[i : i + n])
        i += n
    return out


def deliveries(log: list[tuple[int, bytes]], rng: random.Random) -> list[list[bytes]]:
    """An edge's pages as a stream may hold them: paged once, paged again from somewhere
    after a restart (its watermark lagged), maybe twice, some redelivered, all shuffled."""
    lines = [b for _, b in log]
    delivered = _split(lines, rng)
    for _ in range(rng.randint(0, 2)):
        delivered += _split(lines[rng.randrange(len(lines)) :], rng)
    delivered += rng.sample(delivered, k=min(3, len(delivered)))  # redeliveries
    rng.shuffle(delivered)
    return delivered


@settings(max_examples=300, deadline=None)
@given(edge_logs(), st.integers(0, 2**32))
def test_any_delivery_order_appends_every_line_once_in_order(
    log: list[tuple[int, bytes]], seed: int
) -> None:
    rng = random.Random(seed)
    delivered = deliveries(log, rng)
    queue = deque(page_of(p) for p in delivered)
    watermark, got, steps = 0, [], 0
    while queue:
        steps += 1
        assert steps < 10 * len(delivered) ** 2, "pages wait for each other forever"
        page = queue.popleft()
        decision = decisions.decide(page.range, watermark)
        if isinstance(decision, Wait):
            queue.append(page)
        elif isinstance(decision, Append):
            got += page.seqs[decisions.cut(page.seqs, decision.after) :]
            watermark = decision.watermark
    assert got == [s for s, _ in log], f"seed {seed}"
