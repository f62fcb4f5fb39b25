"""What a heartbeat carries since issue 12: traffic over the interval, the local log, a
failed assignment. Bounds on the wire (hostile values refused, naming the field; old
messages decode), the latency window's percentiles and bounded memory, the token service
turning ages into times, the swapper's failure record and the local log's figures."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.edge_agent.local_log import SqliteLog
from edgepub.edge_agent.metrics import WINDOW_BOUNDS_S, EdgeMetrics, Window
from edgepub.edge_agent.swap import Swapper
from edgepub.services.token.handlers import seen_of
from edgepub.shared.edge_messages import EdgeSeen, Heartbeat, LogReport, SwapFailed, Traffic
from support.waiting import async_wait_for

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MiB = 1 << 20


def beat(**fields: Any) -> bytes:
    return msgspec.json.encode({"status": "serving", **fields})


GOOD = {
    "running_publish_id": 3,
    "running_version": "v3",
    "running_for_s": 12.5,
    "traffic": {
        "interval_s": 10.0,
        "requests": 100,
        "errors": 2,
        "rate_per_s": 10.0,
        "p50_ms": 1.5,
        "p95_ms": 7.0,
    },
    "log": {
        "backlog_rows": 5,
        "backlog_bytes": 4096,
        "oldest_unsent_age_s": 3.0,
        "last_ack_age_s": 1.0,
    },
    "failed": {"publish_id": 4, "reason": "HTTP 503", "attempts": 2, "for_s": 20.0},
}


def test_a_full_heartbeat_decodes() -> None:
    hb = msgspec.json.decode(beat(**GOOD), type=Heartbeat)
    assert hb.traffic == Traffic(
        interval_s=10.0, requests=100, errors=2, rate_per_s=10.0, p50_ms=1.5, p95_ms=7.0
    )
    assert hb.log == LogReport(
        backlog_rows=5, backlog_bytes=4096, oldest_unsent_age_s=3.0, last_ack_age_s=1.0
    )
    assert hb.failed == SwapFailed(publish_id=4, reason="HTTP 503", attempts=2, for_s=20.0)


def test_an_old_agents_heartbeat_decodes() -> None:
    hb = msgspec.json.decode(
        beat(running_publish_id=3, running_version="v3", agent_version="0.1.0", backlog=7),
        type=Heartbeat,
    )
    assert (hb.traffic, hb.log, hb.failed, hb.running_for_s) == (None, None, None, None)
    seen = seen_of(hb, NOW)
    assert seen.backlog == 7 and seen.log is None and seen.running_since is None


def test_an_old_seen_record_decodes() -> None:
    old = msgspec.json.encode({"at": NOW.isoformat(), "status": "serving", "backlog": 3})
    seen = msgspec.json.decode(old, type=EdgeSeen)
    assert (seen.traffic, seen.log, seen.failed, seen.running_since) == (None, None, None, None)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"traffic": {"interval_s": -1.0}}, "$.traffic.interval_s"),
        ({"traffic": {"interval_s": 1e400}}, "$.traffic.interval_s"),
        ({"traffic": {"interval_s": 1.0, "requests": -1}}, "$.traffic.requests"),
        ({"traffic": {"interval_s": 1.0, "requests": 2**64}}, "$.traffic.requests"),
        ({"traffic": {"interval_s": 1.0, "errors": "many"}}, "$.traffic.errors"),
        ({"traffic": {"interval_s": 1.0, "rate_per_s": 1e13}}, "$.traffic.rate_per_s"),
        ({"traffic": {"interval_s": 1.0, "p50_ms": -0.1}}, "$.traffic.p50_ms"),
        ({"traffic": {"interval_s": 1.0, "p95_ms": 1e300}}, "$.traffic.p95_ms"),
        ({"traffic": {"requests": 1}}, "interval_s"),
        ({"log": {"backlog_rows": -5}}, "$.log.backlog_rows"),
        ({"log": {"backlog_bytes": 2**63}}, "$.log.backlog_bytes"),
        ({"log": {"oldest_unsent_age_s": -1}}, "$.log.oldest_unsent_age_s"),
        ({"log": {"last_ack_age_s": 1e20}}, "$.log.last_ack_age_s"),
        ({"failed": {"publish_id": 0, "reason": "x"}}, "$.failed.publish_id"),
        ({"failed": {"publish_id": 1, "reason": "x" * 257}}, "$.failed.reason"),
        ({"failed": {"publish_id": 1, "reason": "x", "attempts": -1}}, "$.failed.attempts"),
        ({"failed": {"publish_id": 1, "reason": "x", "for_s": -1}}, "$.failed.for_s"),
        ({"running_for_s": -3}, "$.running_for_s"),
        ({"traffic": [1, 2]}, "$.traffic"),
    ],
)
def test_hostile_values_are_refused_naming_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(beat(**patch), type=Heartbeat)
    assert field in str(err.value)


def test_non_finite_numbers_do_not_parse() -> None:
    for text in (b'{"running_for_s": NaN}', b'{"running_for_s": Infinity}'):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            msgspec.json.decode(text, type=Heartbeat)


def test_the_token_service_makes_ages_times_on_its_clock() -> None:
    seen = seen_of(msgspec.json.decode(beat(**GOOD), type=Heartbeat), NOW)
    assert seen.at == NOW
    assert seen.running_since == NOW - timedelta(seconds=12.5)
    assert seen.traffic is not None and seen.traffic.requests == 100
    assert seen.log is not None
    assert seen.log.oldest_unsent_at == NOW - timedelta(seconds=3)
    assert seen.log.last_ack_at == NOW - timedelta(seconds=1)
    assert (seen.log.backlog_rows, seen.log.backlog_bytes) == (5, 4096)
    assert seen.failed is not None
    assert (seen.failed.publish_id, seen.failed.reason, seen.failed.attempts) == (4, "HTTP 503", 2)
    assert seen.failed.since == NOW - timedelta(seconds=20)
    # and it round-trips through KV's encoding
    assert msgspec.json.decode(msgspec.json.encode(seen), type=EdgeSeen) == seen


# --- the latency window ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_window_percentiles_and_reset() -> None:
    clock = Clock()
    w = Window(clock)
    assert w.take().requests == 0  # an empty window: no percentiles
    clock.t += 10.0
    for i in range(1, 101):  # 1 ms .. 100 ms
        w.observe(i / 1000, error=i % 10 == 0)
    t = w.take()
    assert (t.requests, t.errors, t.interval_s, t.rate_per_s) == (100, 10, 10.0, 10.0)
    assert t.p50_ms is not None and t.p95_ms is not None
    assert 50.0 <= t.p50_ms <= 50.0 * 1.12
    assert 95.0 <= t.p95_ms <= 95.0 * 1.12
    clock.t += 5.0
    again = w.take()
    assert (again.requests, again.errors, again.p50_ms, again.p95_ms) == (0, 0, None, None)
    assert again.interval_s == 5.0


def test_window_overflow_and_tiny_values() -> None:
    w = Window(Clock())
    w.observe(0.0, False)
    w.observe(10_000.0, False)  # beyond the top bound: counted, reported as the top bound
    assert w.quantile(0.0) == WINDOW_BOUNDS_S[0]
    assert w.quantile(1.0) == WINDOW_BOUNDS_S[-1]
    t = w.take()
    assert t.p95_ms == pytest.approx(WINDOW_BOUNDS_S[-1] * 1000)
    assert msgspec.json.decode(msgspec.json.encode(t), type=Traffic) == t  # within bounds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1))
def test_window_quantiles_bound_the_true_ones(values: list[float]) -> None:
    w = Window(Clock())
    size = len(w.counts)
    for v in values:
        w.observe(v, False)
    assert len(w.counts) == size  # memory does not grow with traffic
    ordered = sorted(values)
    for q in (0.5, 0.95):
        true = ordered[max(1, math.ceil(q * len(values))) - 1]
        got = w.quantile(q)
        assert got is not None
        assert got >= true  # an upper bound of the bucket holding it
        assert got <= max(true * 1.12, WINDOW_BOUNDS_S[0]) * (1 + 1e-9)


def test_metrics_count_inference_requests_only_in_the_window() -> None:
    m = EdgeMetrics()
    m.observe("records", 200, 0.002, infer=True)
    m.observe("oip", 400, 0.001, infer=True)
    m.observe("admin", 200, 0.0001)  # health, metrics: not traffic
    t = m.window.take()
    assert (t.requests, t.errors) == (2, 1)
    assert "edgepub_edge_requests_total" in m.render()


# --- the swapper's failure record -----------------------------------------------------------


def test_the_swapper_remembers_the_newest_assignments_failure_until_it_works(
    tmp_path: Path,
) -> None:
    from test_edge_swapper import FakePipeline, assignment, scenario, url

    async def body(swapper: Swapper, host: Any) -> Any:
        host.failures[url("v2")] = 2
        await swapper.assign(assignment(2, "v2"))
        failure = swapper.failure
        first = None if failure is None else (failure.publish_id, failure.reason)
        await async_wait_for(
            lambda: swapper.running is not None and swapper.running.pipeline_version == "v2",
            5.0,
            "v2",
        )
        return first, swapper.failure, swapper.running_since

    (first, after, since), _ = scenario(tmp_path, body)
    assert first is not None and first[0] == 2 and "HTTP 503" in first[1]
    assert after is None  # it worked: nothing failed any more
    assert since is not None and since <= time.monotonic()
    assert FakePipeline  # (imported for the scenario's types)


# --- the local log's figures ------------------------------------------------------------------


def test_the_log_reports_backlog_oldest_unsent_and_last_ack(tmp_path: Path) -> None:
    from test_local_log import event

    async def main() -> tuple[LogReport, LogReport, LogReport]:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        empty = log.report()
        await log.write([event(10), event(5)])  # logged at 1_700_000_000_000 ms
        full = log.report()
        await log.ack(log.last_seq)
        await log.flush()
        await async_wait_for(lambda: log.backlog == 0, 5.0, "the ack stored")
        done = log.report()
        await log.close()
        return empty, full, done

    empty, full, done = asyncio.run(main())
    # a fresh file holds one line to ship: its reset gap line (local_log.py)
    assert (empty.backlog_rows, empty.oldest_unsent_age_s, empty.last_ack_age_s) == (1, None, None)
    assert full.backlog_rows == 1 + 15 and full.backlog_bytes > 0
    assert full.oldest_unsent_age_s == pytest.approx(time.time() - 1_700_000_000, abs=60)
    assert full.last_ack_age_s is None  # nothing acknowledged yet
    assert (done.backlog_rows, done.backlog_bytes, done.oldest_unsent_age_s) == (0, 0, None)
    assert done.last_ack_age_s is not None and done.last_ack_age_s < 60
    assert msgspec.json.decode(msgspec.json.encode(full), type=LogReport) == full


def test_the_oldest_unsent_row_moves_with_partial_acks(tmp_path: Path) -> None:
    from test_local_log import event

    async def main() -> list[int | None]:
        log = await SqliteLog.open(tmp_path / "log.db", bound_bytes=64 * MiB)
        s = log.last_seq  # a fresh file's rows follow its reset line
        first = event(4)
        second = msgspec.structs.replace(first, time=first.time + 5000)
        await log.write([first])
        await log.write([second])
        seen = [log.oldest_unacked_ms]
        await log.ack(s + 2)  # inside the first block
        await log.flush()
        seen.append(log.oldest_unacked_ms)
        await log.ack(s + 4)  # the first block all acked
        await log.flush()
        seen.append(log.oldest_unacked_ms)
        await log.close()
        return seen

    assert asyncio.run(main()) == [1_700_000_000_000, 1_700_000_000_000, 1_700_000_005_000]
