"""Chaos, end to end: real edge agents logging through cuttable links into a three-node
cluster with the services scaled out, while a seeded random schedule kills and restarts
any process, pauses some and cuts edge links; then every row is accounted for.

The schedule is one fault at a time (so the cluster keeps its quorum), each followed by
recovery: a NATS node SIGKILLed then restarted or SIGSTOPped then SIGCONTed, a collector
or a token-service replica or registry-push SIGKILLed then restarted (a collector paused
too), an edge's link cut for 1-4 s (the pages' duplicate window is 2 s, so some cuts
outlast it), an agent SIGKILLed once its local log committed what it answered (a crash
loses at most the uncommitted batch, by design, so the kill waits for the commit) and
started again on the same ``/persist``. Meanwhile inferences go to every agent and a
pipeline is published every few seconds. ``run`` returns the counts and the schedule;
``tests/faults/test_chaos.py`` (2 minutes) and ``bench/chaos.py`` (30) call it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from edgepub import Client
from edgepub.shared.bundle import decode_bundle, encode_bundle

from .edge import EdgeAgent, http
from .fleet import Fleet
from .ops_log import ops_log
from .proxy import CuttableProxy
from .servers import NatsCluster, RegistryServer
from .services import OpsServices
from .waiting import WaitTimeout

OPS = ("publish", "registry_push", "token", "log_collector")
R3 = {"EDGEPUB_REPLICAS": "3"}
FAULTS = (
    "kill_node",
    "pause_node",
    "kill_collector",
    "pause_collector",
    "kill_token",
    "kill_registry_push",
    "cut_link",
    "kill_agent",
)


@dataclass
class Edge:
    name: str
    proxy: CuttableProxy
    agent: EdgeAgent
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0  # rows answered 200, in all
    sent_here: int = 0  # ... by the agent process now running


@dataclass
class Chaos:
    seed: int
    schedule: list[dict[str, Any]] = field(default_factory=list)
    publishes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _restart_service(ops: OpsServices, name: str, env: dict[str, str] | None = None) -> None:
    base, _, replica = name.partition("-")
    ops[name].kill()
    ops.start(base, replica=int(replica or 1), env=env)


def _pause(pid: int | None, seconds: float) -> None:
    if pid is None:
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def run(work: Path, registry: RegistryServer, *, seed: int, duration_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    chaos = Chaos(seed=seed)
    cluster = NatsCluster(work / "cluster", 3).start()
    ops = OpsServices(cluster, registry, work / "logs")
    stop = threading.Event()
    edges: list[Edge] = []
    try:
        publish_env = {**R3, "EDGEPUB_PAGES_DUPLICATE_WINDOW_S": "2"}
        ops.start_available(OPS, env=publish_env, timeout=120.0)
        collector_env = {
            **R3,
            **{k: v for k, v in os.environ.items() if k.startswith("EDGEPUB_COLLECTOR_")},
        }
        ops.start("log_collector", env=collector_env)
        ops.start("log_collector", replica=2, env=collector_env)
        ops.start("token", replica=2)
        s = cluster.settings()
        with Client(s.url, s.user, s.password) as client:
            fleet = Fleet(client, registry, cluster, work)
            for i, name in enumerate(("chaos-a", "chaos-b")):
                proxy = CuttableProxy(cluster.nodes[i].ws_port).start()
                bundle = decode_bundle(fleet.bundle(name))
                via = encode_bundle(
                    msgspec.structs.replace(bundle, opscenter_host=f"ws://127.0.0.1:{proxy.port}")
                )
                agent = fleet.agent(name, via)
                agent.wait_event("Node attestation was successful.", timeout=60)
                edges.append(Edge(name=name, proxy=proxy, agent=agent))
            load = threading.Thread(target=_load, args=(fleet, edges, stop, chaos), daemon=True)
            publisher = threading.Thread(
                target=_publish, args=(client, fleet, stop, chaos), daemon=True
            )
            load.start()
            publisher.start()
            started = time.monotonic()
            while time.monotonic() - started < duration_s:
                _one_fault(rng, chaos, cluster, ops, fleet, edges, started)
                time.sleep(rng.uniform(0.5, 2.0))
            stop.set()
            load.join(60)
            publisher.join(300)
            for node in cluster.nodes:
                if not node.running():
                    node.start()
            for edge in edges:
                edge.proxy.restore()
            expected = {e.name: e.sent for e in edges}
            drain_started = time.monotonic()
            try:
                held = fleet.at_ops(expected, timeout=240)
            except WaitTimeout as exc:
                raise AssertionError(_why_not(exc, chaos, fleet, edges, ops)) from exc
            drain_s = time.monotonic() - drain_started
            rows = sum(held.rows[e.name] for e in edges)
            lost = sum(held.lost[e.name] for e in edges)
    finally:
        stop.set()
        for edge in edges:
            edge.agent.kill()
            edge.proxy.stop()
        for proc in ops.procs.values():
            proc.kill()
        for node in cluster.nodes:
            node.kill()
    return {
        "seed": seed,
        "faults_injected": len(chaos.schedule),
        "rows_sent": sum(expected.values()),
        "rows_at_ops": rows,
        "gap_rows": lost,
        "drain_s": round(drain_s, 1),
        "duplicates": 0,  # Fleet.at_ops asserted none, and order, per edge
        "order_violations": 0,
        "publishes": chaos.publishes,
        "errors": chaos.errors,
        "schedule": chaos.schedule,
    }


def _why_not(
    exc: Exception, chaos: Chaos, fleet: Fleet, edges: list[Edge], ops: OpsServices
) -> str:
    """What each side holds when Ops never accounted for everything: for the replay."""
    log = ops_log(fleet.nats)
    lines = [str(exc), f"seed {chaos.seed}; schedule:"]
    lines += [json.dumps(f) for f in chaos.schedule]
    for edge in edges:
        status = http().get(f"{edge.agent.url}/status", timeout=5).json()
        lines.append(
            f"{edge.name}: sent {edge.sent}, at Ops {log.rows[edge.name]} rows + "
            f"{log.lost[edge.name]} lost; edge log {status.get('log')}; "
            f"shipping {status.get('shipping')}; link {status.get('link')}"
        )
    for name, proc in ops.procs.items():
        waiting = proc.count_events("page_waiting")
        lines.append(f"{name}: running {proc.running()}, page_waiting x{waiting}")
    return "\n".join(lines)


PACE_S = 0.01  # between rounds of requests: a steady stream, not a flood to drain later


def _load(fleet: Fleet, edges: list[Edge], stop: threading.Event, chaos: Chaos) -> None:
    while not stop.wait(PACE_S):
        for edge in edges:
            with edge.lock:
                try:
                    rows = fleet.send(edge.agent, 1)
                except (AssertionError, OSError) as exc:  # an agent away: not counted
                    chaos.errors.append(f"{edge.name}: {exc!r}"[:200])
                    continue
                edge.sent += rows
                edge.sent_here += rows


def _publish(client: Client, fleet: Fleet, stop: threading.Event, chaos: Chaos) -> None:
    model = client.upload_model("chaos-model", fleet.work / "m.onnx")
    n = 0
    while not stop.wait(3.0):
        n += 1
        try:
            publish = client.build_pipeline(f"chaos-{n}").add_model_step(model)
            chaos.publishes.append(publish.publish(progress=False, timeout=240).status)
        except Exception as exc:
            chaos.publishes.append(f"raised {type(exc).__name__}: {exc}"[:200])


def _one_fault(
    rng: random.Random,
    chaos: Chaos,
    cluster: NatsCluster,
    ops: OpsServices,
    fleet: Fleet,
    edges: list[Edge],
    started: float,
) -> None:
    kind = rng.choice(FAULTS)
    span = round(rng.uniform(0.5, 3.0), 2)
    target: str
    if kind in ("kill_node", "pause_node"):
        i = rng.randrange(len(cluster.nodes))
        target = f"node-{i + 1}"
        if kind == "kill_node":
            cluster.nodes[i].kill()
            time.sleep(span)
            cluster.nodes[i].start()
        else:
            _pause(cluster.nodes[i].child.pid, span)
    elif kind in ("kill_collector", "pause_collector"):
        target = rng.choice(["log_collector", "log_collector-2"])
        if kind == "kill_collector":
            _restart_service(ops, target, R3)
        else:
            _pause(ops[target].pid, span)
    elif kind == "kill_token":
        target = rng.choice(["token", "token-2"])
        _restart_service(ops, target)
    elif kind == "kill_registry_push":
        target = "registry_push"
        _restart_service(ops, target)
    elif kind == "cut_link":
        edge = rng.choice(edges)
        target, span = edge.name, round(rng.uniform(1.0, 4.0), 2)
        edge.proxy.cut()
        time.sleep(span)
        edge.proxy.restore()
    else:  # kill_agent
        edge = rng.choice(edges)
        target = edge.name
        with edge.lock:  # no request in flight: what it answered is what it logged
            fleet.logged(edge.agent, edge.sent_here)
            edge.agent.kill()
            edge.agent = fleet.agent(edge.name, None)
            edge.sent_here = 0
    at = round(time.monotonic() - started, 2)
    chaos.schedule.append({"at_s": at, "fault": kind, "target": target, "span_s": span})
