"""Which part of the pipeline log a ``logs()`` call reads, decided without the bus.

Two bounds relate a row's ``time`` (the edge's clock, epoch ms) to the server timestamp of
the page that carries it: a page is appended after its rows were logged, so its timestamp
is later than its rows' times, never earlier (up to ``CLOCK_SLACK_MS`` for an edge clock
ahead of the server's); and a page is normally appended within ``LATE_SLACK_MS`` of its
rows. A window read starts its consumer at ``start - CLOCK_SLACK_MS`` (no earlier page can
hold a row in the window) and stops at the first page appended after
``end + LATE_SLACK_MS``, or at the end of the stream. Rows of an edge that was offline for
longer than ``LATE_SLACK_MS`` arrive later than that: they are in the log, and a window read
with an ``end`` that late (or the newest-rows read, which has no such bound) returns them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec

from edgepub.shared.errors import InvalidRequestError

DEFAULT_LIMIT = 100
CLOCK_SLACK_MS = 5_000
LATE_SLACK_MS = 15 * 60_000
# Reading the newest rows walks back from the stream's end in chunks of stream sequence
# numbers, doubling from the first to the last size (the log holds other pipelines too).
FIRST_CHUNK = 256
MAX_CHUNK = 65_536
ONE_DATE = "Please provide both start datetime and end datetime together."


class Window(msgspec.Struct, frozen=True):
    """Rows with ``start_ms <= time < end_ms`` (epoch ms)."""

    start_ms: int
    end_ms: int

    def holds(self, time_ms: int) -> bool:
        return self.start_ms <= time_ms < self.end_ms

    def consumer_start(self) -> datetime:
        """Where the consumer starts (DeliverPolicy.BY_START_TIME)."""
        return from_ms(self.start_ms - CLOCK_SLACK_MS)

    def past(self, page_ts_ms: int) -> bool:
        """A page appended this late (and every later one) is not read."""
        return page_ts_ms > self.end_ms + LATE_SLACK_MS


def to_ms(value: datetime) -> int:
    """Epoch milliseconds; a naive datetime is taken as UTC (as the log's times are)."""
    if not isinstance(value, datetime):
        raise InvalidRequestError(
            f"start_datetime and end_datetime take datetimes, not {type(value).__name__}"
        )
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def window(start: datetime | None, end: datetime | None) -> Window | None:
    """The window of ``logs(start_datetime=, end_datetime=)``: None for the newest rows."""
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise InvalidRequestError(ONE_DATE)
    w = Window(to_ms(start), to_ms(end))
    if w.start_ms > w.end_ms:
        raise InvalidRequestError(
            f"start_datetime {start.isoformat()} is after end_datetime {end.isoformat()}"
        )
    return w


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidRequestError(f"limit takes a whole number of rows >= 1, not {limit!r}")


def chunks_back(first_seq: int, last_seq: int) -> Iterator[tuple[int, int]]:
    """Ranges ``[lo, hi)`` of stream sequence numbers from ``last_seq`` back to
    ``first_seq``, newest first, each twice the last up to MAX_CHUNK."""
    hi, size = last_seq + 1, FIRST_CHUNK
    while hi > first_seq:
        lo = max(first_seq, hi - size)
        yield lo, hi
        hi, size = lo, min(size * 2, MAX_CHUNK)


def walked_far_enough(
    held: int, limit: int, kth_newest_ms: int | None, oldest_page_ms: int
) -> bool:
    """Reading back to a page appended at ``oldest_page_ms`` holds ``held`` rows, the
    ``limit``-th newest at ``kth_newest_ms``. Earlier pages hold only rows at most
    ``oldest_page_ms + CLOCK_SLACK_MS``: once that is not after the k-th newest, none of
    them is among the newest ``limit`` (one row more than ``limit`` says more exist)."""
    if held <= limit or kth_newest_ms is None:
        return False
    return oldest_page_ms + CLOCK_SLACK_MS <= kth_newest_ms
