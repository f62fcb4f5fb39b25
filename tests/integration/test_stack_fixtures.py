"""The test fixtures themselves: real servers with auth, restartable on the same port/store."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from edgepub.services.stack.binaries import find_nats_server
from edgepub.shared import bus, subjects
from support.natsutil import publish_allowed
from support.servers import NatsServer, RegistryServer, nats_handshake
from support.services import OpsServices


def test_generated_nats_config_passes_nats_server_check(nats_server: NatsServer) -> None:
    result = subprocess.run(
        [find_nats_server(), "-t", "-c", str(nats_server.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_refuses_anonymous_and_wrong_password(nats_server: NatsServer) -> None:
    assert nats_handshake(nats_server.port, None, None).startswith("-ERR")
    assert nats_handshake(nats_server.port, "admin", "wrong").startswith("-ERR")
    assert nats_handshake(nats_server.port, "admin", nats_server.users["admin"]) == "PONG"


def _publish_allowed(server: NatsServer, user: str, subject: str) -> bool:
    return asyncio.run(publish_allowed(server.url, user, server.users[user], subject))


def test_admin_may_publish_only_under_its_own_request_subject(nats_server: NatsServer) -> None:
    assert _publish_allowed(nats_server, "admin", "edgepub.req.admin.x")
    assert not _publish_allowed(nats_server, "admin", "edgepub.req.someoneelse.x")
    assert not _publish_allowed(nats_server, "admin", "edgepub.work.publish.requested")
    assert _publish_allowed(nats_server, "publish", "edgepub.work.publish.requested")


async def _stream_roundtrip(server: NatsServer, *, create: bool) -> int:
    """As the publish service (the user that owns the streams): one event, then count."""
    nc = await bus.connect(server.settings("publish"), name="fixture")
    try:
        js = nc.jetstream()
        if create:
            await bus.ensure_all(js)
            await js.publish(subjects.publish_events(1), b"1")
        info = await js.stream_info(subjects.EVENTS_STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_nats_restarts_on_same_port_and_store(nats_server: NatsServer, how: str) -> None:
    port = nats_server.port
    assert asyncio.run(_stream_roundtrip(nats_server, create=True)) == 1
    if how == "stop":
        assert nats_server.stop() == 0
    else:
        nats_server.kill()
    assert not nats_server.running()
    nats_server.start()
    assert nats_server.port == port
    assert asyncio.run(_stream_roundtrip(nats_server, create=False)) == 1


def test_registry_needs_basic_auth_and_restarts(registry: RegistryServer) -> None:
    assert registry.get("/v2/", auth=False)[0] == 401
    assert registry.get("/v2/")[0] == 200
    registry.kill()
    assert not registry.running()
    registry.start()
    assert registry.get("/v2/")[0] == 200
    settings = registry.settings(password="wrong")
    assert settings.insecure and settings.registry == registry.address
    assert settings.password == "wrong" and registry.settings().password == registry.password


def test_ops_fixture_starts_what_exists(ops: OpsServices, registry: RegistryServer) -> None:
    for proc in ops.procs.values():
        assert proc.running()
        assert proc.count_events("service_started") == 1
    ops.assert_no_secret(*ops.nats.users.values(), registry.password)


def test_nats_config_quoting_survives_awkward_passwords(tmp_path: Path) -> None:
    from edgepub.services.stack.config import UserSpec

    password = 'a"b\\c $d{e}#f'
    server = NatsServer(tmp_path / "nats", users={"odd-user": UserSpec(password=password)})
    try:
        server.start()
        assert nats_handshake(server.port, "odd-user", password) == "PONG"
        assert nats_handshake(server.port, "odd-user", "a").startswith("-ERR")
    finally:
        server.kill()
