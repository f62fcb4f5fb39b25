"""Which part of the pipeline log a ``logs()`` call reads (sdk/log_window.py)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.log_window import (
    CLOCK_SLACK_MS,
    FIRST_CHUNK,
    LATE_SLACK_MS,
    MAX_CHUNK,
    ONE_DATE,
    Window,
    check_limit,
    chunks_back,
    from_ms,
    to_ms,
    walked_far_enough,
    window,
)
from edgepub.shared.errors import InvalidRequestError

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_no_dates_is_the_newest_rows() -> None:
    assert window(None, None) is None


@pytest.mark.parametrize("dates", [(START, None), (None, START)])
def test_exactly_one_date_is_wallaroos_error(dates: tuple[datetime | None, ...]) -> None:
    with pytest.raises(InvalidRequestError) as err:
        window(*dates)
    assert (
        str(err.value)
        == ONE_DATE
        == ("Please provide both start datetime and end datetime together.")
    )
    assert isinstance(err.value, Exception)


def test_window_bounds_are_half_open_and_checked() -> None:
    w = window(START, START + timedelta(seconds=1))
    assert w == Window(to_ms(START), to_ms(START) + 1000)
    assert w.holds(w.start_ms) and not w.holds(w.end_ms) and w.holds(w.end_ms - 1)
    with pytest.raises(InvalidRequestError, match="after end_datetime"):
        window(START, START - timedelta(seconds=1))
    with pytest.raises(InvalidRequestError, match="datetimes"):
        window("2026-01-01", START)  # type: ignore[arg-type]


def test_naive_datetimes_are_utc() -> None:
    assert to_ms(START.replace(tzinfo=None)) == to_ms(START)
    assert from_ms(to_ms(START)) == START


def test_consumer_starts_a_clock_slack_early_and_stops_a_late_slack_after() -> None:
    w = Window(1_000_000, 2_000_000)
    assert w.consumer_start() == from_ms(1_000_000 - CLOCK_SLACK_MS)
    assert not w.past(2_000_000 + LATE_SLACK_MS)
    assert w.past(2_000_000 + LATE_SLACK_MS + 1)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "10"])
def test_bad_limits(limit: object) -> None:
    with pytest.raises(InvalidRequestError, match="limit"):
        check_limit(limit)  # type: ignore[arg-type]
    check_limit(None)
    check_limit(1)


@given(st.integers(1, 10**6), st.integers(0, 10**6))
def test_chunks_cover_the_stream_back_once(first: int, span: int) -> None:
    last = first + span
    chunks = list(chunks_back(first, last))
    assert chunks[0][1] == last + 1 and chunks[-1][0] == first
    for (lo, _), (lo2, hi2) in itertools.pairwise(chunks):
        assert hi2 == lo and lo2 < hi2
    sizes = [hi - lo for lo, hi in chunks]
    assert all(s <= MAX_CHUNK for s in sizes)
    assert sizes[0] == min(FIRST_CHUNK, span + 1)


def test_walking_back_stops_once_no_earlier_page_can_hold_a_newer_row() -> None:
    kth = 10_000_000
    assert not walked_far_enough(100, 100, kth, 0)  # one more row than limit says "more"
    assert not walked_far_enough(150, 100, None, 0)
    assert not walked_far_enough(150, 100, kth, kth - CLOCK_SLACK_MS + 1)
    assert walked_far_enough(150, 100, kth, kth - CLOCK_SLACK_MS)
