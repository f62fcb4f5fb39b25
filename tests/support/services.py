"""edgepub service processes for tests: ``python -m edgepub.services.<name>`` for real,
with the environment ``edgepub up`` gives it and its output captured in a file."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgepub.services.stack.catalog import BY_NAME, service_env, service_exists, token_env

from .procs import ChildProcess
from .servers import NatsCluster, NatsServer, RegistryServer

# Ready once it answers, not merely connected: the token service once it answers connects.
READY_EVENTS = {"token": "auth_callout_serving", "log_collector": "consumer_started"}


def clean_environ() -> dict[str, str]:
    """This process's environment without any EDGEPUB_* a developer may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPUB_")}


class ServiceProcess:
    """One service process. ``log_path`` holds every line it wrote, across restarts."""

    def __init__(
        self,
        name: str,
        nats: NatsServer | NatsCluster,
        registry: RegistryServer | None,
        log_dir: Path,
        env: dict[str, str] | None = None,
        replica: int = 1,
    ) -> None:
        spec = BY_NAME[name]
        self.name = name if replica == 1 else f"{name}-{replica}"
        full_env = service_env(
            clean_environ(),
            nats_url=nats.url,
            nats_user=spec.nats_user,
            nats_password=nats.users[spec.nats_user],
            registry=registry.endpoint() if registry is not None else None,
        )
        if name == "token":
            full_env.update(
                token_env(
                    issuer_seed=nats.credentials.auth_issuer_seed,
                    xkey_seed=nats.credentials.auth_xkey_seed,
                    system_seed=nats.credentials.system_user_seed,
                    opscenter_host=nats.ws_url,
                )
            )
        full_env.update(env or {})
        self.env = full_env
        self.child = ChildProcess(
            [sys.executable, "-m", spec.module], log_dir / f"{self.name}.log", env=full_env
        )

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def start(self, *, ready_event: str | None = "service_started", timeout: float = 30.0) -> None:
        """Spawn; wait until it logs ``ready_event`` (one more than before) unless None."""
        self.wait_ready(self.spawn(ready_event), ready_event, timeout)

    def spawn(self, ready_event: str | None = "service_started") -> int:
        """Start the process; returns how often it had logged ``ready_event`` before."""
        before = self.count_events(ready_event) if ready_event else 0
        self.child.spawn()
        return before

    def wait_ready(self, before: int, ready_event: str | None, timeout: float = 30.0) -> None:
        if ready_event is None:
            return
        deadline = time.monotonic() + timeout
        while self.count_events(ready_event) <= before:
            if not self.child.running():
                raise RuntimeError(
                    f"service {self.name} exited with code {self.child.returncode()} "
                    f"while starting:\n{self.child.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"service {self.name} did not log {ready_event!r} within {timeout}s:\n"
                    + self.child.log_tail()
                )
            time.sleep(0.02)

    def running(self) -> bool:
        return self.child.running()

    def kill(self) -> int | None:
        """SIGKILL (a crash) and reap."""
        return self.child.kill()

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM; the exit code (SIGKILL after ``timeout``, giving -9)."""
        return self.child.terminate(timeout)

    def restart(self, **start_kwargs: Any) -> None:
        self.terminate()
        self.start(**start_kwargs)

    def log_text(self) -> str:
        return self.child.log_text()

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line it wrote, parsed; other lines are skipped."""
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def count_events(self, event: str | None) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)


class OpsServices:
    """The Ops-side services against one NATS and one registry: ``ops.start("publish")``."""

    def __init__(
        self, nats: NatsServer | NatsCluster, registry: RegistryServer | None, log_dir: Path
    ) -> None:
        self.nats = nats
        self.registry = registry
        self.log_dir = log_dir
        self.procs: dict[str, ServiceProcess] = {}

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.procs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.procs

    def start(
        self, name: str, *, env: dict[str, str] | None = None, replica: int = 1, **kw: Any
    ) -> ServiceProcess:
        """Start (or restart with ``env``) service ``name`` (its ``replica``-th process, kept
        as ``name-<replica>`` past the first); skips the test if it isn't written."""
        if not service_exists(name):
            pytest.skip(
                f"service {name!r} does not exist yet (no edgepub.services.{name}.__main__)"
            )
        if name in READY_EVENTS:
            kw.setdefault("ready_event", READY_EVENTS[name])
        proc = ServiceProcess(
            name, self.nats, self.registry, self.log_dir, env=env, replica=replica
        )
        old = self.procs.get(proc.name)
        if old is not None:
            old.terminate()
        self.procs[proc.name] = proc
        proc.start(**kw)
        return proc

    def start_available(
        self, names: tuple[str, ...], env: dict[str, str] | None = None, timeout: float = 30.0
    ) -> list[str]:
        """Start the services of ``names`` that exist, all at once, and wait for each."""
        started = [n for n in names if service_exists(n)]
        pending = []
        for name in started:
            proc = ServiceProcess(name, self.nats, self.registry, self.log_dir, env=env)
            self.procs[proc.name] = proc
            event = READY_EVENTS.get(name, "service_started")
            pending.append((proc, event, proc.spawn(event)))
        for proc, event, before in pending:
            proc.wait_ready(before, event, timeout)
        return started

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()

    def all_logs(self) -> str:
        """Everything every service printed, plus the servers' logs."""
        parts = [p.log_text() for p in self.procs.values()]
        nodes = getattr(self.nats, "nodes", [self.nats])  # one server, or a cluster's
        parts += [node.child.log_text() for node in nodes]
        if self.registry is not None:
            parts.append(self.registry.child.log_text())
        return "\n".join(parts)

    def assert_no_secret(self, *secrets: str | None) -> None:
        text = self.all_logs()
        for secret in secrets:
            if secret:
                assert secret not in text, "a secret appears in a log line"
