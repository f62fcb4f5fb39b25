"""What ``edgepub up`` will run, decided from options and credentials without any I/O.

The supervisor writes the plan's files, starts its children and publishes its
``StackInfo``; every choice (which children, which ports, which environment) is made here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path

import msgspec

from edgepub.shared.stack_file import StackInfo

from . import config
from .catalog import RegistryEndpoint, ServiceSpec, service_env, token_env


class Probe(Enum):
    NONE = "none"
    NATS = "nats"
    REGISTRY = "registry"


class NodePorts(msgspec.Struct, frozen=True, kw_only=True):
    """One cluster node's listeners: clients, routes (to the other nodes), edges."""

    client: int
    route: int
    websocket: int


class UpOptions(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str
    host: str = "127.0.0.1"
    nats_port: int = 4222  # resolved: never 0 once in a plan
    registry_port: int = 5000
    edge_port: int = 4223  # the edge-facing WebSocket listener (resolved: never 0 in a plan)
    dashboard_port: int = 8470  # the fleet dashboard's web page (resolved)
    # OPSCENTER_HOST in bundles; None: ws://<host>:<edge_port> (behind an HTTPS proxy set
    # it to "<domain>/edge", which edges read as wss://<domain>/edge)
    opscenter_host: str | None = None
    edge_tls_cert: str | None = None  # both set: the edge listener speaks wss:// itself
    edge_tls_key: str | None = None
    nats_url: str | None = None  # an external NATS instead of the embedded one
    nats_user: str | None = None  # credentials on the external NATS
    nats_password: str | None = None
    registry: str | None = None  # an external OCI registry (host:port) instead
    registry_username: str | None = None
    registry_password: str | None = None
    registry_insecure: bool = False
    registry_repository: str = "edgepub"
    services: bool = True
    # a JetStream cluster on this machine (``--cluster 3``): every node's ports, resolved
    # (node 1's are nats_port and edge_port); empty: one node
    cluster_nodes: tuple[NodePorts, ...] = ()


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] | None = None  # None: inherit the supervisor's
    log_path: str
    probe: Probe = Probe.NONE
    # A service is ready once its log says this (JSON event name); stack.json is written
    # only when every child is ready, so a client (or an edge) never meets a half stack.
    ready_event: str | None = None
    probe_url: str | None = None  # a NATS probe's server (None: the stack's)


class PlannedFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    text: str  # every file holds secrets or points at them: all are written 0600


class StackPlan(msgspec.Struct, frozen=True, kw_only=True):
    files: tuple[PlannedFile, ...]
    infra: tuple[ChildSpec, ...]  # started first, stopped last
    services: tuple[ChildSpec, ...]
    info: StackInfo
    nats_probe_user: str | None
    nats_probe_password: str | None


def _layout(data_dir: str) -> dict[str, str]:
    d = Path(data_dir)
    return {
        "nats_conf": str(d / "nats.conf"),
        "nats_store": str(d / "nats"),
        "registry_conf": str(d / "registry.yml"),
        "htpasswd": str(d / "htpasswd"),
        "registry_root": str(d / "registry"),
        "logs": str(d / "logs"),
    }


def _embedded_registry(
    opts: UpOptions, creds: config.StackCredentials, paths: Mapping[str, str], binary: str
) -> tuple[list[PlannedFile], ChildSpec, RegistryEndpoint]:
    files = [
        PlannedFile(
            path=paths["htpasswd"],
            text=config.htpasswd_line(creds.registry_username, creds.registry_password),
        ),
        PlannedFile(
            path=paths["registry_conf"],
            text=config.registry_config(
                host=opts.host,
                port=opts.registry_port,
                root_dir=paths["registry_root"],
                htpasswd_path=paths["htpasswd"],
                http_secret=creds.registry_http_secret,
            ),
        ),
    ]
    child = ChildSpec(
        name="registry",
        argv=(binary, "serve", paths["registry_conf"]),
        log_path=f"{paths['logs']}/registry.log",
        probe=Probe.REGISTRY,
    )
    endpoint = RegistryEndpoint(
        address=f"{opts.host}:{opts.registry_port}",
        repository=opts.registry_repository,
        username=creds.registry_username,
        password=creds.registry_password,
        insecure=True,
    )
    return files, child, endpoint


