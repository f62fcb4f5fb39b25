"""``edgepub up``: the embedded stack (NATS, registry, services) on this machine."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import structlog

from edgepub.shared import logs, stack_file
from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import LogSettings

from . import catalog, credentials
from .binaries import find_nats_server, find_registry
from .plan import NodePorts, StackPlan, UpOptions, build_plan
from .supervisor import StackStartError, kill_leftovers, run_stack

log = structlog.get_logger("edgepub.stack")
CACHE_DIR = "cache"  # registry-push's, in the data dir (EDGEPUB_CACHE_DIR)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="edgepub up",
        description="Start NATS (JetStream), an OCI registry and the edgepub services, "
        "supervised, until Ctrl-C.",
    )
    p.add_argument(
        "--data-dir", help="state, config and logs (default $EDGEPUB_HOME or ~/.edgepub)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--nats-port", type=int, default=4222, help="0 picks a free port")
    p.add_argument("--registry-port", type=int, default=5000, help="0 picks a free port")
    p.add_argument(
        "--cluster",
        type=int,
        default=1,
        choices=(1, 3, 5),
        help="nodes of the embedded JetStream cluster (3: every stream kept 3 times; node 1 "
        "on --nats-port and --edge-port, the others on free ports)",
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=8470,
        help="the fleet dashboard's web page (log in as the SDK user); 0 picks a free port",
    )
    p.add_argument(
        "--edge-port",
        type=int,
        default=4223,
        help="edges connect here (NATS over WebSocket); 0 picks a free port",
    )
    p.add_argument(
        "--opscenter-host",
        default=env("EDGEPUB_OPSCENTER_HOST"),
        help="OPSCENTER_HOST in bundles (default ws://<host>:<edge port>); behind an HTTPS "
        "reverse proxy: <domain>/edge, which edges read as wss://<domain>/edge",
    )
    p.add_argument(
        "--edge-tls-cert",
        default=env("EDGEPUB_EDGE_TLS_CERT"),
        help="PEM certificate: the edge listener speaks wss:// itself (with --edge-tls-key)",
    )
    p.add_argument("--edge-tls-key", default=env("EDGEPUB_EDGE_TLS_KEY"))
    p.add_argument(
        "--nats-url",
        default=env("EDGEPUB_NATS_URL"),
        help="use this NATS instead of starting one (default $EDGEPUB_NATS_URL)",
    )
    p.add_argument("--nats-user", default=env("EDGEPUB_NATS_USER"))
    p.add_argument(
        "--nats-password",
        default=env("EDGEPUB_NATS_PASSWORD"),
        help="prefer $EDGEPUB_NATS_PASSWORD: arguments show in ps",
    )
    p.add_argument(
        "--registry",
        default=env("EDGEPUB_REGISTRY"),
        metavar="HOST:PORT",
        help="use this OCI registry instead of starting one (Harbor, zot, GHCR...)",
    )
    p.add_argument("--registry-username", default=env("EDGEPUB_REGISTRY_USERNAME"))
    p.add_argument(
        "--registry-password",
        default=env("EDGEPUB_REGISTRY_PASSWORD"),
        help="prefer $EDGEPUB_REGISTRY_PASSWORD: arguments show in ps",
    )
    p.add_argument("--registry-insecure", action="store_true", help="plain HTTP to --registry")
    p.add_argument("--registry-repository", default=env("EDGEPUB_REGISTRY_REPOSITORY") or "edgepub")
    p.add_argument("--no-services", action="store_true", help="start only NATS and the registry")
    return p


def resolve_port(host: str, port: int, what: str, flag: str) -> int:
    """``port``, checked free; 0 means any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {host}:{port} for {what}: {exc}") from exc
            raise ConfigError(
                f"port {port} on {host} is already in use, so {what} cannot listen there "
                f"(is another `edgepub up` or a {what} running?); choose another with "
                f"{flag} N, or {flag} 0 for a free one"
            ) from None
        return int(s.getsockname()[1])


