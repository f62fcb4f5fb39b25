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


# --- group commit: one atomic batch for the pages of one edge that chain ---------------


@dataclass(frozen=True, slots=True)
class Member:
    """A page of the group: its lines above ``after`` are appended (``after`` is the
    watermark for the first page, the previous page's end for the others)."""

    index: int  # in the queued pages given to ``group``
    after: int


@dataclass(frozen=True, slots=True)
class Group:
    """What one round does with an edge's queued pages.

    ``members`` chain from the watermark, in the order given, and are appended as one atomic
    batch whose commit moves the watermark to ``watermark``; ``covered`` are in Ops already;
    ``waiting`` have a hole before them that nothing queued fills; ``later`` are decided in
    the next round (past the group's size, or reaching only into what the group appends: if
    its batch is refused they are not covered after all)."""

    members: tuple[Member, ...]
    watermark: int  # the members' last end; the given watermark when there are none
    covered: tuple[int, ...]
    waiting: tuple[tuple[int, Wait], ...]
    later: tuple[int, ...]


def group(
    watermark: int,
    ranges: Sequence[PageRange],
    *,
    max_pages: int,
    sizes: Sequence[int] | None = None,
    max_bytes: int | None = None,
) -> Group:
    """Split an edge's queued pages (in fetch order, which is stream order) against its
    watermark. A page joins the group when it reaches the group's end (``reach <= end +
    1``) and goes past it; the group takes at most ``max_pages`` pages and, past its first,
    at most ``max_bytes`` of ``sizes`` in all. Nothing past a hole is appended: a page after
    a hole joins only once an earlier page in the queue fills it."""
    if max_pages < 1:
        raise ValueError(f"a group needs max_pages >= 1, not {max_pages}")
    members: list[Member] = []
    covered: list[int] = []
    later: list[int] = []
    skipped: list[int] = []  # a hole before them when they came up
    end, used, full = watermark, 0, False
    for i, r in enumerate(ranges):
        if r.end <= watermark:
            covered.append(i)
            continue
        size = 0 if sizes is None else sizes[i]
        if full or r.end <= end:  # full, or within what the group appends
            later.append(i)
            continue
        if r.reach > end + 1:
            skipped.append(i)
            continue
        if members and (
            len(members) >= max_pages or (max_bytes is not None and used + size > max_bytes)
        ):
            full = True
            later.append(i)
            continue
        members.append(Member(index=i, after=end))
        end, used = r.end, used + size
    waiting: list[tuple[int, Wait]] = []
    for i in skipped:
        r = ranges[i]
        if r.reach <= end + 1:  # a later member filled its hole: it can go next round
            later.append(i)
        else:
            waiting.append((i, Wait(missing_from=end + 1, missing_to=r.reach - 1)))
    return Group(
        members=tuple(members),
        watermark=end,
        covered=tuple(covered),
        waiting=tuple(waiting),
        later=tuple(sorted(later)),
    )
