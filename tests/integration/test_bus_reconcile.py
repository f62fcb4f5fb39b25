"""The publish service owns every stream and bucket: provisioning twice changes nothing,
and a stream or bucket found with other settings (an older release's limits, a hand edit)
is brought back to the configuration, in place, keeping its messages."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from structlog.testing import capture_logs

from edgepub.shared import bus, subjects
from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env
from support.servers import NatsServer

DAY = 24 * 3600.0


def test_provisioning_twice_changes_nothing_and_drift_is_put_back(
    nats_server: NatsServer,
) -> None:
    async def main() -> tuple[list[dict[str, object]], list[dict[str, object]], dict[str, object]]:
        nc = await bus.connect(nats_server.settings("publish"), name="reconcile")
        js = nc.jetstream()
        try:
            await bus.ensure_all(js)
            with capture_logs() as again:
                await bus.ensure_all(js)
            # drift: other limits on a stream and on a bucket's stream, a message kept
            await js.publish(subjects.PUBLISH_REQUESTED, b"kept")
            work = (await js.stream_info(subjects.WORK_STREAM)).config
            await js.update_stream(dataclasses.replace(work, max_age=DAY))
            kv = (await js.stream_info(f"KV_{subjects.KV_PUBLISHES}")).config
            await js.update_stream(dataclasses.replace(kv, max_msgs_per_subject=1))
            before = (await js.stream_info(subjects.WORK_STREAM)).state.messages
            with capture_logs() as fixed:
                await bus.ensure_all(js)
            work = (await js.stream_info(subjects.WORK_STREAM)).config
            kv = (await js.stream_info(f"KV_{subjects.KV_PUBLISHES}")).config
            after = (await js.stream_info(subjects.WORK_STREAM)).state.messages
            return (
                again,
                fixed,
                {
                    "work_age": work.max_age,
                    "history": kv.max_msgs_per_subject,
                    "kept": (before, after),
                },
            )
        finally:
            await nc.close()

    again, fixed, now = asyncio.run(main())
    assert [e for e in again if e["event"] == "stream_updated"] == []
    updated = {e["stream"]: e for e in fixed if e["event"] == "stream_updated"}
    assert set(updated) == {subjects.WORK_STREAM, f"KV_{subjects.KV_PUBLISHES}"}
    assert "max_age" in updated[subjects.WORK_STREAM]
    assert "max_msgs_per_subject" in updated[f"KV_{subjects.KV_PUBLISHES}"]
    assert now["work_age"] == bus.WORK_MAX_AGE_S and now["history"] == bus.RECORD_HISTORY
    before, after = now["kept"]  # type: ignore[misc]
    assert after == before  # updated in place: nothing stored is lost


@pytest.mark.parametrize("value", ["0", "6", "three"])
def test_replicas_out_of_range_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="EDGEPUB_REPLICAS"):
        bus.replicas_from_env(Env({"EDGEPUB_REPLICAS": value}))
    assert bus.replicas_from_env(Env({})) == 1