def _check_not_running(directory: Path) -> None:
    try:
        info = stack_file.load_stack_info(directory)
    except ConfigError:
        return
    raise ConfigError(
        f"an edgepub stack is already running from {directory} (pid {info.pid}, NATS "
        f"{info.nats_url}); stop it first or use another --data-dir"
    )


def _both(value: str | None, other: str | None, flag: str) -> str | None:
    """A TLS file, given only with its pair (a certificate needs its key)."""
    if bool(value) != bool(other):
        raise ConfigError(
            "--edge-tls-cert and --edge-tls-key go together (EDGEPUB_EDGE_TLS_CERT/_KEY): "
            f"{flag} is {'set' if value else 'missing'} without the other"
        )
    if value and not Path(value).is_file():
        raise ConfigError(f"{flag} {value!r}: no such file; expected a PEM file")
    return value or None


def options_from_args(args: argparse.Namespace, directory: Path) -> UpOptions:
    if args.registry and ("/" in args.registry or "://" in args.registry):
        raise ConfigError(
            f"--registry {args.registry!r} must be host[:port] only; "
            "put the path in --registry-repository"
        )
    embedded_nats = not args.nats_url
    embedded_registry = not args.registry
    nats_port = edge_port = 0
    if embedded_nats:
        nats_port = resolve_port(args.host, args.nats_port, "nats-server", "--nats-port")
        edge_port = resolve_port(args.host, args.edge_port, "the edge listener", "--edge-port")
    return UpOptions(
        data_dir=str(directory),
        host=args.host,
        nats_port=nats_port,
        registry_port=(
            resolve_port(args.host, args.registry_port, "the registry", "--registry-port")
            if embedded_registry
            else 0
        ),
        edge_port=edge_port,
        dashboard_port=(
            resolve_port(args.host, args.dashboard_port, "the dashboard", "--dashboard-port")
            if not args.no_services
            else 0
        ),
        opscenter_host=args.opscenter_host or None,
        edge_tls_cert=_both(args.edge_tls_cert, args.edge_tls_key, "--edge-tls-cert"),
        edge_tls_key=_both(args.edge_tls_key, args.edge_tls_cert, "--edge-tls-key"),
        nats_url=args.nats_url or None,
        nats_user=args.nats_user if not embedded_nats else None,
        nats_password=args.nats_password if not embedded_nats else None,
        registry=args.registry or None,
        registry_username=args.registry_username if not embedded_registry else None,
        registry_password=args.registry_password if not embedded_registry else None,
        registry_insecure=bool(args.registry_insecure),
        registry_repository=args.registry_repository.strip("/"),
        services=not args.no_services,
        cluster_nodes=_cluster_nodes(args, nats_port, edge_port) if embedded_nats else (),
    )


def _cluster_nodes(
    args: argparse.Namespace, nats_port: int, edge_port: int
) -> tuple[NodePorts, ...]:
    """``--cluster N``: node 1 on the given ports, every other listener on a free port."""
    if args.cluster == 1:
        return ()
    nodes = []
    for i in range(args.cluster):
        what = f"cluster node {i + 1}"
        nodes.append(
            NodePorts(
                client=nats_port if i == 0 else resolve_port(args.host, 0, what, ""),
                route=resolve_port(args.host, 0, f"{what}'s routes", ""),
                websocket=edge_port if i == 0 else resolve_port(args.host, 0, what, ""),
            )
        )
    return tuple(nodes)


def make_plan(opts: UpOptions, directory: Path) -> StackPlan:
    creds = credentials.load_or_create_credentials(directory)
    for secret in (
        *creds.nats_users.values(),
        creds.registry_password,
        creds.registry_http_secret,
        creds.auth_issuer_seed,
        creds.auth_xkey_seed,
        creds.system_user_seed,
    ):
        logs.register_secret(secret)
    logs.register_secret(opts.nats_password)
    logs.register_secret(opts.registry_password)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPUB_NATS_")}
    # registry-push's cache: this stack's own, under its data dir (unless set on purpose).
    base_env.setdefault("EDGEPUB_CACHE_DIR", str(directory / CACHE_DIR))
    return build_plan(
        opts,
        creds,
        nats_binary=find_nats_server() if opts.nats_url is None else None,
        registry_binary=find_registry() if opts.registry is None else None,
        services=catalog.available_services(),
        base_env=base_env,
        python=sys.executable,
        pid=os.getpid(),
    )


