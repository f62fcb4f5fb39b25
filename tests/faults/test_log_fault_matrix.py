"""The fault matrix of issue 10, end to end across real processes: edge agents (SQLite
local log, shipper), nats-server with the auth callout, the token service, the log
collector and the pipeline log. Each cell sends a known number of inference rows and
asserts at the end: sent = rows at Ops + rows counted in gap records, no edge sequence
number twice, strictly increasing per edge.

A cell named "mid" something proves the fault came mid-way: the edge's own /status shows
Ops acknowledged some of its log and not all of it when the fault is injected, and what
Ops holds (or what the edge still had to send) afterwards shows rows were left.

Collector-side cells (a collector SIGKILLed between append and ack, a replay past the
duplicate window, two collectors, a corrupt page) are in test_log_collector_faults.py;
the local log's own (SIGKILL while appending, the bound, a failed disk) in
test_local_log*.py; a disk filling up under a real agent in test_edge_log_disk.py; pages
bounded by a small max_payload in test_log_fault_matrix_payload.py. This file drives them
with real agents.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

from support.edge import EdgeAgent
from support.fleet import Fleet
from support.services import OpsServices
from support.waiting import wait_for

PAGE_ROWS = 5  # small pages: a replay of a backlog takes hundreds of them
WINDOW_ROWS = 32 * PAGE_ROWS  # at most what the shipper has in flight (32 pages)
WINDOW_S = 2.0  # the pages stream's duplicate window in the cells that go past it


def offline_backlog(fleet: Fleet, agent: EdgeAgent, requests: int = 250) -> int:
    """Rows logged while Ops is away (the broker stopped), committed to the edge's log;
    the broker is back when this returns."""
    fleet.nats.stop()
    sent = fleet.send(agent, requests, rows=10)
    fleet.logged(agent, sent)
    fleet.nats.start()
    return sent


def test_agent_sigkill_mid_shipping(fleet: Fleet) -> None:
    """Killed while replaying a backlog in 5-row pages: Ops then holds some rows and not
    all (read once the stream is drained, so nothing more can arrive), and the restarted
    agent brings the rest, its re-sent pages dropped by the collector."""
    bundle = fleet.bundle("kill-9")
    agent = fleet.agent("kill-9", bundle, PLATEAU_PAGE_SIZE=str(PAGE_ROWS))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = offline_backlog(fleet, agent)
    seen = fleet.mid_shipping(agent)
    agent.kill()  # mid-shipping: pages in flight, the watermark behind, acks not stored
    left = fleet.drained()  # what reached Ops before the kill, and nothing since
    print(f"killed once {seen['shipping']}; at Ops then: {left.total('kill-9')} of {sent}")
    assert 0 < left.total("kill-9") < sent, ("not killed mid-shipping", left.total("kill-9"))
    again = fleet.agent("kill-9", bundle, PLATEAU_PAGE_SIZE=str(PAGE_ROWS))
    sent += fleet.send(again, 30)
    held = fleet.at_ops({"kill-9": sent})
    assert held.lost["kill-9"] == 0


def test_broker_restarted_mid_replay(fleet: Fleet) -> None:
    """The broker stopped while the edge replays a backlog: more rows unacked than the
    shipper can have in flight, so some were never sent before it went."""
    agent = fleet.agent("replayer", fleet.bundle("replayer"), PLATEAU_PAGE_SIZE=str(PAGE_ROWS))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = offline_backlog(fleet, agent)
    seen = fleet.mid_shipping(agent)
    fleet.nats.stop()  # mid-replay
    cut = fleet.log_view(agent)["log"]
    print(f"broker stopped once {seen['shipping']}; unsent: {cut['last_seq'] - cut['watermark']}")
    unsent = cut["last_seq"] - cut["watermark"]  # Ops can ack nothing more now
    assert unsent > WINDOW_ROWS, ("not stopped mid-replay: rows never sent must be left", cut)
    sent += fleet.send(agent, 20)
    fleet.nats.start()
    held = fleet.at_ops({"replayer": sent})
    assert held.lost["replayer"] == 0


def collector_found_in_ops(ops: OpsServices) -> int:
    """Pages a collector found Ops already held (all of them, or refused by the watermark)."""
    return sum(
        p.count_events("page_covered") + p.count_events("append_refused")
        for name, p in ops.procs.items()
        if name.startswith("log_collector")
    )


def kill_before_acks_stored(fleet: Fleet, agent: EdgeAgent, sent: int) -> dict[str, Any]:
    """SIGKILL the agent once Ops acknowledged every row it sent and before its log
    stored those acks (they reach the file within half a second): its next run ships them
    again. A moment missed is tried again with a few more rows. The log view it saw."""

    def unstored(view: dict[str, Any]) -> bool:
        log = view["log"]
        acked = log["rows_written"] >= sent and log["watermark"] == log["last_seq"]
        return bool(acked and log["backlog"] > 0)

    for _ in range(5):
        try:
            view = fleet.watch(agent, unstored, "every row acked, not stored yet", timeout=5)
        except AssertionError:
            sent += fleet.send(agent, 5)
            continue
        agent.kill()
        view["sent"], view["killed_at"] = sent, time.monotonic()
        return view
    raise AssertionError("never saw acks not stored yet (ACK_STORE_S is 0.5 s)")


def past_the_window(killed: dict[str, Any]) -> None:
    """Until the duplicate window is over for every page the killed agent had sent."""
    time.sleep(max(0.0, killed["killed_at"] + WINDOW_S * 1.5 - time.monotonic()))


def resent_pages(fleet: Fleet, agent: EdgeAgent, up_to_seq: int) -> int:
    """Pages a restarted agent shipped to reach ``up_to_seq`` again (what it re-sent)."""
    view = fleet.watch(
        agent, lambda v: v["log"]["watermark"] >= up_to_seq, "the re-sent pages to be acked"
    )
    assert view["log"]["watermark"] == view["log"]["last_seq"] == up_to_seq, view
    return int(view["shipping"]["pages"])


def test_collector_restarted_during_an_outage_longer_than_the_duplicate_window(
    fleet: Fleet, ops: OpsServices
) -> None:
    """With the collector down, the edge ships into the pages stream, is killed before it
    stored the acks and, past the duplicate window, ships those pages again: the stream
    keeps both copies, and the restarted collector appends one and drops the other."""
    ops.start("publish", env={"EDGEPUB_PAGES_DUPLICATE_WINDOW_S": str(WINDOW_S)})
    agent = fleet.agent("outage", fleet.bundle("outage"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 20)
    fleet.at_ops({"outage": sent})
    ops["log_collector"].kill()
    sent += fleet.send(agent, 60)  # inferences go on; pages wait in the stream
    killed = kill_before_acks_stored(fleet, agent, sent)  # it will ship them again
    sent, waiting = killed["sent"], fleet.pages_waiting()
    past_the_window(killed)
    again = fleet.agent("outage", None)  # same /persist
    resent = resent_pages(fleet, again, killed["log"]["last_seq"])
    assert resent > 0
    assert fleet.pages_waiting() == waiting + resent, "the stream took every re-sent page"
    ops.start("log_collector")
    sent += fleet.send(again, 20)  # inferences go on
    fleet.at_ops({"outage": sent})
    print(f"re-sent {resent} pages; found in Ops: {collector_found_in_ops(ops)}")
    assert collector_found_in_ops(ops) >= resent


def test_an_agent_resending_past_the_duplicate_window_is_dropped_by_the_collector(
    fleet: Fleet, ops: OpsServices
) -> None:
    """Ops holds every row; the agent, killed before it stored the acks, ships them again
    past the window: the collector finds each re-sent page in Ops, exactly once each."""
    ops.start("publish", env={"EDGEPUB_PAGES_DUPLICATE_WINDOW_S": str(WINDOW_S)})
    agent = fleet.agent("resend", fleet.bundle("resend"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    killed = kill_before_acks_stored(fleet, agent, fleet.send(agent, 60))
    sent = killed["sent"]
    fleet.at_ops({"resend": sent})  # Ops holds every row before any is sent again
    past_the_window(killed)  # the stream keeps no id of them
    before = collector_found_in_ops(ops)
    again = fleet.agent("resend", None)
    resent = resent_pages(fleet, again, killed["log"]["last_seq"])
    assert resent > 0
    wait_for(
        lambda: collector_found_in_ops(ops) - before >= resent, 30, "every re-sent page dropped"
    )
    sent += fleet.send(again, 20)
    fleet.at_ops({"resend": sent})
    print(f"re-sent {resent} pages; found in Ops: {collector_found_in_ops(ops) - before}")
    assert collector_found_in_ops(ops) - before == resent


def test_local_bound_reached_during_an_outage_the_gap_is_exact(fleet: Fleet) -> None:
    agent = fleet.agent("tiny", fleet.bundle("tiny"), LOCAL_INFERENCE_STORAGE="1Mi")
    agent.wait_event("Node attestation was successful.", timeout=30)
    fleet.nats.stop()
    sent = fleet.send(agent, 500, rows=10)  # ~3 MB of rows, far past 1 MiB, while offline
    fleet.nats.start()
    held = fleet.at_ops({"tiny": sent})
    assert held.lost["tiny"] > 0, "the bound should have evicted rows"


def test_the_handoff_overflowing_the_gap_is_exact(fleet: Fleet) -> None:
    # a hand-off that holds less than one request's rows: every event is dropped, counted
    agent = fleet.agent("flood", fleet.bundle("flood"), EDGEPUB_LOG_QUEUE_BYTES="1Ki")
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 30, rows=50)
    held = fleet.at_ops({"flood": sent})
    assert held.lost["flood"] > 0 and held.rows["flood"] + held.lost["flood"] == sent


def test_two_edges_replaying_at_once_and_two_collectors(fleet: Fleet, ops: OpsServices) -> None:
    ops.start("log_collector", replica=2)
    a = fleet.agent("twin-a", fleet.bundle("twin-a"))
    b = fleet.agent("twin-b", fleet.bundle("twin-b"))
    for agent in (a, b):
        agent.wait_event("Node attestation was successful.", timeout=30)
    fleet.nats.stop()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sent_a, sent_b = pool.map(lambda agent: fleet.send(agent, 150), (a, b))
    fleet.nats.start()  # both replay at once, into two collectors
    fleet.at_ops({"twin-a": sent_a, "twin-b": sent_b})


def test_an_expired_credential_mid_backlog_rejoins_and_the_backlog_arrives(
    fleet: Fleet, ops: OpsServices
) -> None:
    ops.start("token", env={"EDGEPUB_CREDENTIAL_IDLE_S": "3"})
    agent = fleet.agent("lapsed", fleet.bundle("lapsed"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 20)
    fleet.at_ops({"lapsed": sent})
    agent.stop()
    back = fleet.agent("lapsed", None)  # same /persist, but Ops stays away for too long
    fleet.nats.stop()
    sent += fleet.send(back, 60)  # the backlog
    time.sleep(3.5)
    fleet.nats.start()
    refused = back.wait_event("ops_refused", timeout=30)
    assert refused["access"] == "expired"
    back.stop()
    fleet.client.remove_edge("lapsed")
    fresh = fleet.bundle("lapsed")
    rejoined = fleet.agent("lapsed", fresh)
    rejoined.wait_event("Node attestation was successful.", timeout=30)
    fleet.at_ops({"lapsed": sent})
