"""edgepub-nats's HEALTHCHECK: GET /healthz?js-enabled-only=true on the monitor port that
the config nats-server runs with (``-c FILE``, its ``http:`` line) names. Exit 0 if healthy."""

import re
import sys
import urllib.error
import urllib.request
from pathlib import Path


def main() -> int:
    args = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    conf = args[args.index("-c") + 1] if "-c" in args else "/config/nats-0.conf"
    m = re.search(r'^http:\s*"?([^"\s]*):(\d+)"?', Path(conf).read_text(), re.M)
    if m is None:
        print(f"{conf} has no http: monitor listener")
        return 1
    host = "127.0.0.1" if m.group(1) in ("", "0.0.0.0") else m.group(1)
    url = f"http://{host}:{m.group(2)}/healthz?js-enabled-only=true"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            print(resp.read().decode()[:200])
            return 0
    except (OSError, urllib.error.URLError) as exc:
        print(f"{url}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
