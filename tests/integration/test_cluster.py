"""edgepub on a three-node JetStream cluster (real nats-server nodes on loopback, routes
between them, the services and the SDK given every node's URL): every stream, bucket and
object store keeps three copies, and losing a node, even the one leading the publish
stream, ends every publish `Published` with nothing lost; an edge removed while it is
connected to another node than the token service is cut off within 2 s and refused on
every node."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from nats import errors as nats_errors

from edgepub import Client
from edgepub.shared import bus, objects, subjects
from support.edge import persisted_seed
from support.edge_bus import add_edge, admin, connect_edge, join_token, new_seed
from support.fleet import Fleet
from support.natsutil import connections_named
from support.servers import NatsCluster, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

OPS = ("publish", "registry_push", "token", "log_collector")
R3 = {"EDGEPUB_REPLICAS": "3"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster", 3)
    try:
        nodes.start()
        yield nodes
    finally:
        for node in nodes.nodes:
            node.kill()


@pytest.fixture
def cluster_ops(
    cluster: NatsCluster, registry: RegistryServer, tmp_path: Path
) -> Iterator[OpsServices]:
    services = OpsServices(cluster, registry, tmp_path / "service-logs")
    try:
        # the first provisioning waits out the cluster's first meta-leader election
        services.start_available(OPS, env=R3, timeout=90.0)
        yield services
    finally:
        for proc in services.procs.values():
            proc.kill()


def _streams() -> list[str]:
    return [
        *(c.name or "" for c in (*bus.stream_configs(), *bus.log_stream_configs())),
        *(f"KV_{b.bucket}" for b in bus.bucket_configs()),
        *(objects.stream_of(o.bucket or "") for o in bus.object_store_configs()),
    ]


def test_every_stream_bucket_and_object_store_has_three_copies(
    cluster: NatsCluster, cluster_ops: OpsServices
) -> None:
    async def main() -> dict[str, tuple[int, int]]:
        nc = await bus.connect(cluster.settings("publish"), name="r3-check")
        try:
            js = nc.jetstream()
            out = {}
            for name in _streams():
                info = await js.stream_info(name)
                peers = 1 + len(info.cluster.replicas or []) if info.cluster else 1
                out[name] = (info.config.num_replicas, peers)
            return out
        finally:
            await nc.close()

    replicas = asyncio.run(main())
    assert replicas == {name: (3, 3) for name in _streams()}


def _leader_port(cluster: NatsCluster, stream: str) -> int:
    async def main() -> str:
        nc = await bus.connect(cluster.settings("publish"), name="leader-check")
        try:
            info = await nc.jetstream().stream_info(stream)
            assert info.cluster is not None and info.cluster.leader
            return info.cluster.leader
        finally:
            await nc.close()

    leader = asyncio.run(main())
    (index,) = [i for i in range(3) if f"edgepub-{i + 1}" == leader]
    return index


def test_killing_the_work_streams_leader_mid_publish_ends_every_publish(
    cluster: NatsCluster, cluster_ops: OpsServices, model_file: Path
) -> None:
    s = cluster.settings()
    results: list[str] = []
    errors: list[BaseException] = []

    def publish_some(client: Client, n: int) -> None:
        try:
            model = client.upload_model("house", model_file)
            for i in range(n):
                pipeline = client.build_pipeline(f"cl-{i}").add_model_step(model)
                results.append(pipeline.publish(progress=False).status)
        except BaseException as exc:
            errors.append(exc)

    with Client(s.url, s.user, s.password) as client:
        worker = threading.Thread(target=publish_some, args=(client, 6))
        worker.start()
        while not results and worker.is_alive():  # the first one went through: now kill
            time.sleep(0.05)
        victim = _leader_port(cluster, subjects.WORK_STREAM)
        cluster.nodes[victim].kill()
        worker.join(240)
        assert not worker.is_alive(), "publishes still running after 240 s"
        cluster.nodes[victim].start()
    assert not errors, errors
    assert results == ["Published"] * 6


def test_a_node_and_a_collector_killed_under_edge_load_lose_nothing_and_double_nothing(
    cluster: NatsCluster, cluster_ops: OpsServices, registry: RegistryServer, tmp_path: Path
) -> None:
    cluster_ops.start("log_collector", replica=2, env=R3)
    s = cluster.settings()
    with Client(s.url, s.user, s.password) as client:
        fleet = Fleet(client, registry, cluster, tmp_path)
        try:
            edges = ["store-1", "store-2", "store-3"]
            agents = [fleet.agent(e, fleet.bundle(e)) for e in edges]
            for agent in agents:
                agent.wait_event("Node attestation was successful.", timeout=60)
            sent = dict.fromkeys(edges, 0)

            def load(requests: int) -> None:
                with concurrent.futures.ThreadPoolExecutor(len(agents)) as pool:
                    done = pool.map(lambda a: fleet.send(a, requests), agents)
                    for edge, rows in zip(edges, done, strict=True):
                        sent[edge] += rows

            load(20)
            victim = _leader_port(cluster, subjects.LOGS_STREAM)
            with concurrent.futures.ThreadPoolExecutor(1) as side:
                running = side.submit(load, 60)  # inferences go on through both faults
                time.sleep(0.5)
                cluster.nodes[victim].kill()  # the pipeline log's leader
                cluster_ops["log_collector"].kill()  # and one of the two collectors
                time.sleep(3.0)
                cluster.nodes[victim].start()
                running.result(timeout=120)
            load(20)
            held = fleet.at_ops(sent, timeout=120)
            assert all(held.lost[e] == 0 for e in edges)
        finally:
            for agent in fleet.agents:
                agent.kill()


def _connections(cluster: NatsCluster, name: str) -> dict[str, int]:
    """Server name -> connections named ``name`` there, from every node's own CONNZ."""
    return asyncio.run(connections_named(cluster, name))


