"""Edges through the SDK and the `edgepub` command across real processes: nats-server, the
publish and registry-push services, the token service and the registry. What the SDK shows
is what the token service keeps (add, duplicate, remove, list, replace)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client, EdgeList, EdgeNameTakenError, NotFoundError, PipelinePublish
from edgepub.shared.bundle import decode_bundle
from edgepub.shared.edge_messages import EdgeInfo
from support.servers import NatsServer
from support.services import OpsServices, clean_environ

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
