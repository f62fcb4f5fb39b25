"""Nothing on the bus grows without limit: every stream and bucket the publish service
creates carries its bound, as the real server reports it back."""

from __future__ import annotations

import asyncio

from edgepub.shared import bus, objects, subjects
from support.servers import NatsServer

DAY = 24 * 3600.0


async def _configs(server: NatsServer) -> dict[str, object]:
    nc = await bus.connect(server.settings("publish"), name="bounds")
    try:
        js = nc.jetstream()
        await bus.ensure_all(js)
        names = [
            subjects.WORK_STREAM,
            subjects.EVENTS_STREAM,
            *(f"KV_{b.bucket}" for b in bus.bucket_configs()),
            *(objects.stream_of(o.bucket or "") for o in bus.object_store_configs()),
        ]
        return {n: (await js.stream_info(n)).config for n in names}
    finally:
        await nc.close()


def test_every_stream_and_bucket_is_bounded(nats_server: NatsServer) -> None:
    configs = asyncio.run(_configs(nats_server))
    work = configs[subjects.WORK_STREAM]
    events = configs[subjects.EVENTS_STREAM]
    assert work.max_age == 7 * DAY  # type: ignore[attr-defined]
    assert events.max_age == 7 * DAY  # type: ignore[attr-defined]
    assert events.max_msgs_per_subject == 16  # type: ignore[attr-defined]
    assert events.max_bytes == 1 << 30  # type: ignore[attr-defined]
    requests = configs[f"KV_{subjects.KV_REQUESTS}"]
    assert requests.max_age == DAY  # type: ignore[attr-defined]
    assert requests.max_msgs_per_subject == 1  # type: ignore[attr-defined]
    assert configs[f"KV_{subjects.KV_COUNTERS}"].max_msgs_per_subject == 1  # type: ignore[attr-defined]
    for bucket in (subjects.KV_MODELS, subjects.KV_PIPELINES, subjects.KV_PUBLISHES):
        assert configs[f"KV_{bucket}"].max_msgs_per_subject == 5  # type: ignore[attr-defined]
    uploads = configs[objects.stream_of(subjects.OBJECT_STORE_UPLOADS)]
    assert uploads.max_age == DAY  # type: ignore[attr-defined]
