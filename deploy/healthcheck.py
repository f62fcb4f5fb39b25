"""Every edgepub image's HEALTHCHECK, one script for all (standard library only): it looks
at what the container's process (PID 1) is and asks it the way that piece answers.

- ``nats-server -c FILE``: ``GET /healthz?js-enabled-only=true`` on the monitor listener
  FILE's ``http:`` line names.
- ``docker-registry serve FILE``: ``GET /v2/`` on FILE's ``addr:`` answers 401 (auth on)
  or 200.
- ``python -m edgepub.services.<name>``: it holds an established TCP connection to a client
  port of one of the NATS nodes in its ``EDGEPUB_NATS_URL`` (connected, not reconnecting);
  the fleet dashboard must also answer 200 on ``GET /healthz`` (its KV watches run) at its
  ``EDGEPUB_DASHBOARD_HOST``/``PORT``.

Exit 0 when healthy, 1 with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ESTABLISHED = "01"


def http_status(url: str) -> int | str:
    """The status ``url`` answers with, or why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError as exc:
        return f"{url}: {exc}"


def local(host: str) -> str:
    """Where to reach a listener bound to ``host`` from inside its container."""
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"[{host}]" if ":" in host else host


def _listener(conf: str, pattern: str) -> tuple[str, str] | None:
    m = re.search(pattern, Path(conf).read_text(), re.M)
    return (local(m.group(1)), m.group(2)) if m else None


def nats_problem(argv: list[str]) -> str | None:
    conf = argv[argv.index("-c") + 1] if "-c" in argv[:-1] else "/config/nats-0.conf"
    where = _listener(conf, r'^http:\s*"?([^"\s]*):(\d+)"?')
    if where is None:
        return f"{conf} has no http: monitor listener"
    url = f"http://{where[0]}:{where[1]}/healthz?js-enabled-only=true"
    status = http_status(url)
    return None if status == 200 else f"{url}: {status}"


def registry_problem(argv: list[str]) -> str | None:
    conf = next((a for a in argv if a.endswith((".yml", ".yaml"))), "/config/registry.yml")
    where = _listener(conf, r'^\s*addr:\s*"?([^"\s]*):(\d+)"?')
    if where is None:
        return f"{conf} has no http addr:"
    url = f"http://{where[0]}:{where[1]}/v2/"
    status = http_status(url)
    return None if status in (200, 401) else f"{url}: {status}"


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


def service_problem(pid: int, argv: list[str]) -> str | None:
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    if not module.startswith("edgepub.services.") or module == "edgepub.services.stack":
        return f"PID {pid} is not an edgepub service: {' '.join(argv)}"
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    env = dict(e.partition("=")[::2] for e in environ if "=" in e)
    wanted = nats_ports(env.get("EDGEPUB_NATS_URL", "nats://127.0.0.1:4222"))
    if not wanted & established_remote_ports(pid):
        return f"{module} has no connection to NATS (ports {sorted(wanted)})"
    if module == "edgepub.services.dashboard":
        host = local(env.get("EDGEPUB_DASHBOARD_HOST", "127.0.0.1"))
        url = f"http://{host}:{env.get('EDGEPUB_DASHBOARD_PORT', '8470')}/healthz"
        status = http_status(url)
        if status != 200:
            return f"{url}: {status}"
    return None


def problem(pid: int = 1) -> str | None:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    program = Path(argv[0]).name if argv else ""
    if program == "nats-server":
        return nats_problem(argv)
    if program == "docker-registry":
        return registry_problem(argv)
    return service_problem(pid, argv)


def main() -> int:
    reason = problem()
    print(reason or "healthy")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
