"""The fault matrix's cells about the broker's max_payload (see test_log_fault_matrix.py),
against a broker whose messages are small (64 KiB): pages are split by bytes, not only by
rows, and a row bigger than a message ships as a ``too_large`` gap of one row. Each ends
with sent = rows at Ops + rows counted in gap records, no seq twice, in order per edge.

The small broker is this module's own ``nats_server``: every other cell of the matrix runs
against the stack's default max_payload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from support.edge import http, make_scaler
from support.fleet import PIPELINE, Fleet
from support.servers import NatsServer, RegistryServer

MAX_PAYLOAD = 64 * 1024
WIDE = 4000  # features of the wide model: a row of zeros fits a message, one of
# 0.123456789s (and their halves out) is ~90 KiB of NDJSON and does not


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A broker whose messages are small: pages are split by bytes, not only by rows."""
    server = NatsServer(tmp_path / "nats", max_payload=MAX_PAYLOAD)
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


def test_a_row_larger_than_max_payload_ships_as_a_too_large_gap(
    client: Client, registry: RegistryServer, nats_server: NatsServer, tmp_path: Path
) -> None:
    model = make_scaler(tmp_path / "wide.onnx", features=WIDE)
    with Fleet(client, registry, nats_server, tmp_path, model_path=model) as fleet:
        agent = fleet.agent("huge", fleet.bundle("huge"))
        agent.wait_event("Node attestation was successful.", timeout=30)
        session = http()
        sent, large = 0, 0
        for i in range(30):
            value = 0.123456789 if i % 10 == 4 else 0.0  # rows 4, 14 and 24 are too large
            body = [{fleet.input: [value] * WIDE}]
            resp = session.post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
            assert resp.status_code == 200, resp.text
            sent, large = sent + 1, large + (value > 0)
        held = fleet.at_ops({"huge": sent})
        assert +held.gaps["huge"] == {"too_large": large}, held.gaps["huge"]
        assert held.rows["huge"] == sent - large
