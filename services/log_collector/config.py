"""The log collector's settings, from the environment (every bad value names itself).

Throughput comes from group commit (``handlers``): the pages of one edge in this process
while that edge's append is in progress are appended next as ONE atomic batch, because
nats-server's cost is mostly per batch (~3.5 ms), not per page. So the process holds many
pages (``concurrency``), groups up to ``batch_pages`` of an edge into one batch, and keeps up
to ``open_batches`` batches (of different edges) in flight.

``EDGEPUB_FAULT_EXIT_AFTER_APPENDS`` is for tests only (``fault``): never set it in a
deployment.
"""

from __future__ import annotations

import msgspec

from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env

# nats-server's limits on atomic batches (server/stream.go): 1000 messages in one, the
# commit included; 50 open per stream (across every collector process on the stream).
SERVER_BATCH_MESSAGES = 1000
SERVER_OPEN_BATCHES = 50
# Bytes of pages in one batch past its first page. The server sets no byte limit on a batch
# (each message is held to max_payload), but every open batch goes through the stream's
# 128 MiB ingest queue and is staged whole before its commit: 16 open batches of 8 MiB stay
# within it.
GROUP_MAX_BYTES = 8 * 1024 * 1024


class CollectorSettings(msgspec.Struct, frozen=True, kw_only=True):
    # Pages in hand in one process (the runner's slots): while an edge's batch is in flight
    # its next pages queue here to form the next one. Different edges go in parallel.
    concurrency: int = 128
    batch: int = 64  # pages one fetch asks for (never more than the free slots)
    batch_pages: int = 64  # most pages of one edge in one atomic batch (+1 for its commit)
    # Most atomic batches in flight at once in this process. nats-server keeps at most 50
    # open per stream: keep the sum over collector processes under it.
    open_batches: int = 16
    # Pages unacked at once on the durable consumer, over every collector process.
    max_ack_pending: int = 1000
    ack_wait_s: float = 30.0
    append_timeout_s: float = 5.0  # one watermark read or one commit's answer
    wait_hold_s: float = 2.0  # a page ahead of its edge's watermark waits here this long ...
    wait_retry_s: float = 1.0  # ... then goes back to the stream for this long
    retry_s: float = 0.5  # after a failed append (no answer, the broker away)
    # Every this often, and whenever the process has appended an eighth of the log's
    # max_bytes since, it re-writes at the stream's tail the watermarks that eviction would
    # reach next (``sweep``): the log must take in less than half its max_bytes between
    # two sweeps, or an idle edge's watermark can be evicted (``watermark_sweep_behind``).
    watermark_sweep_s: float = 10.0
    # An edge with neither a watermark nor a page in the pipeline log, whose pages have
    # waited this long (since the pages stream stored them) for rows before them, resumes
    # from its lowest waiting page (``watermark_lost``): retention or an operator removed
    # everything Ops held of it.
    adopt_after_s: float = 600.0
    # Test only: exit (code 137, as a SIGKILL) right after this many appends of this
    # process returned, before their pages are acked. 0: off.
    fault_exit_after_appends: int = 0

    @classmethod
    def from_env(cls, env: Env | None = None) -> CollectorSettings:
        env = env or Env()
        d = cls()
        settings = cls(
            concurrency=env.integer("EDGEPUB_COLLECTOR_CONCURRENCY", d.concurrency),
            batch=env.integer("EDGEPUB_COLLECTOR_BATCH", d.batch),
            batch_pages=env.integer("EDGEPUB_COLLECTOR_BATCH_PAGES", d.batch_pages),
            open_batches=env.integer("EDGEPUB_COLLECTOR_OPEN_BATCHES", d.open_batches),
            max_ack_pending=env.integer("EDGEPUB_COLLECTOR_MAX_ACK_PENDING", d.max_ack_pending),
            ack_wait_s=env.number("EDGEPUB_ACK_WAIT_S", d.ack_wait_s),
            append_timeout_s=env.number("EDGEPUB_COLLECTOR_APPEND_TIMEOUT_S", d.append_timeout_s),
            wait_hold_s=env.number("EDGEPUB_COLLECTOR_WAIT_HOLD_S", d.wait_hold_s),
            wait_retry_s=env.number("EDGEPUB_COLLECTOR_WAIT_RETRY_S", d.wait_retry_s),
            retry_s=env.number("EDGEPUB_COLLECTOR_RETRY_S", d.retry_s),
            watermark_sweep_s=env.number(
                "EDGEPUB_COLLECTOR_WATERMARK_SWEEP_S", d.watermark_sweep_s
            ),
            adopt_after_s=env.number("EDGEPUB_COLLECTOR_ADOPT_AFTER_S", d.adopt_after_s),
            fault_exit_after_appends=env.integer(
                "EDGEPUB_FAULT_EXIT_AFTER_APPENDS", d.fault_exit_after_appends
            ),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ConfigError naming the first bad value (as its environment variable)."""
        if not 1 <= self.concurrency <= 1000:
            raise ConfigError(
                f"EDGEPUB_COLLECTOR_CONCURRENCY={self.concurrency} must be 1..1000 (pages in "
                "hand; the durable consumer lets 1000 be unacked at once)"
            )
        if self.max_ack_pending < 1:
            raise ConfigError(
                f"EDGEPUB_COLLECTOR_MAX_ACK_PENDING={self.max_ack_pending} must be at least 1"
            )
        if self.batch < 1:
            raise ConfigError(f"EDGEPUB_COLLECTOR_BATCH={self.batch} must be at least 1")
        if not 1 <= self.batch_pages < SERVER_BATCH_MESSAGES:
            raise ConfigError(
                f"EDGEPUB_COLLECTOR_BATCH_PAGES={self.batch_pages} must be 1..999 (an atomic "
                f"batch is at most {SERVER_BATCH_MESSAGES} messages, its commit included)"
            )
        if not 1 <= self.open_batches <= SERVER_OPEN_BATCHES:
            raise ConfigError(
                f"EDGEPUB_COLLECTOR_OPEN_BATCHES={self.open_batches} must be 1..50 (nats-server "
                f"keeps at most {SERVER_OPEN_BATCHES} atomic batches open per stream)"
            )
        for name, value in (
            ("EDGEPUB_ACK_WAIT_S", self.ack_wait_s),
            ("EDGEPUB_COLLECTOR_APPEND_TIMEOUT_S", self.append_timeout_s),
            ("EDGEPUB_COLLECTOR_WATERMARK_SWEEP_S", self.watermark_sweep_s),
            ("EDGEPUB_COLLECTOR_ADOPT_AFTER_S", self.adopt_after_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value:g} must be more than 0 seconds")
        if self.fault_exit_after_appends < 0:
            raise ConfigError(
                f"EDGEPUB_FAULT_EXIT_AFTER_APPENDS={self.fault_exit_after_appends} must be 0 "
                "(off) or more (test only: exit after that many appends)"
            )
