"""``python -m edgepub.services.stack render|run``: a container deployment's config files,
and a service started from one of its env files.

    render --out DIR [--nodes nats-0,nats-1,nats-2] [--registry registry:5000]
           [--opscenter-host ws://ops.example:4223] [--sdk-nats-url nats://127.0.0.1:4222]
           [--dashboard-port 8470]
        writes DIR/credentials.json once (kept on later runs: the same secrets every time)
        and every file of ``deployment.render`` from it, each 0600.
    run SERVICE --env-file FILE
        replaces this process with ``python -m edgepub.services.<SERVICE>`` and FILE's
        environment on top of its own (SIGTERM then reaches the service itself).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgepub.shared.errors import ConfigError
from edgepub.shared.stack_file import write_private

from .catalog import BY_NAME
from .credentials import load_or_create_credentials
from .deployment import Node, Topology, parse_env, render


def _render_parser() -> argparse.ArgumentParser:
    d = Topology()
    p = argparse.ArgumentParser(prog="edgepub-stack render", description=__doc__)
    p.add_argument("--out", required=True, help="the config directory (volume or Secret)")
    p.add_argument(
        "--nodes",
        default=",".join(n.host for n in d.nodes),
        help="NATS nodes, comma-separated host[:client[:route[:edge[:monitor]]]] "
        "(ports default 4222, 6222, 4223, 8222)",
    )
    p.add_argument(
        "--listen", default=d.listen, help="the address NATS nodes and the dashboard listen on"
    )
    p.add_argument("--registry-listen", default=d.registry_listen)
    p.add_argument("--store-dir", default=d.store_dir, help="each NATS node's JetStream store")
    p.add_argument("--registry-root", default=d.registry_root)
    p.add_argument("--registry", default=d.registry, help="host:port services push to")
    p.add_argument("--opscenter-host", default=d.opscenter_host, help="OPSCENTER_HOST")
    p.add_argument("--config-dir", default=d.config_dir, help="where containers mount --out")
    p.add_argument("--sdk-nats-url", help="the NATS URL in stack.json (default: the nodes)")
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=d.dashboard_port,
        help="the fleet dashboard's HTTP port (on --listen)",
    )
    return p


def render_main(argv: list[str]) -> int:
    args = _render_parser().parse_args(argv)
    try:
        nodes = tuple(Node.parse(n) for n in args.nodes.split(",") if n.strip())
    except ValueError as exc:
        raise ConfigError(f"--nodes: {exc}") from exc
    if not 1 <= len(nodes) <= 5:
        raise ConfigError(f"--nodes: 1 to 5 NATS nodes, got {len(nodes)}")
    if not 1 <= args.dashboard_port <= 65535:
        raise ConfigError(f"--dashboard-port: 1 to 65535, got {args.dashboard_port}")
    topo = Topology(
        nodes=nodes,
        listen=args.listen,
        registry_listen=args.registry_listen,
        store_dir=args.store_dir,
        registry_root=args.registry_root,
        registry=args.registry,
        opscenter_host=args.opscenter_host,
        config_dir=args.config_dir,
        dashboard_port=args.dashboard_port,
    )
    out = Path(args.out)
    creds = load_or_create_credentials(out)
    for name, text in render(creds, topo, sdk_nats_url=args.sdk_nats_url).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, text.encode())
    print(f"rendered {out} for {len(nodes)} NATS node(s)", file=sys.stderr)
    return 0


def run_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edgepub-stack run")
    p.add_argument("service", choices=sorted(BY_NAME))
    p.add_argument("--env-file", required=True)
    args = p.parse_args(argv)
    path = Path(args.env_file)
    try:
        extra = parse_env(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    env = {**os.environ, **extra}
    module = BY_NAME[args.service].module
    os.execve(sys.executable, [sys.executable, "-m", module], env)
