"""The pipeline log is readable by anyone: a plain nats-py subscriber (no edgepub import),
as the README shows it, run as its own process against a real stack with pages appended,
counts the rows of each partition."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from edgepub import Client
from support import log_pages
from support.log_pages import join, owner
from support.servers import NatsServer
from support.services import OpsServices

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("logs").add_model_step(model).publish(progress=False).id


SUBSCRIBER = """\
import asyncio, collections, json, os
import nats

async def main() -> None:
    user = os.environ["NATS_USER"]  # the SDK user reads the log; replies come to its inbox
    nc = await nats.connect(os.environ["NATS_URL"], user=user,
                            password=os.environ["NATS_PASSWORD"], inbox_prefix=f"_INBOX.{user}")
    sub = await nc.jetstream().subscribe("edgepub.logs.>", stream="EDGEPUB_LOGS",
                                         ordered_consumer=True)
    rows = collections.Counter()
    while True:
        msg = await sub.next_msg(timeout=10)
        lines = [json.loads(line) for line in msg.data.splitlines() if line]
        rows[msg.headers["Edgepub-Partition"]] += sum("gap" not in line for line in lines)
        if msg.metadata.num_pending == 0:
            break
    for partition, n in sorted(rows.items()):
        print(partition, n)
    await nc.close()

asyncio.run(main())
"""


def test_a_plain_nats_py_subscriber_counts_rows_per_partition(
    nats_server: NatsServer, ops: OpsServices, publish_id: int, tmp_path: Path
) -> None:
    async def ship() -> None:
        a = await join(nats_server, publish_id, "shop-a")
        b = await join(nats_server, publish_id, "shop-b")
        nc = await owner(nats_server)
        try:
            await log_pages.ship(a, "shop-a", 1, 300, size=100)
            await log_pages.ship(b, "shop-b", 1, 120, size=50)
            got = await log_pages.wait_rows(nc, 420)
            got.assert_exactly_once({"shop-a": 300, "shop-b": 120})
        finally:
            for c in (a, b, nc):
                await c.close()

    asyncio.run(ship())
    script = tmp_path / "log_subscriber.py"
    script.write_text(SUBSCRIBER)
    s = nats_server.settings()
    env = {"NATS_URL": s.url, "NATS_USER": s.user or "", "NATS_PASSWORD": s.password or ""}
    out = subprocess.run(
        [sys.executable, "-I", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["shop-a 300", "shop-b 120", ""]
    assert "edgepub" not in SUBSCRIBER.replace("edgepub.logs.>", "")
