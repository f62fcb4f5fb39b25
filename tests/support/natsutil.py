"""Small NATS checks for tests."""

from __future__ import annotations

import nats


async def publish_allowed(url: str, user: str, password: str, subject: str) -> bool:
    """Publish then round-trip twice; False if the server reported a permissions violation."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(url, user=user, password=password, error_cb=on_error)
    try:
        await nc.publish(subject, b"x")
        await nc.flush()
        # The -ERR for a violation arrives before the PONG of the next PING: flush again.
        await nc.flush()
    finally:
        await nc.close()
    return not any("permissions violation" in str(e).lower() for e in errors)
