"""Wrong credentials, a dead port, a server that never answers and a server without
JetStream each fail the first connect within seconds, saying what is wrong and what to do,
never the password; once connected, a client still rides out a broker restart."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edgepub import Client
from edgepub.services.stack.binaries import find_nats_server
from edgepub.shared.errors import NotAuthorizedError, ServiceUnavailableError
from support.procs import free_port
from support.servers import HOST, NatsServer
from support.services import OpsServices

pytestmark = pytest.mark.timeout(60)

SECRET = "wrong-password-4e1f"


def _fails_fast(
    expected: type[Exception], url: str, user: str, password: str, within: float
) -> str:
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(expected) as info:
        Client(url, user, password)
    took = time.monotonic() - started
    message = str(info.value)
    assert took < within, f"took {took:.1f}s: {message}"
    assert url in message and repr(user) in message
    assert password not in message
    # one error for the caller, not a warning per retry
    assert [e for e in logs if e.get("log_level") == "warning"] == []
    return message


def test_wrong_password_is_refused_at_once(nats_server: NatsServer) -> None:
    message = _fails_fast(NotAuthorizedError, nats_server.url, "admin", SECRET, within=2.0)
    assert "wrong user or password" in message and "EDGEPUB_NATS_PASSWORD" in message


def test_unknown_user_is_refused_at_once(nats_server: NatsServer, ops: OpsServices) -> None:
    # not a static user: the auth callout asks the token service, which refuses at once
    _fails_fast(NotAuthorizedError, nats_server.url, "nobody", SECRET, within=2.0)


def test_closed_port_fails_within_seconds() -> None:
    url = f"nats://{HOST}:{free_port()}"
    message = _fails_fast(ServiceUnavailableError, url, "admin", SECRET, within=6.0)
    assert "edgepub up" in message


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_server_that_never_answers_fails_within_seconds(silent_listener: int) -> None:
    url = f"nats://{HOST}:{silent_listener}"
    _fails_fast(ServiceUnavailableError, url, "admin", SECRET, within=8.0)


def test_a_server_without_jetstream_is_named(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "plain.conf"
    conf.write_text(
        f'listen: "{HOST}:{port}"\n'
        'authorization { users = [ { user: "admin", password: "pw-plain" } ] }\n'
    )
    proc = subprocess.Popen(
        [find_nats_server(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"nats://{HOST}:{port}"
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match="has no JetStream") as info:
            Client(url, "admin", "pw-plain")
        assert time.monotonic() - started < 3.0
        assert url in str(info.value)
    finally:
        proc.terminate()
        proc.wait(10)


def test_once_connected_a_broker_restart_is_ridden_out(nats_server: NatsServer) -> None:
    """The bounded first connect does not make later reconnects give up."""
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        nc = client._run(client._session.nc())
        nats_server.stop()
        time.sleep(1.0)
        nats_server.start()
        deadline = time.monotonic() + 15
        while not nc.is_connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert nc.is_connected and not nc.is_closed
