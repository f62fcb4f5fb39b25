"""The log collector's settings, from the environment (every bad value names itself)."""

from __future__ import annotations

import msgspec

from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env


class CollectorSettings(msgspec.Struct, frozen=True, kw_only=True):
    # Pages handled at once in one process (different edges in parallel, one edge in turn).
    # nats-server holds at most 50 open batches per stream: keep the sum over processes under.
    concurrency: int = 16
    batch: int = 16  # pages one fetch asks for
    ack_wait_s: float = 30.0
    append_timeout_s: float = 5.0  # one watermark read or one commit's answer
    wait_hold_s: float = 2.0  # a page ahead of its edge's watermark waits here this long ...
    wait_retry_s: float = 1.0  # ... then goes back to the stream for this long
    retry_s: float = 0.5  # after a failed append (no answer, the broker away)

    @classmethod
    def from_env(cls, env: Env | None = None) -> CollectorSettings:
        env = env or Env()
        d = cls()
        settings = cls(
            concurrency=env.integer("EDGEPUB_COLLECTOR_CONCURRENCY", d.concurrency),
            batch=env.integer("EDGEPUB_COLLECTOR_BATCH", d.batch),
            ack_wait_s=env.number("EDGEPUB_ACK_WAIT_S", d.ack_wait_s),
            append_timeout_s=env.number("EDGEPUB_COLLECTOR_APPEND_TIMEOUT_S", d.append_timeout_s),
            wait_hold_s=env.number("EDGEPUB_COLLECTOR_WAIT_HOLD_S", d.wait_hold_s),
            wait_retry_s=env.number("EDGEPUB_COLLECTOR_WAIT_RETRY_S", d.wait_retry_s),
            retry_s=env.number("EDGEPUB_COLLECTOR_RETRY_S", d.retry_s),
        )
        if not 1 <= settings.concurrency <= 50:
            raise ConfigError(
                f"EDGEPUB_COLLECTOR_CONCURRENCY={settings.concurrency} must be 1..50 (nats-server "
                "keeps at most 50 atomic batches open per stream)"
            )
        if settings.batch < 1:
            raise ConfigError(f"EDGEPUB_COLLECTOR_BATCH={settings.batch} must be at least 1")
        for name, value in (
            ("EDGEPUB_ACK_WAIT_S", settings.ack_wait_s),
            ("EDGEPUB_COLLECTOR_APPEND_TIMEOUT_S", settings.append_timeout_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value:g} must be more than 0 seconds")
        return settings
