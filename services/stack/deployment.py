"""The Ops side as separate machines or containers: every config file and environment, as
pure functions over the stack's credentials and a topology.

``edgepub up`` runs everything as children of one process; docker-compose and the Helm
chart run each piece in its own container. Both get their files from here (``python -m
edgepub.services.stack render``), so a container deployment runs the same users, the same
permissions and the same auth callout as the embedded stack, rendered by the same code
(``config.nats_config``, ``catalog.service_env``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

import msgspec

from edgepub.shared.stack_file import StackInfo

from . import config
from .catalog import SERVICES, RegistryEndpoint, service_env, token_env

ENV_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")


class Node(msgspec.Struct, frozen=True, kw_only=True):
    """One NATS node as the others reach it, and its listeners' ports (the same on every
    node when each has its own address; different on one host's network)."""

    host: str
    client: int = 4222
    route: int = 6222
    edge: int = 4223  # the edge listener (NATS over WebSocket)
    monitor: int = 8222  # /healthz for container healthchecks

    @classmethod
    def parse(cls, text: str) -> Node:
        """``host[:client[:route[:edge[:monitor]]]]``, or ValueError naming what is wrong."""
        host, *ports = text.strip().split(":")
        if not host or len(ports) > 4 or not all(p.isdigit() for p in ports):
            raise ValueError(f"{text!r} is not host[:client[:route[:edge[:monitor]]]]")
        names = ("client", "route", "edge", "monitor")
        return cls(host=host, **{n: int(p) for n, p in zip(names, ports, strict=False)})


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """Where each piece runs, as the other pieces reach it (compose service names or
    Kubernetes DNS names), and where it keeps its data inside its container."""

    nodes: tuple[Node, ...] = (Node(host="nats"),)  # more than one: a JetStream cluster
    listen: str = "0.0.0.0"  # where NATS nodes and the dashboard listen in their containers
    registry: str = "registry:5000"  # host:port as services reach it
    registry_listen: str = "0.0.0.0:5000"
    # where edges reach the edge listener, as bundles say it (OPSCENTER_HOST)
    opscenter_host: str = "ws://127.0.0.1:4223"
    store_dir: str = "/data/jetstream"  # each NATS node's volume
    registry_root: str = "/data/registry"  # the registry's volume
    config_dir: str = "/config"  # where the rendered files are mounted
    dashboard_port: int = 8470  # the dashboard's HTTP port, on ``listen``

    @property
    def nats_urls(self) -> str:
        return ",".join(f"nats://{n.host}:{n.client}" for n in self.nodes)


def node_file(index: int) -> str:
    """The config of node ``index`` (0-based, a StatefulSet ordinal): ``nats-<index>.conf``."""
    return f"nats-{index}.conf"


def env_file(service: str) -> str:
    return f"{service}.env"  # flat: a Kubernetes Secret key has no "/"


def nats_node_config(creds: config.StackCredentials, topo: Topology, index: int) -> str:
    me, cluster = topo.nodes[index], None
    if len(topo.nodes) > 1:
        cluster = config.ClusterSpec(
            name="edgepub",
            host=topo.listen,
            port=me.route,
            peers=tuple((n.host, n.route) for j, n in enumerate(topo.nodes) if j != index),
            password=creds.route_password,
        )
    return config.nats_config(
        host=topo.listen,
        port=me.client,
        store_dir=topo.store_dir,
        users=config.nats_users(creds),
        server_name=f"edgepub-{index}",
        http_port=me.monitor,
        callout=config.callout_spec(creds),
        websocket=config.WebsocketSpec(host=topo.listen, port=me.edge),
        cluster=cluster,
    )


def service_environment(
    creds: config.StackCredentials, topo: Topology, service: str
) -> dict[str, str]:
    """What ``python -m edgepub.services.<service>`` gets: its own NATS user, every node,
    the registry, the replica count for the cluster's size."""
    spec = next(s for s in SERVICES if s.name == service)
    registry = RegistryEndpoint(
        address=topo.registry,
        username=creds.registry_username,
        password=creds.registry_password,
        insecure=True,
    )
    env = service_env(
        {},
        nats_url=topo.nats_urls,
        nats_user=spec.nats_user,
        nats_password=creds.nats_users[spec.nats_user],
        registry=registry,
    )
    env["EDGEPUB_REPLICAS"] = str(min(len(topo.nodes), 3))
    env["EDGEPUB_CACHE_DIR"] = "/data/cache"
    if service == "token":
        env.update(
            token_env(
                issuer_seed=creds.auth_issuer_seed,
                xkey_seed=creds.auth_xkey_seed,
                system_seed=creds.system_user_seed,
                opscenter_host=topo.opscenter_host,
            )
        )
    if service == "dashboard":
        # in its own container it is reached through the container's address (a published
        # port, a Service): on all of them by default; logins still need a NATS user
        env["EDGEPUB_DASHBOARD_HOST"] = topo.listen
        env["EDGEPUB_DASHBOARD_PORT"] = str(topo.dashboard_port)
    return env


def format_env(env: Mapping[str, str]) -> str:
    """``KEY=value`` lines, values shell-quoted (``. file`` in sh reads them too)."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def parse_env(text: str) -> dict[str, str]:
    """The inverse of ``format_env``; anything else is a ValueError naming the line."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: \x1e is a value
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = ENV_LINE.fullmatch(line)
        if m is None:
            raise ValueError(f"line {number} is not KEY=value")
        try:
            words = shlex.split(m.group(2)) if m.group(2) else [""]
        except ValueError as exc:
            raise ValueError(f"line {number} ({m.group(1)}): {exc}") from None
        if len(words) != 1:
            raise ValueError(f"line {number} ({m.group(1)}): the value is not one quoted word")
        out[m.group(1)] = words[0]
    return out


def sdk_stack_info(creds: config.StackCredentials, topo: Topology, nats_url: str) -> StackInfo:
    """What an SDK user needs to log in (``stack.json``), reaching NATS at ``nats_url``."""
    return StackInfo(
        nats_url=nats_url,
        registry=topo.registry,
        registry_repository="edgepub",
        registry_username=creds.registry_username,
        registry_password=creds.registry_password,
        registry_insecure=True,
        sdk_user=creds.sdk_user,
        sdk_password=creds.nats_users[creds.sdk_user],
        data_dir=topo.config_dir,
        pid=0,
        opscenter_host=topo.opscenter_host,
    )


def render(
    creds: config.StackCredentials, topo: Topology, *, sdk_nats_url: str | None = None
) -> dict[str, str]:
    """Every file of a container deployment, by path relative to the config directory.

    All of them hold secrets: write them 0600 (the containers run as one uid)."""
    files = {node_file(i): nats_node_config(creds, topo, i) for i in range(len(topo.nodes))}
    files["registry.yml"] = config.registry_config(
        host=topo.registry_listen.rsplit(":", 1)[0],
        port=int(topo.registry_listen.rsplit(":", 1)[1]),
        root_dir=topo.registry_root,
        htpasswd_path=f"{topo.config_dir}/htpasswd",
        http_secret=creds.registry_http_secret,
    )
    files["htpasswd"] = config.htpasswd_line(creds.registry_username, creds.registry_password)
    for spec in SERVICES:
        files[env_file(spec.name)] = format_env(service_environment(creds, topo, spec.name))
    info = sdk_stack_info(creds, topo, sdk_nats_url or topo.nats_urls)
    files["stack.json"] = msgspec.json.format(msgspec.json.encode(info)).decode()
    return files
