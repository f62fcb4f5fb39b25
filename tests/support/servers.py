"""Real nats-server and registry processes for tests, configured exactly as ``edgepub up``
configures them (same config generators), on free ports of 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from edgepub.services.stack import config
from edgepub.services.stack.binaries import find_nats_server, find_registry
from edgepub.services.stack.catalog import RegistryEndpoint
from edgepub.shared.settings import NatsSettings, RegistrySettings

from .procs import ChildProcess, free_port

HOST = "127.0.0.1"
# Never through a proxy: everything a test talks to is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_started(child: ChildProcess, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``ready`` until true; fail at once (with its output) if the process exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not child.running():
            raise RuntimeError(
                f"{what} exited with code {child.returncode()} while starting:\n{child.log_tail()}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s:\n{child.log_tail()}")
        time.sleep(0.02)


def nats_handshake(
    port: int, user: str | None, password: str | None, host: str = HOST, timeout: float = 5.0
) -> str:
    """Connect with the raw NATS protocol and PING; returns 'PONG' or the server's -ERR line.
    Anonymous or unknown users go to the auth callout: refused at once by a token service,
    after the 2 s authorization timeout without one."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        f = sock.makefile("rwb")
        info = f.readline()
        if not info.startswith(b"INFO "):
            return info.decode(errors="replace").strip()
        opts: dict[str, Any] = {"verbose": False, "pedantic": False, "protocol": 1}
        if user is not None:
            opts.update(user=user, **{"pass": password or ""})
        f.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
        f.flush()
        while True:
            line = f.readline().decode(errors="replace").strip()
            if line != "PING":
                return line
            # the server pings a client that has said nothing for a while (its first ping
            # comes at about 1 s, before a pending auth callout times out at 2 s): answer it
            f.write(b"PONG\r\n")
            f.flush()


class ServerProcess:
    """Start (waiting until ``ready``), stop, kill and restart one server process on the
    same port and storage. Subclasses set ``child``, ``port``, ``what`` and ``ready``."""

    child: ChildProcess
    port: int
    what: str

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        self.child.spawn()
        wait_started(self.child, self.ready, timeout, f"{self.what} on port {self.port}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.child.terminate(timeout)

    def kill(self) -> int | None:
        return self.child.kill()

    def running(self) -> bool:
        return self.child.running()


class NatsServer(ServerProcess):
    """nats-server with JetStream and the stack's generated users (``admin`` + one per service).

    ``stop``/``kill`` then ``start`` brings it back on the same port and store.
    """

    what = "nats-server"

    def __init__(
        self,
        base_dir: Path,
        *,
        users: dict[str, config.UserSpec] | None = None,
        port: int = 0,
        ws_tls: tuple[str, str] | None = None,
        max_payload: int = config.MAX_PAYLOAD,
        credentials: config.StackCredentials | None = None,
        server_name: str = "edgepub",
        cluster: config.ClusterSpec | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.credentials = credentials or config.generate_credentials()
        self.user_specs = users if users is not None else config.nats_users(self.credentials)
        self.users: dict[str, str] = {u: s.password for u, s in self.user_specs.items()}
        self.port = port or free_port()
        self.ws_port = free_port()  # the edge listener: NATS over WebSocket
        self.ws_scheme = "wss" if ws_tls else "ws"
        self.store_dir = base_dir / "jetstream"
        self.config_path = base_dir / "nats.conf"
        base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            config.nats_config(
                host=HOST,
                port=self.port,
                store_dir=str(self.store_dir),
                users=self.user_specs,
                max_payload=max_payload,
                server_name=server_name,
                callout=config.callout_spec(self.credentials),
                websocket=config.WebsocketSpec(
                    host=HOST,
                    port=self.ws_port,
                    cert_file=ws_tls[0] if ws_tls else None,
                    key_file=ws_tls[1] if ws_tls else None,
                ),
                cluster=cluster,
            )
        )
        self.child = ChildProcess(
            [find_nats_server(), "-c", str(self.config_path)], base_dir / "nats-server.log"
        )

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Where edges connect (OPSCENTER_HOST with an explicit scheme)."""
        return f"{self.ws_scheme}://{HOST}:{self.ws_port}"

    @property
    def sdk_user(self) -> str:
        return self.credentials.sdk_user

    def settings(self, user: str = config.SDK_USER) -> NatsSettings:
        return NatsSettings(url=self.url, user=user, password=self.users[user])

    def ready(self) -> bool:
        user = next(iter(self.users))
        try:
            return nats_handshake(self.port, user, self.users[user]) == "PONG"
        except OSError:
            return False


class NatsCluster:
    """A JetStream cluster of ``size`` nats-server nodes on loopback, each configured as
    ``edgepub up --cluster`` configures it (one set of users and keys, routes between all);
    ``url`` lists every node, ``nodes[i]`` stops, kills and restarts one."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        self.credentials = config.generate_credentials()
        routes = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                base_dir / f"node-{i + 1}",
                credentials=self.credentials,
                server_name=f"edgepub-{i + 1}",
                cluster=config.ClusterSpec(
                    name="edgepub",
                    host=HOST,
                    port=routes[i],
                    peers=tuple((HOST, p) for j, p in enumerate(routes) if j != i),
                    password=self.credentials.route_password,
                ),
            )
            for i in range(size)
        ]
        self.users = self.nodes[0].users

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def ws_url(self) -> str:
        return ",".join(node.ws_url for node in self.nodes)

    def settings(self, user: str = config.SDK_USER) -> NatsSettings:
        return NatsSettings(url=self.url, user=user, password=self.users[user])

    def start(self, timeout: float = 30.0) -> Self:
        for node in self.nodes:
            node.child.spawn()
        for node in self.nodes:
            wait_started(node.child, node.ready, timeout, f"cluster node on port {node.port}")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            if node.running():
                node.stop()


