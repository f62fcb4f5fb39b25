"""Fixtures with real servers on free ports of 127.0.0.1, stopped even when a test fails.

- ``nats_server``: nats-server + JetStream, auth on (``admin`` and one user per service).
- ``registry``: Debian's docker-registry with htpasswd auth (user ``edgepub``).
- ``ops``: the Ops services that exist, as real processes against both.
- ``client``: an SDK ``Client`` on them as the SDK user; ``model_file``: a small ONNX model.
- ``agents``: a list to append ``EdgeAgent`` processes to; each is killed after the test.
- ``@pytest.mark.no_blocking``: fails a test whose event loops block (``support.loopwatch``).
Helpers live in ``tests/support`` (``from support.waiting import wait_for``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from edgepub.samples import house_price_model
from edgepub.shared import logs
from support.edge import EdgeAgent
from support.loopwatch import watch_loops
from support.procs import cmdline, descendants
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices

pytest_plugins = ["support.registry_push"]

OPS_SERVICES = ("publish", "registry_push", "token", "log_collector")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "registry")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def ops(nats_server: NatsServer, registry: RegistryServer, tmp_path: Path) -> Iterator[OpsServices]:
    services = OpsServices(nats_server, registry, tmp_path / "service-logs")
    try:
        services.start_available(OPS_SERVICES)
        yield services
    finally:
        for proc in services.procs.values():
            proc.kill()


@pytest.fixture(scope="session", autouse=True)
def _logs_at_debug() -> None:
    """Every event reaches capture_logs in tests (the SDK alone would keep warnings only)."""
    logs.configure(fmt="console", level="debug")


@pytest.fixture
def client(ops: OpsServices, nats_server: NatsServer) -> Iterator[Client]:
    """An SDK client as the stack's SDK user, with the Ops services running."""
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as c:
        yield c


@pytest.fixture
def agents() -> Iterator[list[EdgeAgent]]:
    """Edge agent processes a test starts (append them): killed when it ends, pass or fail."""
    started: list[EdgeAgent] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.kill()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small scikit-learn random forest as ONNX (made once per test run)."""
    return house_price_model(tmp_path_factory.mktemp("models") / "rf.onnx", n_estimators=3)


@pytest.fixture(autouse=True)
def no_blocking(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``@pytest.mark.no_blocking``: fail the test if an event loop it runs blocks
    longer than loopwatch.THRESHOLD_S."""
    if request.node.get_closest_marker("no_blocking") is None:
        yield
        return
    with watch_loops() as stalls:
        yield
    assert not stalls, "the event loop was blocked:\n" + "\n".join(stalls)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may leave a process behind: kill leftovers and say which they were."""
    if not Path("/proc").is_dir():
        return
    leftovers = [(pid, cmdline(pid)) for pid in descendants(os.getpid())]
    leftovers = [(pid, cmd) for pid, cmd in leftovers if cmd not in ("", "?")]
    for pid, _ in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        session.config.stash[_LEFTOVERS] = leftovers


_LEFTOVERS = pytest.StashKey[list[tuple[int, str]]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    leftovers = terminalreporter.config.stash.get(_LEFTOVERS, [])
    if leftovers:
        terminalreporter.section("leftover processes (killed)", red=True)
        for pid, cmd in leftovers:
            terminalreporter.write_line(f"{pid}: {cmd}")