def write_files(plan: StackPlan) -> None:
    for planned in plan.files:
        path = Path(planned.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        stack_file.write_private(path, planned.text.encode())


def _not_writable(directory: Path, uid: int) -> ConfigError:
    st = directory.stat()
    return ConfigError(
        f"data dir {directory} is not writable by this user, uid {uid} (it is uid "
        f"{st.st_uid}'s, mode {oct(stat.S_IMODE(st.st_mode))}); as root, chown -R {uid} "
        f"{directory} (a docker-compose volume: docker-compose run --rm --user root "
        f"--entrypoint chown ops -R {uid} {directory}), or choose another --data-dir"
    )


def private_data_dir(directory: Path) -> None:
    """The data dir holds credentials, the broker's store, the registry's blobs (the
    users' models) and the logs: made 0700, or tightened to it, saying so. One this user
    may not write to (a volume mounted as root's) is refused, naming the fix."""
    existed = directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except PermissionError as exc:
        raise ConfigError(
            f"cannot create data dir {directory} ({exc.strerror}, uid {os.getuid()}); "
            "create it for this user, or choose another --data-dir"
        ) from None
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode != 0o700:
        try:
            directory.chmod(0o700)
        except PermissionError:  # someone else's directory (a volume mounted as root...)
            if os.access(directory, os.W_OK | os.X_OK):
                log.warning(
                    "data_dir_mode_loose",
                    path=str(directory),
                    mode=oct(mode),
                    fix=f"chown it to this user, or chmod 700 {directory}",
                )
        else:
            log.warning("data_dir_mode_tightened", path=str(directory), was=oct(mode), now="0o700")
    elif not existed:
        log.info("data_dir_created", path=str(directory), mode="0o700")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _not_writable(directory, os.getuid())


def _announce(plan: StackPlan, stack_file: Path) -> None:
    info = plan.info
    lines = [
        "edgepub is up",
        f"  NATS      {info.nats_url}" + (f" (user {info.sdk_user})" if info.sdk_user else ""),
        f"  registry  {info.registry}/{info.registry_repository}"
        + (f" (user {info.registry_username})" if info.registry_username else ""),
        f"  edges     {info.opscenter_host or '(set --opscenter-host)'} (OPSCENTER_HOST)",
        f"  services  {', '.join(s.name for s in plan.services) or 'none'}",
        *(
            [f"  dashboard {info.dashboard_url} (log in as {info.sdk_user})"]
            if info.dashboard_url
            else []
        ),
        f"  details   {stack_file} (credentials; mode 0600)",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


async def _serve(plan: StackPlan, directory: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_stack(plan, directory, stop, on_ready=lambda path: _announce(plan, path))


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_errors(sub)]
    return [exc]


def up_main(argv: list[str] | None = None) -> int:
    """``edgepub up [options]``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    cfg = LogSettings.from_env()
    logs.configure(fmt=cfg.format, level=cfg.level)
    directory = stack_file.data_dir(args.data_dir)
    try:
        private_data_dir(directory)
        _check_not_running(directory)
        plan = make_plan(options_from_args(args, directory), directory)
        write_files(plan)
        asyncio.run(_serve(plan, directory))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        leaves = _leaf_errors(exc)
        known = [e for e in leaves if isinstance(e, ConfigError | StackStartError)]
        if not known or len(known) != len(leaves):
            raise
        for err in known:
            print(f"edgepub up: {err}", file=sys.stderr)
        return 1
    finally:
        kill_leftovers()
    return 0
