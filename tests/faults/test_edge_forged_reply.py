"""An edge names another edge's subjects, Ops' buckets or the JetStream API as the reply
subject of its own requests and pages: nothing lands anywhere but in the edge account.

Edges live in their own account and reach Ops through a service import, so the server maps
every reply subject an edge names and answers it back inside the edge account, where no
stream, bucket or JetStream API exists. Without that, the token service's answer or
JetStream's publish ack would be written to whatever subject the edge chose: another edge's
control subject, its record in the edges bucket, or a JetStream API call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.msg import Msg

from edgepub import Client
from edgepub.shared import rpc, subjects
from edgepub.shared.edge_messages import EdgeList, EdgeListRequest, Heartbeat
from edgepub.shared.schemas import encode
from support.edge_bus import add_edge, admin, connect_edge, join_token, new_seed
from support.log_pages import owner

TARGETS = {
    "control": lambda: subjects.control("edge-b"),
    "kv-record": lambda: f"$KV.{subjects.KV_EDGES}.edge.edge-b",
    "pages": lambda: subjects.edge_subject("edge-b", subjects.EDGE_LOGS),
    "heartbeat": lambda: subjects.edge_subject("edge-b", subjects.EDGE_HEARTBEAT),
    "js-purge": lambda: f"$JS.API.STREAM.PURGE.{subjects.PAGES_STREAM}",
}


def test_a_forged_reply_subject_reaches_nothing_of_ops_or_another_edge(
    nats_server, client: Client, model_file: Path
) -> None:
    model = client.upload_model("rf", model_file)
    pid = client.build_pipeline("fr").add_model_step(model).publish(progress=False).id

    async def main() -> None:
        nc = await admin(nats_server)
        ops = await owner(nats_server)  # sees every stream
        js = ops.jetstream()
        a_token = join_token((await add_edge(nc, pid, "edge-a")).bundle)
        b_token = join_token((await add_edge(nc, pid, "edge-b")).bundle)
        a = await connect_edge(nats_server, "edge-a", new_seed(), a_token)
        b_seed = new_seed()
        b = await connect_edge(nats_server, "edge-b", b_seed, b_token)
        got: list[Msg] = []

        async def on_b(msg: Msg) -> None:
            got.append(msg)

        await b.subscribe(subjects.control("edge-b"), cb=on_b)
        await b.flush()
        # one honest page of B's, so a purge or an overwrite would show
        await b.request(subjects.edge_subject("edge-b", subjects.EDGE_LOGS), b"b-page", timeout=5)
        before = await js.stream_info(subjects.PAGES_STREAM)
        for target in TARGETS.values():  # A asks on its own subjects, naming another reply
            await a.publish(
                subjects.edge_subject("edge-a", subjects.EDGE_HEARTBEAT),
                encode(Heartbeat()),
                reply=target(),
            )
            await a.publish(
                subjects.edge_subject("edge-a", subjects.EDGE_LOGS), b"a-page", reply=target()
            )
        await a.flush()
        await asyncio.sleep(1.0)

        # A reply lands on B's control subject only inside the edge account, and without
        # the header that only the token service's own control messages carry: B's agent
        # drops it (control_not_from_ops). Nothing else of Ops or B moved:
        forged = [m for m in got if (m.headers or {}).get(subjects.HEADER_CONTROL)]
        assert forged == [], f"B's control subject received {forged[0].data!r}"
        listed = await rpc.call(
            nc, subjects.request("admin", subjects.VERB_EDGE_LIST), EdgeListRequest(), EdgeList
        )
        assert {e.name: e.credential_state for e in listed.edges} == {
            "edge-a": "joined",
            "edge-b": "joined",
        }
        after = await js.stream_info(subjects.PAGES_STREAM)
        # A's own pages are stored (a collector drops them as unreadable); nothing else was
        # stored on any edge's subject, and no JetStream API call was made of a reply
        stored = after.state.last_seq - before.state.last_seq
        assert stored == len(TARGETS)
        await b.close()
        b_again = await connect_edge(nats_server, "edge-b", b_seed)  # its record is intact
        await b_again.close()
        await a.close()
        await nc.close()
        await ops.close()

    asyncio.run(main())
