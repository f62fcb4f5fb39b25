"""edgepub-registry's HEALTHCHECK: GET /v2/ on the address the config the registry runs with
(``serve FILE``, its ``addr:``) names answers 401 (auth on) or 200. Exit 0 if healthy."""

import re
import sys
import urllib.error
import urllib.request
from pathlib import Path


def main() -> int:
    args = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    conf = next((a for a in args if a.endswith((".yml", ".yaml"))), "/config/registry.yml")
    m = re.search(r'^\s*addr:\s*"?([^"\s]*):(\d+)"?', Path(conf).read_text(), re.M)
    if m is None:
        print(f"{conf} has no http addr:")
        return 1
    host = "127.0.0.1" if m.group(1) in ("", "0.0.0.0") else m.group(1)
    url = f"http://{host}:{m.group(2)}/v2/"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}")
        return 1
    print(f"{url}: {status}")
    return 0 if status in (200, 401) else 1


if __name__ == "__main__":
    sys.exit(main())
