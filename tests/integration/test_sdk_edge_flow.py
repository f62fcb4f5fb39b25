"""Edges through the SDK and the `edgepub` command across real processes: nats-server, the
publish and registry-push services, the token service and the registry (and an edge agent
where an edge must have been online). What the SDK shows is what the token service keeps
(add, duplicate, remove, list with and without the removed, replace)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edgepub import Client, Edge, EdgeList, EdgeNameTakenError, NotFoundError, PipelinePublish
from edgepub.shared import bus, subjects
from edgepub.shared.bundle import decode_bundle
from edgepub.shared.edge_messages import EdgeInfo, EdgeSeen
from edgepub.shared.schemas import decode
from support.fleet import PIPELINE, Fleet
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices, clean_environ
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)
EDGEPUB = [sys.executable, "-c", "from edgepub.cli import main; main()"]


@pytest.fixture
def token(ops: OpsServices) -> OpsServices:
    """The Ops services with the token service running (skips until it exists)."""
    if "token" not in ops:
        ops.start("token")
    return ops


@pytest.fixture
def published(token: OpsServices, client: Client, model_file: Path) -> Iterator[PipelinePublish]:
    model = client.upload_model("edge-rf", model_file)
    pipeline = client.build_pipeline("edge-demo").add_model_step(model)
    yield pipeline.publish(progress=False)


def test_add_edge_returns_a_bundle_for_that_edge(
    published: PipelinePublish, token: OpsServices
) -> None:
    added = published.add_edge("shop-1", tags=["eu"])
    bundle = added.docker_run_variables["EDGE_BUNDLE"]
    assert added.edge_bundles["shop-1"] == bundle
    assert added.id == published.id and "EDGE_BUNDLE" not in published.docker_run_variables
    decoded = decode_bundle(bundle)
    assert decoded.edge_name == "shop-1"
    assert decoded.pipeline_url == published.pipeline_url
    assert decoded.workspace_id == published.workspace_id
    assert f"-e EDGE_BUNDLE={bundle}" in repr(added)
    assert "docker run -v $PERSISTENT_VOLUME_DIR:/persist" in repr(added)
    token.assert_no_secret(decoded.join_token)


def test_list_edges_shows_a_new_edge_pending_and_never_seen(
    published: PipelinePublish, client: Client
) -> None:
    published.add_edge("shop-1", tags=["eu"])
    pipeline = client.build_pipeline("edge-demo")
    edges = pipeline.list_edges()
    assert isinstance(edges, EdgeList) and [e.name for e in edges] == ["shop-1"]
    edge = edges[0]
    assert (edge.credential_state, edge.connection, edge.last_seen) == ("pending", "never", None)
    assert edge.tags == ["eu"]
    assert edge.should_run_publish == published.id
    assert edge.pipeline_version_id == published.pipeline_version_id
    assert edge.spiffe_id.endswith(f"/ns/deployments/edge/{edge.id}")
    assert edge.docker_run.startswith("docker run -v $PERSISTENT_VOLUME_DIR:/persist")
    assert [e.name for e in published.list_edges()] == ["shop-1"]
    shown = client.get_publish(published.id)
    assert list(shown.edge_bundles) == ["shop-1"] and "Edge: shop-1" in repr(shown)
    assert [list(p.edge_bundles) for p in pipeline.publishes()] == [["shop-1"]]


def test_a_duplicate_name_says_how_to_free_it(published: PipelinePublish) -> None:
    published.add_edge("shop-1")
    with pytest.raises(EdgeNameTakenError) as caught:
        published.add_edge("shop-1")
    assert "shop-1" in caught.value.message and "remove_edge" in caught.value.message


def test_remove_frees_the_name_and_unknown_edges_are_not_found(
    published: PipelinePublish, client: Client
) -> None:
    first = published.add_edge("shop-1").edge_bundles["shop-1"]
    with pytest.raises(NotFoundError, match="ghost"):
        client.remove_edge("ghost")
    assert published.remove_edge("shop-1") is None
    assert published.list_edges() == []
    again = published.add_edge("shop-1").edge_bundles["shop-1"]
    assert decode_bundle(again).join_token != decode_bundle(first).join_token
    assert client.remove_edge("shop-1") is None


def test_replace_moves_the_edges_to_the_new_publish(
    published: PipelinePublish, client: Client
) -> None:
    published.add_edge("shop-1")
    pipeline = client.build_pipeline("edge-demo")
    pipeline.add_model_step(client.get_model("edge-rf"))
    new = pipeline.publish(replaces=[published], progress=False)
    assert [e.name for e in new.list_edges()] == ["shop-1"]
    assert published.list_edges() == []
    assert [e.should_run_publish for e in pipeline.list_edges()] == [new.id]
    assert "Edge: shop-1\nhelm upgrade $HELM_INSTALL_NAME" in repr(new)


def _cli(args: list[str], nats: NatsServer) -> subprocess.CompletedProcess[str]:
    env = clean_environ()
    s = nats.settings()
    env.update(
        EDGEPUB_NATS_URL=s.url,
        EDGEPUB_NATS_USER=s.user or "",
        EDGEPUB_NATS_PASSWORD=s.password or "",
    )
    return subprocess.run(
        [*EDGEPUB, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_edge_add_list_remove(published: PipelinePublish, nats_server: NatsServer) -> None:
    add = _cli(["edge", "add", "cli-1", "--publish", str(published.id), "--json"], nats_server)
    assert add.returncode == 0, add.stderr
    bundle = json.loads(add.stdout)["bundle"]
    assert decode_bundle(bundle).edge_name == "cli-1"
    human = _cli(["edge", "add", "cli-2", "--publish", str(published.id)], nats_server)
    assert human.returncode == 0 and "docker run -v $PERSISTENT_VOLUME_DIR:/persist" in human.stdout

    listed = _cli(["edge", "list", "--pipeline", "edge-demo", "--json"], nats_server)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["name"] for r in rows) == ["cli-1", "cli-2"]
    assert all(set(r) == set(EdgeInfo.__struct_fields__) for r in rows)
    assert {r["credential_state"] for r in rows} == {"pending"}
    table = _cli(["edge", "list", "--publish", str(published.id)], nats_server)
    assert "cli-1" in table.stdout and "SPIFFE ID" in table.stdout

    dup = _cli(["edge", "add", "cli-1", "--publish", str(published.id)], nats_server)
    assert dup.returncode == 2 and "error [edge_name_taken]" in dup.stderr
    assert dup.stderr.count("\n") == 1
    gone = _cli(["edge", "remove", "cli-1", "--json"], nats_server)
    assert gone.returncode == 0 and json.loads(gone.stdout)["name"] == "cli-1"
    again = _cli(["edge", "remove", "cli-1"], nats_server)
    assert again.returncode == 2 and "error [not_found]" in again.stderr


# --- removed edges: hidden by default, listed revoked when asked -----------------------------


def _removed_rows(args: list[str], nats: NatsServer) -> tuple[EdgeInfo, ...]:
    """``edgepub edge list ... --json`` run as a process, its rows as the SDK types them."""
    listed = _cli(["edge", "list", *args, "--json"], nats)
    assert listed.returncode == 0, listed.stderr
    return msgspec.json.decode(listed.stdout, type=tuple[EdgeInfo, ...])


def test_a_removed_edge_is_hidden_by_default_and_listed_revoked_when_asked(
    published: PipelinePublish, client: Client, nats_server: NatsServer
) -> None:
    published.add_edge("shop-1")
    published.add_edge("shop-2")
    added = {e.name: e for e in published.list_edges()}
    client.remove_edge("shop-1")
    pipeline = client.build_pipeline("edge-demo")

    hidden = [client.list_edges(), pipeline.list_edges(), published.list_edges()]
    assert [[e.name for e in edges] for edges in hidden] == [["shop-2"]] * 3
    shown = [
        client.list_edges(include_removed=True),
        pipeline.list_edges(include_removed=True),
        published.list_edges(include_removed=True),
    ]
    revoked_at = set()
    for edges in shown:
        assert sorted(e.name for e in edges) == ["shop-1", "shop-2"]  # each once
        by_name = {e.name: e for e in edges}
        removed, live = by_name["shop-1"], by_name["shop-2"]
        assert (removed.id, live.id) == (added["shop-1"].id, added["shop-2"].id)
        assert (removed.credential_state, removed.connection) == ("revoked", "never")
        assert removed.revoked_at is not None and removed.revoked_at >= removed.created_at
        assert (live.credential_state, live.revoked_at) == ("pending", None)
        revoked_at.add(removed.revoked_at)
    assert len(revoked_at) == 1  # one removal time, the record's

    rows = {r.name: r for r in _removed_rows(["--pipeline", "edge-demo", "--removed"], nats_server)}
    assert sorted(rows) == ["shop-1", "shop-2"]
    cli_removed = rows["shop-1"]
    assert (cli_removed.id, cli_removed.credential_state) == (added["shop-1"].id, "revoked")
    assert {cli_removed.revoked_at} == revoked_at
    assert [r.name for r in _removed_rows(["--pipeline", "edge-demo"], nats_server)] == ["shop-2"]
    table = _cli(["edge", "list", "--publish", str(published.id), "--removed"], nats_server)
    assert table.returncode == 0 and "revoked (removed " in table.stdout


async def _seen(nats: NatsServer, name: str) -> EdgeSeen | None:
    nc = await bus.connect(nats.settings("token"), name="test-edges-seen")
    try:
        kv = await nc.jetstream().key_value(subjects.KV_EDGES)
        entry = await kv.get(f"seen.{name}")
        return decode(EdgeSeen, entry.value or b"")
    finally:
        await nc.close()


def _online(pipeline_edges: EdgeList) -> Edge | None:
    edge = next(iter(pipeline_edges), None)
    if edge is not None and (edge.credential_state, edge.connection) == ("joined", "online"):
        return edge
    return None


def test_a_removed_agent_is_revoked_and_offline_and_its_name_added_again_is_a_new_edge(
    token: OpsServices,
    client: Client,
    registry: RegistryServer,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    """The design frees the name entirely: the re-added edge's record replaces the removed
    one's (``edge.<name>``), so after the re-add only the new edge is listed, removed or not."""
    fleet = Fleet(client, registry, nats_server, tmp_path)
    try:
        agent = fleet.agent("shop-1", fleet.bundle("shop-1"))
        agent.wait_event("Node attestation was successful.", timeout=60)
        pipeline = client.build_pipeline(PIPELINE)
        live = wait_for(lambda: _online(pipeline.list_edges()), 60, "shop-1 joined and online")
        assert live.last_seen is not None

        client.remove_edge("shop-1")
        assert pipeline.list_edges() == [] and fleet.publish.list_edges() == []
        (removed,) = pipeline.list_edges(include_removed=True)
        assert (removed.id, removed.name) == (live.id, "shop-1")
        # its last heartbeat is seconds old, yet a removed edge is never online
        assert (removed.credential_state, removed.connection) == ("revoked", "offline")
        assert removed.revoked_at is not None and live.last_seen <= removed.revoked_at
        assert removed.last_seen is not None and removed.last_seen >= live.last_seen
        assert removed.credential_expires_at == removed.revoked_at
        (row,) = _removed_rows(["--pipeline", PIPELINE, "--removed"], nats_server)
        assert (row.id, row.credential_state, row.connection, row.revoked_at) == (
            live.id,
            "revoked",
            "offline",
            removed.revoked_at,
        )

        again = fleet.publish.add_edge("shop-1")
        assert decode_bundle(again.edge_bundles["shop-1"]).edge_name == "shop-1"
        for listed in (pipeline.list_edges(), pipeline.list_edges(include_removed=True)):
            (new,) = listed
            assert new.id != live.id and new.name == "shop-1"
            assert (new.credential_state, new.connection, new.last_seen) == (
                "pending",
                "never",
                None,
            )
            assert new.revoked_at is None
        # the old agent's last heartbeat is still in seen.shop-1: it is not the new edge's
        old_report = asyncio.run(_seen(nats_server, "shop-1"))
        assert old_report is not None and old_report.at < new.created_at
        rows = _removed_rows(["--pipeline", PIPELINE, "--removed"], nats_server)
        assert [(r.id, r.credential_state) for r in rows] == [(new.id, "pending")]
    finally:
        for started in fleet.agents:
            started.kill()
