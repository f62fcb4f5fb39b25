"""The Ops image's HEALTHCHECK: the stack in $EDGEPUB_HOME (/data) is up, NATS takes its SDK
login and the registry answers ``/v2/``. Exit 0 when healthy, 1 with the reason otherwise."""

from __future__ import annotations

import asyncio
import sys

from edgepub.services.stack.probes import nats_ready, registry_ready
from edgepub.shared.errors import ConfigError
from edgepub.shared.stack_file import load_stack_info


async def problem() -> str | None:
    try:
        info = load_stack_info()
    except ConfigError as exc:
        return str(exc)
    if not await nats_ready(info.nats_url, info.sdk_user, info.sdk_password):
        return f"NATS at {info.nats_url} refuses the SDK login or does not answer"
    host, _, port = info.registry.rpartition(":")
    # The embedded registry speaks plain HTTP; an HTTPS one elsewhere is not ours to watch.
    if info.registry_insecure and not await registry_ready(host, int(port or 80)):
        return f"the registry at {info.registry} does not answer /v2/"
    return None


def main() -> int:
    reason = asyncio.run(problem())
    print(reason or "healthy")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