def registry_get(
    address: str, path: str, username: str | None = None, password: str | None = None
) -> tuple[int, bytes]:
    """GET ``http://address/path``, with basic auth if a username is given; (status, body)."""
    req = urllib.request.Request(f"http://{address}{path}")
    if username is not None:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    req.add_header(
        "Accept",
        "application/vnd.oci.image.manifest.v1+json, "
        "application/vnd.docker.distribution.manifest.v2+json, */*",
    )
    try:
        with _OPENER.open(req, timeout=5.0) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class RegistryServer(ServerProcess):
    """Debian's docker-registry (distribution 2.8) with htpasswd auth, user ``edgepub``."""

    what = "docker-registry"

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int = 0,
        username: str = config.REGISTRY_USER,
        password: str | None = None,
    ) -> None:
        creds = config.generate_credentials()
        self.base_dir = base_dir
        self.port = port or free_port()
        self.username = username
        self.password = password or creds.registry_password
        self.root_dir = base_dir / "storage"
        self.config_path = base_dir / "registry.yml"
        htpasswd = base_dir / "htpasswd"
        base_dir.mkdir(parents=True, exist_ok=True)
        htpasswd.write_text(config.htpasswd_line(self.username, self.password))
        self.config_path.write_text(
            config.registry_config(
                host=HOST,
                port=self.port,
                root_dir=str(self.root_dir),
                htpasswd_path=str(htpasswd),
                http_secret=creds.registry_http_secret,
            )
        )
        self.child = ChildProcess(
            [find_registry(), "serve", str(self.config_path)], base_dir / "registry.log"
        )

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def settings(self, **overrides: Any) -> RegistrySettings:
        values: dict[str, Any] = {
            "registry": self.address,
            "repository": "edgepub",
            "username": self.username,
            "password": self.password,
            "insecure": True,
        }
        values.update(overrides)
        return RegistrySettings(**values)

    def endpoint(self) -> RegistryEndpoint:
        return RegistryEndpoint(
            address=self.address, username=self.username, password=self.password, insecure=True
        )

    def get(self, path: str, *, auth: bool = True) -> tuple[int, bytes]:
        """GET ``path`` (e.g. ``/v2/_catalog``) with basic auth; (status, body)."""
        if auth:
            return registry_get(self.address, path, self.username, self.password)
        return registry_get(self.address, path)

    def ready(self) -> bool:
        try:
            status, _ = self.get("/v2/", auth=False)
        except OSError:
            return False
        return status in (200, 401)
