"""What to do with one edge's page given what Ops already holds of that edge (pure).

Ops holds one number per edge, its watermark: every edge sequence number up to it is in the
pipeline log. A page accounts for the range ``[reach, end]``: its lines' sequence numbers
run from ``first`` to ``last``, and a gap line at either end may stand for a wider range
(rows evicted at the edge keep their numbers in the gap record, so numbering skips across
it). Pages of one edge tile the edge's sequence line; a page is appended only when it
touches what Ops holds (``reach <= watermark + 1``), so nothing is ever appended past a hole
that an earlier page still has to fill.

- ``end <= watermark``: Covered (a replay, a redelivery after a lost ack): ack, append nothing.
- ``reach > watermark + 1``: Wait (an earlier page of this edge is not appended yet).
- otherwise Append the lines after the watermark; the new watermark is ``end``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PageRange:
    reach: int  # the lowest edge sequence the page accounts for (<= its first line's)
    end: int  # the highest (>= its last line's)

    def __post_init__(self) -> None:
        if not 0 < self.reach <= self.end:
            raise ValueError(f"a page range needs 0 < reach <= end, not {self.reach}..{self.end}")


@dataclass(frozen=True, slots=True)
class Covered:
    """Ops holds all of it already."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Ops is missing ``missing_from .. missing_to`` before this page: an earlier page of the
    same edge has to be appended first."""

    missing_from: int
    missing_to: int


@dataclass(frozen=True, slots=True)
class Append:
    """Append the page's lines whose sequence is above ``after`` (all of them when the
    page starts past it) and move the watermark to ``watermark``."""

    after: int
    watermark: int


Decision = Covered | Wait | Append


def decide(page: PageRange, watermark: int) -> Decision:
    if page.end <= watermark:
        return Covered()
    if page.reach > watermark + 1:
        return Wait(missing_from=watermark + 1, missing_to=page.reach - 1)
    return Append(after=watermark, watermark=page.end)


def cut(seqs: Sequence[int], after: int) -> int:
    """The index of the first line to append: ``seqs`` ascend; lines at or below ``after``
    are in Ops already."""
    return bisect.bisect_right(seqs, after)


def wait_delay(attempt: int, *, base: float = 0.05, cap: float = 1.0) -> float:
    """How long a waiting page sleeps before it looks at the watermark again."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
