"""The fault matrix of issue 10, end to end across real processes: edge agents (SQLite
local log, shipper), nats-server with the auth callout, the token service, the log
collector and the pipeline log. Each cell sends a known number of inference rows and
asserts at the end: sent = rows at Ops + rows counted in gap records, no edge sequence
number twice, strictly increasing per edge.

Collector-side cells (a collector SIGKILLed between append and ack, a replay past the
duplicate window, two collectors, a corrupt page) are in test_log_collector_faults.py;
the local log's own (SIGKILL while appending, the bound, a failed disk) in
test_local_log*.py. This file drives them with real agents.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from support.fleet import Fleet
from support.ops_log import ops_log
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for


@pytest.fixture
def fleet(
    client: Client, registry: RegistryServer, nats_server: NatsServer, tmp_path: Path
) -> Iterator[Fleet]:
    f = Fleet(client, registry, nats_server, tmp_path)
    try:
        yield f
    finally:
        for agent in f.agents:
            agent.kill()


def test_agent_sigkill_while_shipping(fleet: Fleet) -> None:
    bundle = fleet.bundle("kill-9")
    agent = fleet.agent("kill-9", bundle)
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 150)
    fleet.logged(agent, sent)
    agent.kill()  # mid-shipping: pages in flight, the watermark behind
    again = fleet.agent("kill-9", bundle)
    sent += fleet.send(again, 30)
    held = fleet.at_ops({"kill-9": sent})
    assert held.lost["kill-9"] == 0


def test_broker_restarted_mid_replay(fleet: Fleet) -> None:
    agent = fleet.agent("replayer", fleet.bundle("replayer"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    fleet.nats.stop()
    sent = fleet.send(agent, 200)  # a backlog built offline
    fleet.nats.start()
    wait_for(lambda: ops_log(fleet.nats).total("replayer") > 0, 60, "the replay to start")
    fleet.nats.stop()  # mid-replay
    sent += fleet.send(agent, 20)
    fleet.nats.start()
    fleet.at_ops({"replayer": sent})


def test_collector_restarted_during_an_outage_longer_than_the_duplicate_window(
    fleet: Fleet, ops: OpsServices
) -> None:
    ops.start("publish", env={"EDGEPUB_PAGES_DUPLICATE_WINDOW_S": "1"})
    agent = fleet.agent("outage", fleet.bundle("outage"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 20)
    ops["log_collector"].kill()
    sent += fleet.send(agent, 60)  # inferences go on; pages wait in the stream
    time.sleep(2.5)  # past the duplicate window
    ops.start("log_collector")
    sent += fleet.send(agent, 20)
    fleet.at_ops({"outage": sent})


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


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A broker whose messages are small: pages are split by bytes, not only by rows."""
    server = NatsServer(tmp_path / "nats", max_payload=64 * 1024)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_pages_larger_than_max_payload_are_split(fleet: Fleet) -> None:
    agent = fleet.agent("wide", fleet.bundle("wide"), PLATEAU_PAGE_SIZE="5000")
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 60, rows=50)  # 3,000 rows: ~1 MB of lines, 64 KiB messages
    held = fleet.at_ops({"wide": sent})
    assert held.pages >= 10, "pages must have been split by the payload bound"
