"""The edge's local log when its file is corrupt or brand new, across real processes (edge
agents, nats-server with the auth callout, the token service, the log collector, the
pipeline log): sent = rows at Ops + rows counted in gap records, no edge sequence number
twice, strictly increasing per edge, and no page left waiting (every later row arrives).

- A corrupt file with an unshipped backlog: the fresh file's gap line counts exactly the
  rows Ops never got and reaches back to what Ops acknowledged, so the collector appends it
  (it used to count the acked rows too and start above the old file, and every later page
  of the edge waited for rows nothing would ever send).
- A log file deleted under an edge name Ops knows (the volume lost, /persist emptied): the
  fresh file starts at the clock's microseconds after a zero-count reset line, so its rows
  are appended (they used to start at seq 1 again and be taken as held already).
"""

from __future__ import annotations

from support.edge import http
from support.fleet import Fleet
from support.services import OpsServices
from support.sqlite_damage import damage_leaf


def log_view(url: str) -> dict[str, object]:
    view: dict[str, object] = http().get(f"{url}/status", timeout=5).json()["log"]
    return view


def test_a_corrupt_log_with_an_unshipped_backlog_ships_its_exact_count(fleet: Fleet) -> None:
    bundle = fleet.bundle("sd-rot")
    agent = fleet.agent("sd-rot", bundle)
    agent.wait_event("Node attestation was successful.", timeout=30)
    shipped = fleet.send(agent, 20)
    fleet.at_ops({"sd-rot": shipped})
    fleet.nats.stop()  # Ops unreachable: a backlog builds
    backlog = fleet.send(agent, 300)
    fleet.logged(agent, shipped + backlog)
    watermark = int(str(log_view(agent.url)["watermark"]))
    assert agent.stop() == 0  # a clean stop: the acks stored, the WAL checkpointed
    damage_leaf(agent.persist / "logs" / "inference.db", above_seq=watermark)
    fleet.nats.start()
    again = fleet.agent("sd-rot", None)  # the same /persist: its identity, the bad file
    corrupt = again.wait_event("local_log_corrupt")
    print(f"corrupt file: {corrupt['rows_lost']} rows lost ({corrupt['count_is']})")
    # exact either way; "at most" when the shipper had pages out while Ops was away
    assert corrupt["count_is"] in ("corrupt", "corrupt_at_most"), corrupt
    assert (corrupt["rows_lost"], corrupt["reaches_back_to"]) == (backlog, watermark + 1)
    after = fleet.send(again, 20)
    held = fleet.at_ops({"sd-rot": shipped + backlog + after})
    assert (held.rows["sd-rot"], held.lost["sd-rot"]) == (shipped + after, backlog)
    view = log_view(again.url)
    assert (view["corrupt_files"], view["corrupt_rows"]) == (1, backlog)


def test_a_deleted_log_under_a_known_edge_name_still_reaches_ops(
    fleet: Fleet, ops: OpsServices
) -> None:
    agent = fleet.agent("wiped", fleet.bundle("wiped"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    first = fleet.send(agent, 30)
    fleet.at_ops({"wiped": first})
    old_last = int(str(log_view(agent.url)["last_seq"]))
    assert agent.stop() == 0
    files = sorted((agent.persist / "logs").glob("inference.db*"))
    assert files
    for file in files:
        file.unlink()
    again = fleet.agent("wiped", None)  # the same identity, a brand-new log file
    assert int(str(log_view(again.url)["last_seq"])) > old_last
    more = fleet.send(again, 30)
    held = fleet.at_ops({"wiped": first + more})
    assert (held.rows["wiped"], held.lost["wiped"]) == (first + more, 0)
    covered = [
        e
        for e in ops["log_collector"].events()
        if e.get("event") == "page_covered" and e.get("edge") == "wiped"
    ]
    # a replay of the old file's pages may be covered; a page of the new one never
    assert all(int(e["last_seq"]) <= old_last for e in covered), covered
