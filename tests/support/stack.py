"""``edgepub up`` as a real process for tests: ``python -m edgepub.services.stack up``."""

from __future__ import annotations

import sys
from pathlib import Path

from edgepub.shared.stack_file import STACK_FILE, StackInfo, load_stack_info

from .procs import ChildProcess, cmdline, descendants, free_port
from .services import clean_environ
from .waiting import wait_for


class EmbeddedStack:
    """One ``edgepub up`` on free ports with its own data dir; output in ``up.log``."""

    def __init__(self, data_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.nats_port = free_port()
        self.registry_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "edgepub.services.stack",
            "up",
            "--data-dir",
            str(data_dir),
            "--nats-port",
            str(self.nats_port),
            "--registry-port",
            str(self.registry_port),
            "--dashboard-port",
            "0",
            *extra_args,
        ]
        env = clean_environ() | {"EDGEPUB_LOG_FORMAT": "json"}
        self.child = ChildProcess(argv, data_dir.parent / f"{data_dir.name}-up.log", env=env)

    @property
    def stack_file(self) -> Path:
        return self.data_dir / STACK_FILE

    def start(self, timeout: float = 60.0) -> StackInfo:
        """Start and wait for stack.json (NATS and the registry ready)."""
        self.child.spawn()

        def ready() -> bool:
            if not self.child.running():
                raise AssertionError(f"edgepub up exited:\n{self.child.log_tail()}")
            return self.stack_file.exists()

        try:
            wait_for(ready, timeout, "edgepub up to write stack.json")
        except AssertionError:
            raise AssertionError(f"edgepub up did not start:\n{self.child.log_tail()}") from None
        return self.info()

    def info(self) -> StackInfo:
        return load_stack_info(self.data_dir)

    def children(self, marker: str = "") -> list[int]:
        """Live processes under the supervisor whose command line contains ``marker``."""
        if self.child.pid is None:
            return []
        return [p for p in descendants(self.child.pid) if marker in cmdline(p)]

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the supervisor (as Ctrl-C would) and return its exit code."""
        return self.child.terminate(timeout)

    def kill(self) -> int | None:
        return self.child.kill()
