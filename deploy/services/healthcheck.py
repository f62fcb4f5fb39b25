"""edgepub-services's HEALTHCHECK: the container's process (PID 1) is an edgepub service,
``python -m edgepub.services.<name>``, and holds an established TCP connection to a client
port of one of the NATS nodes in its ``EDGEPUB_NATS_URL``: connected to the bus, not
reconnecting. The fleet dashboard (``edgepub.services.dashboard``) must also answer 200 on
``GET /healthz`` (its KV watches run) at its EDGEPUB_DASHBOARD_PORT. Exit 0 when so, 1 with
the reason otherwise. Standard library only."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ESTABLISHED = "01"


def nats_ports(urls: str) -> set[int]:
    return {urlsplit(u.strip()).port or 4222 for u in urls.split(",") if u.strip()}


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def established_remote_ports(pid: int) -> set[int]:
    """Remote ports of the process's ESTABLISHED TCP connections (IPv4 and IPv6)."""
    mine, ports = socket_inodes(pid), set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == ESTABLISHED and fields[9] in mine:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def problem(pid: int = 1) -> str | None:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    if not module.startswith("edgepub.services.") or module == "edgepub.services.stack":
        return f"PID {pid} is not an edgepub service: {' '.join(argv)}"
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    env = dict(e.partition("=")[::2] for e in environ if "=" in e)
    wanted = nats_ports(env.get("EDGEPUB_NATS_URL", "nats://127.0.0.1:4222"))
    if not wanted & established_remote_ports(pid):
        return f"{module} has no connection to NATS (ports {sorted(wanted)})"
    if module == "edgepub.services.dashboard":
        return dashboard_problem(env)
    print(f"{module} connected to NATS")
    return None


def dashboard_problem(env: dict[str, str]) -> str | None:
    """The dashboard's own /healthz: 200 once its KV watches run (503 before)."""
    host = env.get("EDGEPUB_DASHBOARD_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{env.get('EDGEPUB_DASHBOARD_PORT', '8470')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return f"{url}: {exc}"
    if status != 200:
        return f"{url} answered {status}"
    print(f"edgepub.services.dashboard connected to NATS, {url} 200")
    return None


def main() -> int:
    reason = problem()
    if reason:
        print(reason)
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