def _embedded_nats(
    opts: UpOptions, creds: config.StackCredentials, paths: Mapping[str, str], binary: str
) -> list[tuple[PlannedFile, ChildSpec]]:
    """One node, or ``opts.cluster_nodes``' nodes routed to each other (one set of users
    and keys on all, a store and a log each)."""
    nodes = opts.cluster_nodes
    if not nodes:
        return [_nats_node(opts, creds, paths, binary, None, None)]
    return [_nats_node(opts, creds, paths, binary, nodes, i) for i in range(len(nodes))]


def _nats_node(
    opts: UpOptions,
    creds: config.StackCredentials,
    paths: Mapping[str, str],
    binary: str,
    nodes: tuple[NodePorts, ...] | None,
    index: int | None,
) -> tuple[PlannedFile, ChildSpec]:
    cluster = None
    client, websocket = opts.nats_port, opts.edge_port
    conf, store, name, log = paths["nats_conf"], paths["nats_store"], "nats-server", "nats-server"
    server_name = "edgepub"
    if nodes is not None and index is not None:
        me = nodes[index]
        client, websocket = me.client, me.websocket
        server_name = f"edgepub-{index + 1}"
        name = log = f"nats-server-{index + 1}"
        conf = str(Path(paths["nats_conf"]).with_name(f"nats-{index + 1}.conf"))
        store = str(Path(paths["nats_store"]) / server_name)
        cluster = config.ClusterSpec(
            name="edgepub",
            host=opts.host,
            port=me.route,
            peers=tuple((opts.host, n.route) for j, n in enumerate(nodes) if j != index),
            password=creds.route_password,
        )
    text = config.nats_config(
        host=opts.host,
        port=client,
        store_dir=store,
        users=config.nats_users(creds),
        server_name=server_name,
        callout=config.callout_spec(creds),
        websocket=config.WebsocketSpec(
            host=opts.host,
            port=websocket,
            cert_file=opts.edge_tls_cert,
            key_file=opts.edge_tls_key,
        ),
        cluster=cluster,
    )
    child = ChildSpec(
        name=name,
        argv=(binary, "-c", conf),
        log_path=f"{paths['logs']}/{log}.log",
        probe=Probe.NATS,
        probe_url=f"nats://{opts.host}:{client}",
    )
    return PlannedFile(path=conf, text=text), child


def _service_children(
    opts: UpOptions,
    creds: config.StackCredentials,
    services: Sequence[ServiceSpec],
    registry: RegistryEndpoint | None,
    nats_url: str,
    base_env: Mapping[str, str],
    python: str,
    logs_dir: str,
) -> tuple[ChildSpec, ...]:
    out = []
    for spec in services:
        if opts.nats_url is None:
            user, password = spec.nats_user, creds.nats_users[spec.nats_user]
        else:  # one user for every service on an external NATS
            user, password = opts.nats_user or "", opts.nats_password or ""
        env = service_env(
            base_env, nats_url=nats_url, nats_user=user, nats_password=password, registry=registry
        )
        if opts.cluster_nodes:  # three copies of everything on a three-node cluster
            env["EDGEPUB_REPLICAS"] = str(min(len(opts.cluster_nodes), 3))
        if opts.nats_url is not None and not opts.nats_user:
            env.pop("EDGEPUB_NATS_USER", None)
            env.pop("EDGEPUB_NATS_PASSWORD", None)
        if spec.name == "dashboard":
            env["EDGEPUB_DASHBOARD_HOST"] = opts.host
            env["EDGEPUB_DASHBOARD_PORT"] = str(opts.dashboard_port)
        if spec.name == "token" and opts.nats_url is None:
            env.update(
                token_env(
                    issuer_seed=creds.auth_issuer_seed,
                    xkey_seed=creds.auth_xkey_seed,
                    system_seed=creds.system_user_seed,
                    opscenter_host=opscenter_host(opts),
                )
            )
        for replica in range(1, spec.replicas + 1):
            name = spec.name if replica == 1 else f"{spec.name}-{replica}"
            out.append(
                ChildSpec(
                    name=name,
                    argv=(python, "-m", spec.module),
                    env=env,
                    log_path=f"{logs_dir}/{name}.log",
                    ready_event=spec.ready_event,
                )
            )
    return tuple(out)


