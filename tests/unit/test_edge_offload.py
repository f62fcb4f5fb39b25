"""What runs where and how much may wait, without a server: the measured run cost, the
admission bound, the loop-lag measure and the hand-off's byte bound."""

from __future__ import annotations

import asyncio

import pytest

from edgepub.edge_agent.errors import Overloaded
from edgepub.edge_agent.inference_log import InferenceEvent, LogHandoff, ModelUsed
from edgepub.edge_agent.looplag import STALL_S, LoopLag
from edgepub.edge_agent.metrics import EdgeMetrics
from edgepub.edge_agent.offload import INLINE_RUN_NS, RISE, Offload, RunCost


def test_a_run_is_quick_once_measured_so() -> None:
    cost = RunCost()
    assert not cost.quick(1)  # never measured: the first run goes to a worker
    cost.observe(18, 18 * 200)
    assert cost.quick(18) and cost.quick(INLINE_RUN_NS // 200)
    assert not cost.quick(INLINE_RUN_NS // 200 + 1)


def test_one_slow_run_raises_the_estimate_by_at_most_rise() -> None:
    cost = RunCost()
    cost.observe(10, 1000)  # 100 ns per element
    cost.observe(10, 10_000_000)  # lost its core for 10 ms
    assert cost.ns_per_element == pytest.approx(100 * RISE)
    for _ in range(60):  # really slower: caught up with in a few dozen runs
        cost.observe(10, 10_000_000)
    assert cost.ns_per_element == pytest.approx(1_000_000)
    cost.observe(10, 500)  # faster: followed at once
    assert cost.ns_per_element == pytest.approx(50)


def test_admission_refuses_past_the_limit_and_frees_on_exit() -> None:
    offload = Offload(workers=1, max_inflight=2)
    try:
        with offload.slot(), offload.slot():
            with pytest.raises(Overloaded) as info, offload.slot():
                pass
            assert offload.inflight == 2
        assert offload.inflight == 0
        refusal = info.value
        assert refusal.status == 503 and refusal.code == "overloaded"
        assert "EDGEPUB_MAX_INFLIGHT" in refusal.message
        assert refusal.headers() == [(b"retry-after", b"1")]
        with pytest.raises(ValueError), offload.slot():
            raise ValueError("a failed request")
        assert offload.inflight == 0
        assert asyncio.run(offload.run(sum, [1, 2])) == 3
    finally:
        offload.close()


def test_loop_lag_counts_stalls() -> None:
    metrics = EdgeMetrics()
    lag = LoopLag(metrics)
    for value in (0.0, 0.01, STALL_S - 0.001, STALL_S, 2.0):
        lag.observe(value)
    assert lag.stalls.get() == 2 and lag.largest == 2.0
    text = metrics.render()
    assert "edgepub_edge_event_loop_stalls_total 2" in text
    assert 'edgepub_edge_event_loop_lag_seconds_bucket{le="0.25"} 4' in text  # le: at most
    assert "edgepub_edge_event_loop_lag_max_seconds 2" in text


def event(n: int) -> InferenceEvent:
    return InferenceEvent(
        time=n,
        pipeline="p",
        pipeline_version="v",
        records=1,
        inputs={"x": [n]},
        outputs={"y": [n]},
        elapsed_ns=(1,),
        model_versions=(ModelUsed("m", "1", "ab"),),
        partition="e",
    )


def test_hand_off_drops_and_counts_past_its_bytes() -> None:
    handoff = LogHandoff(capacity=100, max_bytes=1000)
    assert handoff.offer(event(0), 600)
    assert not handoff.offer(event(1), 600)  # 1200 > 1000: dropped, never waited for
    assert handoff.offer(event(2), 400)
    assert not handoff.offer(event(3), 1)
    assert (handoff.offered, handoff.dropped, handoff.queued_bytes) == (2, 2, 1000)
    assert [e.time for e in handoff.take_nowait(1)] == [0]
    assert handoff.queued_bytes == 400
    assert not handoff.offer(event(4), 1001)  # bigger than the whole budget
    assert handoff.offer(event(5), 600)
    assert [e.time for e in handoff.take_nowait(10)] == [2, 5] and handoff.queued_bytes == 0
