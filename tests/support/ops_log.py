"""What the pipeline log at Ops holds, read back as the SDK user reads it (an ordered
consumer on EDGEPUB_LOGS): rows, gap counts and edge sequence numbers per partition."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import nats
from nats.js.api import DeliverPolicy

from edgepub.shared import subjects
from edgepub.shared.log_lines import GapLine, decode_line, split_lines

from .edge_bus import admin
from .servers import NatsServer


@dataclass
class OpsLog:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lost: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # gap counts
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    pages: int = 0
    # gap counts per partition by reason (evicted, handoff_full, write_failed, too_large)
    gaps: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def total(self, partition: str) -> int:
        """Rows at Ops plus rows counted in gap records: what the edge logged."""
        return self.rows[partition] + self.lost[partition]

    def check_order(self) -> None:
        """No edge sequence number twice, and strictly increasing per partition."""
        for partition, seqs in self.seqs.items():
            assert len(seqs) == len(set(seqs)), f"{partition}: a sequence number twice"
            assert seqs == sorted(seqs), f"{partition}: sequence numbers out of order"


async def _read(server: NatsServer, filter_subject: str) -> OpsLog:
    nc = await admin(server)  # the SDK user: a reader of the pipeline log
    out = OpsLog()
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(subjects.LOGS_STREAM)
        except nats.js.errors.NotFoundError:
            return out
        if info.state.messages == 0:
            return out
        sub = await js.subscribe(
            filter_subject,
            stream=subjects.LOGS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    break
                partition = (msg.headers or {}).get(subjects.HEADER_PARTITION, "?")
                out.pages += 1
                for line in split_lines(msg.data):
                    item = decode_line(line)
                    out.seqs[partition].append(item.seq)
                    if isinstance(item, GapLine):
                        out.lost[partition] += item.gap.count
                        out.gaps[partition][item.gap.reason] += item.gap.count
                    else:
                        out.rows[partition] += 1
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return out


def ops_log(server: NatsServer, filter_subject: str = f"{subjects.LOGS_ROOT}.>") -> OpsLog:
    return asyncio.run(_read(server, filter_subject))