def opscenter_host(opts: UpOptions) -> str:
    """Where this stack's edges connect, as bundles say it (OPSCENTER_HOST)."""
    if opts.opscenter_host:
        return opts.opscenter_host
    host = _reachable(opts.host)
    scheme = "wss" if opts.edge_tls_cert and opts.edge_tls_key else "ws"
    ports = [n.websocket for n in opts.cluster_nodes] or [opts.edge_port]
    return ",".join(f"{scheme}://{host}:{port}" for port in ports)


def dashboard_url(opts: UpOptions) -> str:
    return f"http://{_reachable(opts.host)}:{opts.dashboard_port}/"


def _reachable(host: str) -> str:
    """``host`` as a URL's host part a client on this machine dials: a wildcard listen
    address is reached on loopback, an IPv6 address goes in brackets."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"[{host}]" if ":" in host else host


def build_plan(
    opts: UpOptions,
    creds: config.StackCredentials,
    *,
    nats_binary: str | None,
    registry_binary: str | None,
    services: Sequence[ServiceSpec],
    base_env: Mapping[str, str],
    python: str,
    pid: int,
) -> StackPlan:
    """The whole stack as data. Binaries are None only for the pieces pointed elsewhere."""
    paths = _layout(opts.data_dir)
    files: list[PlannedFile] = []
    infra: list[ChildSpec] = []
    if opts.nats_url is None:
        assert nats_binary is not None
        for nats_file, nats_child in _embedded_nats(opts, creds, paths, nats_binary):
            files.append(nats_file)
            infra.append(nats_child)
        clients = [n.client for n in opts.cluster_nodes] or [opts.nats_port]
        nats_url = ",".join(f"nats://{opts.host}:{port}" for port in clients)
        sdk_user: str | None = creds.sdk_user
        sdk_password: str | None = creds.nats_users[creds.sdk_user]
        probe_user, probe_password = sdk_user, sdk_password
    else:
        nats_url = opts.nats_url
        sdk_user, sdk_password = opts.nats_user, opts.nats_password
        probe_user, probe_password = opts.nats_user, opts.nats_password
    if opts.registry is None:
        assert registry_binary is not None
        reg_files, reg_child, registry = _embedded_registry(opts, creds, paths, registry_binary)
        files += reg_files
        infra.append(reg_child)
    else:
        registry = RegistryEndpoint(
            address=opts.registry,
            repository=opts.registry_repository,
            username=opts.registry_username,
            password=opts.registry_password,
            insecure=opts.registry_insecure,
        )
    children = _service_children(
        opts,
        creds,
        services if opts.services else (),
        registry,
        nats_url,
        base_env,
        python,
        paths["logs"],
    )
    info = StackInfo(
        nats_url=nats_url,
        registry=registry.address,
        registry_repository=registry.repository,
        registry_username=registry.username,
        registry_password=registry.password,
        registry_insecure=registry.insecure,
        sdk_user=sdk_user,
        sdk_password=sdk_password,
        data_dir=opts.data_dir,
        pid=pid,
        opscenter_host=opscenter_host(opts) if opts.nats_url is None else opts.opscenter_host,
        dashboard_url=dashboard_url(opts) if any(c.name == "dashboard" for c in children) else None,
    )
    return StackPlan(
        files=tuple(files),
        infra=tuple(infra),
        services=children,
        info=info,
        nats_probe_user=probe_user,
        nats_probe_password=probe_password,
    )
