"""What ``edgepub up`` leaves on disk, for real: a private data dir (tightened if an earlier
version or a user left it loose, and saying so), private logs, and registry-push's cache
inside the data dir rather than in a /tmp every stack on the machine shares."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edgepub.services.stack.catalog import service_exists
from support.stack import EmbeddedStack
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_data_dir_logs_and_cache_are_private(tmp_path: Path) -> None:
    if not service_exists("registry_push"):
        pytest.skip("registry-push does not exist yet")
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    os.chmod(home, 0o755)  # as a user's mkdir, or an earlier version, left them
    os.chmod(home / "logs", 0o755)
    old_log = home / "logs" / "registry_push.log"
    old_log.write_text("an earlier run\n")
    os.chmod(old_log, 0o644)

    up = EmbeddedStack(home)
    try:
        up.start()
        wait_for(lambda: up.children("registry_push"), what="registry-push to start")
        cache = home / "cache"
        wait_for(lambda: (cache / "models").is_dir(), what="registry-push's cache")

        assert mode(home) == 0o700
        events = [json.loads(line) for line in up.child.log_text().splitlines() if line[:1] == "{"]
        tightened = [e for e in events if e.get("event") == "data_dir_mode_tightened"]
        assert len(tightened) == 1 and tightened[0]["was"] == "0o755", events

        logs = home / "logs"
        assert mode(logs) == 0o700
        names = sorted(p.name for p in logs.iterdir())
        assert {"nats-server.log", "registry.log", "registry_push.log"} <= set(names)
        assert all(mode(logs / n) == 0o600 for n in names), {n: oct(mode(logs / n)) for n in names}
        assert old_log.read_text().startswith("an earlier run\n")  # appended to, not replaced

        (pid,) = up.children("registry_push")
        assert environ(pid)["EDGEPUB_CACHE_DIR"] == str(cache)
        assert mode(cache) == mode(cache / "models") == 0o700
    finally:
        up.kill()
