"""``edgepub up`` for real: auth on from the first start, crash restarts, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub.services.stack.binaries import find_nats_server
from edgepub.services.stack.catalog import service_exists
from edgepub.shared.stack_file import StackInfo
from support.natsutil import publish_allowed
from support.procs import pid_alive
from support.servers import NatsServer, nats_handshake, registry_get
from support.stack import EmbeddedStack
from support.waiting import wait_for


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    up = EmbeddedStack(tmp_path / "home", "--no-services")
    try:
        up.start()
        yield up
    finally:
        up.kill()


def _nats_port(info: StackInfo) -> int:
    return int(info.nats_url.rsplit(":", 1)[1])


def _registry_status(info: StackInfo, *, auth: bool) -> int:
    if auth:
        return registry_get(info.registry, "/v2/", info.registry_username, info.registry_password)[
            0
        ]
    return registry_get(info.registry, "/v2/")[0]


def test_stack_json_is_private_and_complete(stack: EmbeddedStack) -> None:
    info = stack.info()
    assert stat.S_IMODE(stack.stack_file.stat().st_mode) == 0o600
    assert info.nats_url == f"nats://127.0.0.1:{stack.nats_port}"
    assert info.registry == f"127.0.0.1:{stack.registry_port}"
    assert info.registry_insecure and info.registry_repository == "edgepub"
    assert info.sdk_user == "admin" and info.sdk_password
    assert info.pid == stack.child.pid


def test_the_bus_is_never_open(stack: EmbeddedStack) -> None:
    info = stack.info()
    port = _nats_port(info)
    # anonymous goes to the auth callout; with no token service here the server refuses it
    # after its 2 s authorization timeout
    assert nats_handshake(port, None, None, timeout=5.0).startswith("-ERR")
    assert nats_handshake(port, "admin", "not-the-password").startswith("-ERR")
    assert nats_handshake(port, info.sdk_user, info.sdk_password) == "PONG"


def test_registry_needs_the_generated_password(stack: EmbeddedStack) -> None:
    info = stack.info()
    assert _registry_status(info, auth=False) == 401
    assert _registry_status(info, auth=True) == 200


def test_sdk_user_publishes_only_under_its_own_name(stack: EmbeddedStack) -> None:
    info = stack.info()
    assert info.sdk_user and info.sdk_password

    def allowed(subject: str) -> bool:
        return asyncio.run(
            publish_allowed(info.nats_url, info.sdk_user or "", info.sdk_password or "", subject)
        )

    assert allowed("edgepub.req.admin.x")
    assert not allowed("edgepub.req.someoneelse.x")


def test_generated_nats_conf_passes_the_servers_own_check(stack: EmbeddedStack) -> None:
    result = subprocess.run(
        [find_nats_server(), "-t", "-c", str(stack.data_dir / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_killed_nats_server_is_restarted(stack: EmbeddedStack) -> None:
    info = stack.info()
    (old,) = stack.children("nats-server")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old), 10, "the killed nats-server to be gone")
    new = wait_for(lambda: stack.children("nats-server"), 30, "a new nats-server")
    assert new != [old]
    wait_for(
        lambda: nats_handshake(_nats_port(info), info.sdk_user, info.sdk_password) == "PONG",
        30,
        "NATS to accept the same credentials again",
    )
    assert stack.info() == info
    events = [json.loads(x) for x in stack.child.log_text().splitlines() if x.startswith("{")]
    names = [(e.get("event"), e.get("child")) for e in events]
    assert ("child_exited", "nats-server") in names
    assert ("child_restarting", "nats-server") in names


def test_sigterm_stops_everything_and_credentials_survive(tmp_path: Path) -> None:
    up = EmbeddedStack(tmp_path / "home", "--no-services")
    try:
        first = up.start()
        children = up.children()
        assert len(children) >= 2
        assert up.stop() == 0
        assert not any(pid_alive(p) for p in children)
        assert not up.stack_file.exists()
        again = EmbeddedStack(tmp_path / "home", "--no-services")
        second = again.start()
        assert second.sdk_password == first.sdk_password
        assert second.registry_password == first.registry_password
        assert again.stop() == 0
    finally:
        up.kill()
        if "again" in locals():
            again.kill()


def _up(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edgepub.services.stack", "up", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_a_busy_port_is_named_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _up("--data-dir", str(tmp_path / "home"), "--nats-port", str(port))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--nats-port" in result.stderr


def test_a_second_stack_in_the_same_dir_is_refused(stack: EmbeddedStack) -> None:
    result = _up("--data-dir", str(stack.data_dir), "--nats-port", "0", "--registry-port", "0")
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert stack.child.running() and stack.stack_file.exists()


def test_without_registry_binary_it_says_how_to_install_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPUB_")}
    env["PATH"] = str(Path(find_nats_server()).parent)  # nats-server yes, docker-registry no
    argv = [sys.executable, "-m", "edgepub.services.stack", "up", "--data-dir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "apt-get install docker-registry" in result.stderr and "--registry" in result.stderr


def test_services_run_as_children_and_are_restarted(tmp_path: Path) -> None:
    if not service_exists("publish"):
        pytest.skip("the publish service is not written yet")
    up = EmbeddedStack(tmp_path / "home")
    try:
        up.start()
        (old,) = wait_for(lambda: up.children("edgepub.services.publish"), 30, "publish")
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: [p for p in up.children("edgepub.services.publish") if p != old],
            30,
            "publish to be restarted",
        )
        children = up.children()
        assert up.stop() == 0
        assert not any(pid_alive(p) for p in children)
        log = (tmp_path / "home" / "logs" / "publish.log").read_text()
        info = json.loads((tmp_path / "home" / "credentials.json").read_text())
        for secret in info["nats_users"].values():
            assert secret not in log
    finally:
        up.kill()


def test_ctrl_c_stops_cleanly(stack: EmbeddedStack) -> None:
    children = stack.children()
    stack.child.signal(signal.SIGINT)
    assert stack.child.terminate(30) == 0
    assert not any(pid_alive(p) for p in children)


def test_children_die_with_a_killed_supervisor(stack: EmbeddedStack) -> None:
    children = stack.children()
    assert children
    stack.kill()  # SIGKILL: no finally blocks run; PDEATHSIG must take the children down
    wait_for(lambda: not any(pid_alive(p) for p in children), 10, "orphaned children to die")


def test_external_nats_is_used_instead_of_starting_one(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    up = EmbeddedStack(
        tmp_path / "home",
        "--no-services",
        "--nats-url",
        nats_server.url,
        "--nats-user",
        "admin",
        "--nats-password",
        nats_server.users["admin"],
    )
    try:
        info = up.start()
        assert info.nats_url == nats_server.url
        assert info.sdk_user == "admin" and info.sdk_password == nats_server.users["admin"]
        assert up.children("nats-server") == []
        assert up.children("docker-registry")
        assert up.stop() == 0
    finally:
        up.kill()
