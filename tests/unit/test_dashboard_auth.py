"""The dashboard's session cookies and chart markup (pure parts of the dashboard)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.dashboard import charts
from edgepub.services.dashboard.auth import SESSION_S, Logins
from edgepub.services.dashboard.web import parse_range


def test_a_session_names_its_user_until_it_expires_and_only_for_this_process() -> None:
    logins, other = Logins(["nats://127.0.0.1:1"]), Logins(["nats://127.0.0.1:1"])
    for i in range(200):  # MACs hold every byte value, "|" included
        cookie = logins.session(f"user-{i}", now=1000.0)
        assert logins.user_of(cookie, now=1000.0 + SESSION_S - 1) == f"user-{i}"
        assert logins.user_of(cookie, now=1000.0 + SESSION_S + 1) is None
        assert other.user_of(cookie, now=1000.0) is None


@given(st.text(max_size=300))
def test_any_cookie_value_is_refused_or_read_never_a_crash(value: str) -> None:
    assert Logins(["nats://127.0.0.1:1"]).user_of(value) is None


def test_a_tampered_session_is_refused() -> None:
    logins = Logins(["nats://127.0.0.1:1"])
    cookie = logins.session("admin")
    import base64

    raw = bytearray(base64.urlsafe_b64decode(cookie))
    raw[0] ^= 1  # another user name, same MAC
    assert logins.user_of(base64.urlsafe_b64encode(bytes(raw)).decode()) is None


def test_ranges_default_to_the_last_hour_and_name_what_is_wrong() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_range({}, now) == (now - timedelta(hours=1), now)
    start, end = parse_range({"start": "2026-12-01T00:00:00", "end": "2026-12-02T00:00:00Z"}, now)
    assert start.tzinfo is not None and end - start == timedelta(days=1)
    for query, named in [
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-12-02T13:00:00Z"}, "before"),
        ({"start": "2026-01-01T00:00:00Z"}, "at most"),
    ]:
        with pytest.raises(ValueError, match=named):
            parse_range(query, now)


def test_a_chart_escapes_names_and_folds_many_series() -> None:
    t0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    series = {
        f"<edge-{i}>": [(t0 + timedelta(minutes=m), float(i + m)) for m in range(5)]
        for i in range(12)
    }
    svg = charts.line_chart(series, start=t0, end=t0 + timedelta(minutes=5), title="t", unit="u")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<edge-" not in svg and "&lt;edge-11&gt;" in svg
    assert svg.count("<polyline") == charts.MAX_SERIES and ">other</text>" in svg
    empty = charts.line_chart({}, start=t0, end=t0 + timedelta(hours=1), title="t", unit="u")
    assert "no rows in this range" in empty


def test_a_push_differs_from_the_last_only_when_more_than_the_clock_moved() -> None:
    from edgepub.services.dashboard.web import signature

    a = {"now": 1, "feed": {"live": True}, "rows": [{"name": "e", "last_seen_age_s": 1.0}]}
    b = {"now": 2, "feed": {"live": False}, "rows": [{"name": "e", "last_seen_age_s": 2.0}]}
    c = {"now": 2, "feed": {"live": True}, "rows": [{"name": "f", "last_seen_age_s": 2.0}]}
    assert signature(a) == signature(b) != signature(c)
