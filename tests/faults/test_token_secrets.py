"""No secret of edge identity in any log line: an edge's whole life (added, joined with its
token, heartbeats, renewals, removed, refused, the token service restarted under it) with
the services logging at debug, then every process's log (services, nats-server, registry)
and the SDK's own events searched for the join token, the bundle, the edge's nkey seed,
the stack's seeds and passwords and any JWT."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import structlog

from edgepub import Client
from edgepub.shared import rpc, subjects
from edgepub.shared.edge_messages import Heartbeat, HeartbeatReply, RenewReply, RenewRequest
from edgepub.shared.schemas import encode
from support.edge_bus import connect_edge, join_token, new_seed
from support.servers import NatsServer
from support.services import OpsServices

pytestmark = pytest.mark.timeout(240)

# Any NATS JWT: base64url JSON header, claims and signature. Ours and the server's all
# start with the same header, {"typ":"JWT","alg":"ed25519-nkey"}.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{20,}")
JWT_HEADER = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ"
DEBUG = {"EDGEPUB_LOG_LEVEL": "debug"}
REFUSED = r"(?i)authori[sz]ation"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_no_secret_of_an_edges_life_reaches_any_log(
    nats_server: NatsServer, ops: OpsServices, client: Client, model_file: Path
) -> None:
    for name in ("token", "publish", "registry_push"):
        ops.start(name, env=DEBUG)
    seed, steady_seed = new_seed(), new_seed()
    with structlog.testing.capture_logs() as sdk_events:
        model = client.upload_model("rf", model_file)
        published = client.build_pipeline("secrets").add_model_step(model).publish(progress=False)
        with_edge = published.add_edge("secret-edge", tags=["eu"])
        bundle = with_edge.docker_run_variables["EDGE_BUNDLE"]
        steady_bundle = published.add_edge("steady-edge").docker_run_variables["EDGE_BUNDLE"]
        repr(with_edge), with_edge._repr_html_(), repr(client.list_edges())
    token, steady_token = join_token(bundle), join_token(steady_bundle)

    async def life() -> None:
        edge = await connect_edge(nats_server, "secret-edge", seed, token)
        for _ in range(3):
            await rpc.call(
                edge, subjects.edge_subject("secret-edge", "heartbeat"), Heartbeat(), HeartbeatReply
            )
        await rpc.call(
            edge, subjects.edge_subject("secret-edge", "renew"), RenewRequest(), RenewReply
        )
        await edge.close()
        again = await connect_edge(nats_server, "secret-edge", seed)  # the key alone
        await again.close()
        steady = await connect_edge(nats_server, "steady-edge", steady_seed, steady_token)
        await steady.close()
        with pytest.raises(Exception, match=REFUSED):  # the used token, another key
            await connect_edge(nats_server, "secret-edge", new_seed(), token)

    async def after_removal() -> None:
        for s, t in ((seed, None), (seed, token), (new_seed(), token)):
            with pytest.raises(Exception, match=REFUSED):
                await connect_edge(nats_server, "secret-edge", s, t)

    async def after_restart() -> None:
        steady = await connect_edge(nats_server, "steady-edge", steady_seed)
        await steady.request(
            subjects.edge_subject("steady-edge", "heartbeat"), encode(Heartbeat()), timeout=5
        )
        await steady.close()
        await after_removal()

    run(life())
    with structlog.testing.capture_logs() as removal_events:
        with_edge.remove_edge("secret-edge")
    run(after_removal())
    ops["token"].restart(ready_event="auth_callout_serving")
    run(after_restart())
    assert ops["token"].env["EDGEPUB_LOG_LEVEL"] == "debug" and ops["token"].running()

    creds = nats_server.credentials
    secrets = {
        "join token": token,
        "second join token": steady_token,
        "bundle": bundle,
        "second bundle": steady_bundle,
        "edge seed": seed,
        "second edge seed": steady_seed,
        "auth issuer seed": creds.auth_issuer_seed,
        "system user seed": creds.system_user_seed,
        **{f"password of {user}": password for user, password in nats_server.users.items()},
    }
    if ops.registry is not None:
        secrets["registry password"] = ops.registry.password
    logs = ops.all_logs()
    assert "edge_joined" in logs and "credential_renewed" in logs and "edge_removed" in logs
    assert "edge_refused" in logs  # the refusals were logged, just without what was presented
    sdk = "\n".join(repr(e) for e in [*sdk_events, *removal_events])
    for what, secret in secrets.items():
        assert secret and len(secret) >= 16, what
        assert secret not in logs, f"the {what} appears in a process's log"
        assert secret not in sdk, f"the {what} appears in the SDK's log events"
    for text, where in ((logs, "a process's log"), (sdk, "the SDK's log events")):
        assert JWT_HEADER not in text and not JWT.search(text), f"a JWT appears in {where}"