def _refused_on_every_node(cluster: NatsCluster, edge: str, seed: str) -> None:
    async def main() -> None:
        for node in cluster.nodes:
            with pytest.raises(nats_errors.Error, match="Authorization Violation"):
                await connect_edge(node, edge, seed)

    asyncio.run(main())


def test_an_edge_on_another_node_than_the_token_service_is_cut_off_and_refused_everywhere(
    cluster: NatsCluster, cluster_ops: OpsServices, registry: RegistryServer, tmp_path: Path
) -> None:
    # The token service (its bus and system connections) on node 1 only; the bundles tell
    # edges to reach Ops through node 3: a removal must find and kick them over the routes.
    home, far = cluster.nodes[0], cluster.nodes[2]
    cluster_ops.start(
        "token", env={**R3, "EDGEPUB_NATS_URL": home.url, "EDGEPUB_OPSCENTER_HOST": far.ws_url}
    )
    assert _connections(cluster, "token-sys") == {"edgepub-1": 1, "edgepub-2": 0, "edgepub-3": 0}
    s = cluster.settings()
    with Client(s.url, s.user, s.password) as client:
        fleet = Fleet(client, registry, cluster, tmp_path)
        try:
            agent = fleet.agent("far-agent", fleet.bundle("far-agent"))
            agent.wait_event("Node attestation was successful.", timeout=60)
            placed = {"edgepub-1": 0, "edgepub-2": 0, "edgepub-3": 1}
            assert _connections(cluster, "far-agent") == placed

            disconnects = agent.event_names().count("ops_disconnected")
            client.remove_edge("far-agent")
            returned = time.time()
            gone = wait_for(
                lambda: sum(_connections(cluster, "far-agent").values()) == 0 and time.time(),
                2.0,
                "node 3 to drop the removed edge",
            )
            closed = agent.wait_event("ops_disconnected", count=disconnects + 1, timeout=2.0)
            assert gone - returned < 2.0
            assert datetime.fromisoformat(closed["timestamp"]).timestamp() - returned < 2.0
            agent.wait_event("ops_refused", timeout=30)  # its own reconnects
            _refused_on_every_node(cluster, "far-agent", persisted_seed(agent.persist))
            assert fleet.send(agent, 3) == 15  # the cached pipeline serves on
            assert sum(_connections(cluster, "far-agent").values()) == 0
        finally:
            for running in fleet.agents:
                running.kill()
        _bare_edge_is_kicked_across_the_routes(cluster, client, fleet.publish.id)


def _bare_edge_is_kicked_across_the_routes(
    cluster: NatsCluster, client: Client, publish_id: int
) -> None:
    """An edge connection that ignores its control subject (not the agent, which closes
    itself when told it is revoked): only the kick, sent from node 1's system connection to
    node 3, can close it."""
    far = cluster.nodes[2]

    async def main() -> None:
        nc = await admin(cluster)
        token = join_token((await add_edge(nc, publish_id, "far-bare")).bundle)
        await nc.close()
        seed = new_seed()
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        edge = await connect_edge(far, "far-bare", seed, token, closed_cb=on_closed)
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(client.remove_edge, "far-bare")
        returned = loop.time()
        async with asyncio.timeout(2.0):
            await closed.wait()
        assert loop.time() - returned < 2.0 and edge.is_closed
        for node in cluster.nodes:
            with pytest.raises(nats_errors.Error, match="Authorization Violation"):
                await connect_edge(node, "far-bare", seed)

    asyncio.run(main())
