"""Group commit's decision (pure): which of an edge's queued pages form one atomic batch,
which are covered, which wait, which are left for the next round; and any delivery order
grouped any way still ends up in Ops exactly once and in order."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_log_collector_decisions import deliveries, edge_logs, page_of

from edgepub.services.log_collector import decisions
from edgepub.services.log_collector.config import CollectorSettings
from edgepub.services.log_collector.decisions import Member, PageRange, Wait
from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env


def R(reach: int, end: int) -> PageRange:
    return PageRange(reach=reach, end=end)


def test_pages_that_chain_form_one_group_ending_at_the_last() -> None:
    g = decisions.group(0, [R(1, 10), R(11, 20), R(21, 30)], max_pages=64)
    assert g.members == (Member(0, 0), Member(1, 10), Member(2, 20))
    assert g.watermark == 30
    assert g.covered == g.waiting == g.later == ()


def test_covered_pages_are_dropped_and_the_first_is_cut_at_the_watermark() -> None:
    g = decisions.group(15, [R(1, 10), R(11, 20), R(21, 30), R(5, 15)], max_pages=64)
    assert g.covered == (0, 3)
    assert g.members == (Member(1, 15), Member(2, 20))
    assert g.watermark == 30


def test_a_page_after_a_hole_waits_and_does_not_stop_those_that_chain() -> None:
    g = decisions.group(10, [R(31, 40), R(11, 20)], max_pages=64)
    assert g.members == (Member(1, 10),)
    assert g.waiting == ((0, Wait(missing_from=21, missing_to=30)),)
    assert g.later == ()


def test_a_page_whose_hole_the_group_fills_goes_next_round() -> None:
    # stream order is not always sequence order (a shipper's retry): 21..30 came first
    g = decisions.group(10, [R(21, 30), R(11, 20)], max_pages=64)
    assert g.members == (Member(1, 10),)
    assert g.later == (0,) and g.waiting == ()


def test_nothing_chains_all_wait_from_the_watermark() -> None:
    g = decisions.group(10, [R(21, 30), R(41, 50)], max_pages=64)
    assert g.members == () and g.watermark == 10
    assert g.waiting == ((0, Wait(11, 20)), (1, Wait(11, 40)))


def test_an_overlap_with_the_group_is_cut_at_the_previous_end() -> None:
    # the edge re-paged after a restart: 16..25 overlaps 11..20
    g = decisions.group(10, [R(11, 20), R(16, 25)], max_pages=64)
    assert g.members == (Member(0, 10), Member(1, 20))
    assert g.watermark == 25


def test_a_page_inside_what_the_group_appends_is_decided_after_its_outcome() -> None:
    # covered only if the batch commits: a refused batch must not ack it
    g = decisions.group(10, [R(11, 30), R(15, 20)], max_pages=64)
    assert g.members == (Member(0, 10),)
    assert g.later == (1,) and g.covered == ()


def test_a_group_stops_at_max_pages_and_max_bytes() -> None:
    ranges = [R(10 * i + 1, 10 * i + 10) for i in range(5)]
    g = decisions.group(0, ranges, max_pages=2)
    assert [m.index for m in g.members] == [0, 1] and g.later == (2, 3, 4)
    assert g.watermark == 20
    g = decisions.group(0, ranges, max_pages=64, sizes=[100] * 5, max_bytes=250)
    assert [m.index for m in g.members] == [0, 1] and g.later == (2, 3, 4)
    # the first page always goes, however big
    g = decisions.group(0, ranges, max_pages=64, sizes=[999] * 5, max_bytes=250)
    assert [m.index for m in g.members] == [0] and g.later == (1, 2, 3, 4)
    with pytest.raises(ValueError):
        decisions.group(0, ranges, max_pages=0)


@settings(max_examples=300, deadline=None)
@given(edge_logs(), st.integers(0, 2**32), st.integers(1, 8))
def test_any_delivery_order_grouped_appends_every_line_once_in_order(
    log: list[tuple[int, bytes]], seed: int, max_pages: int
) -> None:
    rng = random.Random(seed)
    delivered = deliveries(log, rng)
    arriving = deque(page_of(p) for p in delivered)
    queue: list = []
    watermark, got, rounds = 0, [], 0
    while arriving or queue:
        rounds += 1
        assert rounds < 10 * len(delivered) ** 2, "pages wait for each other forever"
        for _ in range(rng.randint(0 if queue else 1, 4)):  # some arrive during the append
            if arriving:
                queue.append(arriving.popleft())
        g = decisions.group(watermark, [p.range for p in queue], max_pages=max_pages)
        refused = rng.random() < 0.1  # another collector moved the watermark: nothing stored
        settled = set(g.covered)
        if g.members and not refused:
            for m in g.members:
                page = queue[m.index]
                got += page.seqs[decisions.cut(page.seqs, m.after) :]
            watermark = g.watermark
            settled |= {m.index for m in g.members}
        waiting = [queue[i] for i, _ in g.waiting] if not g.members else []
        if not g.members:
            settled |= {i for i, _ in g.waiting}
        queue = [p for i, p in enumerate(queue) if i not in settled]
        arriving.extend(waiting)  # a waiting page sleeps, then is queued again
    assert got == [s for s, _ in log], f"seed {seed}"


def test_settings_name_each_bad_value() -> None:
    s = CollectorSettings.from_env(Env({}))
    assert (s.concurrency, s.batch, s.batch_pages, s.open_batches) == (128, 64, 64, 16)
    ok = CollectorSettings.from_env(
        Env({"EDGEPUB_COLLECTOR_CONCURRENCY": "1000", "EDGEPUB_COLLECTOR_BATCH_PAGES": "999"})
    )
    assert (ok.concurrency, ok.batch_pages) == (1000, 999)
    for name, value in (
        ("EDGEPUB_COLLECTOR_CONCURRENCY", "1001"),
        ("EDGEPUB_COLLECTOR_CONCURRENCY", "0"),
        ("EDGEPUB_COLLECTOR_BATCH", "0"),
        ("EDGEPUB_COLLECTOR_BATCH_PAGES", "1000"),
        ("EDGEPUB_COLLECTOR_BATCH_PAGES", "0"),
        ("EDGEPUB_COLLECTOR_OPEN_BATCHES", "51"),
        ("EDGEPUB_COLLECTOR_OPEN_BATCHES", "0"),
    ):
        with pytest.raises(ConfigError, match=f"{name}={value} "):
            CollectorSettings.from_env(Env({name: value}))
