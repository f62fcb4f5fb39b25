"""No secret of edge identity in any log line at any level: a real ``edgepub-edge`` agent's
whole life with everything at debug (the agent with ``DEBUG=true``; publish, registry-push,
the token service and the log collector with ``EDGEPUB_LOG_LEVEL=debug``; nats-server with
``-DV``, debug and protocol trace with message payloads), then every captured line of every
process (the agents, the services, nats-server, the registry) and the SDK's own events
searched for the join token, the bundle, the edges' nkey seeds, any nkey seed at all, any
JWT and every password.

The life: joined with its token; heartbeats; the credential renewed over the bus and on
reconnects (short periods: the session's JWT runs out and the agent connects again with its
key); a replace swapped in; inferences shipped to the log collector; a second agent refused
with the used token; removed (told over its control subject and kicked, or refused at its
next connect); the token service restarted under the refused agent.

Two parts of nats-server's trace are searched apart, because the protocol puts a secret in
a message body there: the answer to an add-edge request, which hands the bundle to the SDK
user (the join token may appear in it; a key, JWT or password may not), and the auth
callout's own request and answer, which are JWTs by the protocol; the request holds the
edge's CONNECT options with its join token. The callout is encrypted (the stack's
auth_callout has an xkey), so its trace must show ciphertext only."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.shared import subjects
from edgepub.shared.bundle import decode_bundle
from support.edge import EdgeAgent, http, persisted_seed
from support.edge_bus import connect_edge, join_token, new_seed
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

SERVICES = ("publish", "registry_push", "token", "log_collector")
DEBUG = {"EDGEPUB_LOG_LEVEL": "debug"}
# short periods, so renewals over the bus and on reconnect both happen in seconds
PERIODS = {"EDGEPUB_CREDENTIAL_IDLE_S": "3", "EDGEPUB_EDGE_SESSION_TTL_S": "1.5"}
PIPELINE = "secrets"
ADDED = "nats-server's trace of the add-edge answer"

# Any NATS JWT: base64url JSON header, then base64url JSON claims.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.")
# Any nkey seed (user, account, operator, server, cluster, curve): 'S', its kind, 56 more
# base32 characters. Public keys (U..., A..., N...) may be logged; seeds never.
SEED = re.compile(r"\bS[UAONCX][A-Z2-7]{56}\b")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server logging debug and trace (``-DV``): every protocol line, every payload."""
    server = NatsServer(tmp_path / "nats")
    server.child.argv += ["-DV"]
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def ops(nats_server: NatsServer, registry: RegistryServer, tmp_path: Path) -> Iterator[OpsServices]:
    """Every Ops service at debug."""
    services = OpsServices(nats_server, registry, tmp_path / "service-logs")
    try:
        services.start_available(SERVICES, env=DEBUG | PERIODS)
        yield services
    finally:
        for proc in services.procs.values():
            proc.kill()


def _agent(tmp_path: Path, name: str, registry: RegistryServer, url: str, bundle: str) -> EdgeAgent:
    env = {
        "PIPELINE_URL": url,
        "EDGE_BUNDLE": bundle,
        "OCI_USERNAME": registry.username,
        "OCI_PASSWORD": registry.password,
        "DEBUG": "true",  # the agent's debug switch (edge_agent/config.py)
        "EDGEPUB_HEARTBEAT_S": "0.3",
        "LOCAL_INFERENCE_STORAGE": "16Mi",
        "PLATEAU_PAGE_SIZE": "5",
    }
    return EdgeAgent(tmp_path / name, env).start()


# nats-server's trace: "<client> - <<- [PUB subject reply size]" (or "->> [MSG subject sid
# reply size]") names a message, the next "<client> - <<- MSG_PAYLOAD: [...]" from that same
# client and direction is its body.
_TRACE_HEAD = re.compile(
    r"\[TRC\] (?P<who>.*?) - (?P<dir><<-|->>) \[H?(?:PUB|MSG) (?P<rest>[^\]]*)\]"
)
_TRACE_BODY = re.compile(r"\[TRC\] (?P<who>.*?) - (?P<dir><<-|->>) MSG_PAYLOAD: ")


def split_trace(lines: list[str], requests: set[str]) -> tuple[list[str], list[str]]:
    """nats-server's log lines as (the traced bodies of the messages on ``requests`` and of
    their replies; every other line)."""
    bodies, rest = [], []
    replies: set[str] = set()
    current: dict[tuple[str, str], str] = {}
    for line in lines:
        head = _TRACE_HEAD.search(line)
        body = None if head else _TRACE_BODY.search(line)
        if head:
            subject, *fields = head["rest"].split()
            current[(head["who"], head["dir"])] = subject
            if subject in requests:  # PUB subject [reply] size; MSG subject sid [reply] size
                replies.update(f for f in fields if not f.isdigit())
        elif body and current.pop((body["who"], body["dir"]), "") in requests | replies:
            bodies.append(line)
            continue
        rest.append(line)
    return bodies, rest


def split_nats_log(log: str, sdk_user: str) -> tuple[list[str], list[str], list[str]]:
    """nats-server's log as (the auth callout's traced messages; the traced answers to
    add-edge requests; every other line).

    The callout's request is a JWT the server signs holding the client's CONNECT options
    (the join token among them), its answer a JWT wrapping the edge's user JWT: nats-server
    traces both payloads as they are (it redacts only its own CONNECT lines). They are
    searched apart, in ``test_nats_server_trace_of_the_callout_holds_no_secret``. The answer
    to an add-edge request carries the new bundle to the SDK user (its one showing): the
    join token may be traced there, and nowhere else."""
    callout, rest = split_trace(log.splitlines(), {subjects.AUTH_CALLOUT})
    added, rest = split_trace(rest, {subjects.request(sdk_user, subjects.VERB_EDGE_ADD)})
    return callout, added, rest


def test_no_secret_of_a_real_agents_life_reaches_any_log_at_debug(
    nats_server: NatsServer,
    ops: OpsServices,
    registry: RegistryServer,
    client: Client,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    assert all(ops[n].env["EDGEPUB_LOG_LEVEL"] == "debug" for n in SERVICES)
    with structlog.testing.capture_logs() as sdk_events:
        v1 = client.upload_model("rf", house_price_model(tmp_path / "v1.onnx", n_estimators=3))
        pipeline = client.build_pipeline(PIPELINE).add_model_step(v1)
        first = pipeline.publish(progress=False)
        with_edge = first.add_edge("secret-edge", tags=["eu"])
        bundle = with_edge.docker_run_variables["EDGE_BUNDLE"]
        repr(with_edge), with_edge._repr_html_(), repr(pipeline.list_edges())
    token = decode_bundle(bundle).join_token
    url = first.pipeline_url or ""

    agent = _agent(tmp_path, "edge", registry, url, bundle)
    agents.append(agent)
    agent.wait_ready()
    agent.wait_event("Node attestation was successful.", timeout=30)
    # the session's JWT lives 1.5 s: the agent connects again with its key, twice at least
    agent.wait_event("ops_connected", count=3, timeout=30)
    wait_for(
        lambda: ops["token"].log_text().count('"credential_renewed"') >= 3,
        30,
        "renewals over the bus",
    )
    body = [{v1.inputs[0].name: [0.2] * N_FEATURES}]
    session = http()
    for _ in range(10):
        resp = session.post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
    wait_for(
        lambda: ops["log_collector"].log_text().count("secret-edge") > 0,
        30,
        "the collector to take the edge's pages",
    )

    with structlog.testing.capture_logs() as replace_events:
        v2 = client.upload_model("rf", house_price_model(tmp_path / "v2.onnx", n_estimators=4))
        second = pipeline.clear().add_model_step(v2).publish(replaces=[first], progress=False)
        repr(second)
    agent.wait_event("pipeline_swapped", timeout=60)

    intruder = _agent(tmp_path, "intruder", registry, url, bundle)  # the used token
    agents.append(intruder)
    assert intruder.wait_event("ops_refused", timeout=30)["access"] == "refused"

    refusals = agent.event_names().count("ops_refused")
    with structlog.testing.capture_logs() as removal_events:
        client.remove_edge("secret-edge")
    # revoked over its control subject (or, between two sessions, refused at the next)
    agent.wait_event("ops_refused", count=refusals + 1, timeout=30)
    ops["token"].restart(ready_event="auth_callout_serving", timeout=30)
    refusals = agent.event_names().count("ops_refused")
    agent.wait_event("ops_refused", count=refusals + 1, timeout=30)  # by the new process
    assert agent.child.running() and intruder.child.running()

    logged = {
        "token": ops["token"].log_text(),
        "log_collector": ops["log_collector"].log_text(),
    }
    for event in ("edge_joined", "edge_authenticated", "credential_renewed", "edge_removed"):
        assert event in logged["token"], event
    assert "edge_refused" in logged["token"]  # refusals are logged, without what was presented
    assert '"level": "debug"' in logged["log_collector"]  # debug lines were written, and read
    callout, added, traced = split_nats_log(nats_server.child.log_text(), nats_server.sdk_user)
    assert callout and added, "nats-server traced no callout message or add-edge answer"
    assert any("[TRC]" in line for line in traced) and any("[DBG]" in line for line in traced)

    creds = nats_server.credentials
    secrets = {
        "join token": token,
        "bundle": bundle,
        "edge seed": persisted_seed(agent.persist),
        "intruder's seed": persisted_seed(intruder.persist),
        "auth issuer seed": creds.auth_issuer_seed,
        "system user seed": creds.system_user_seed,
        "registry password": registry.password,
        "registry http secret": creds.registry_http_secret,
        **{f"password of {user}": password for user, password in nats_server.users.items()},
    }
    processes = {
        "agent": agent.child.log_text(),
        "refused agent": intruder.child.log_text(),
        **{name: proc.log_text() for name, proc in ops.procs.items()},
        "nats-server": "\n".join(traced),
        "registry": registry.child.log_text(),
        "SDK": "\n".join(repr(e) for e in [*sdk_events, *replace_events, *removal_events]),
        ADDED: "\n".join(added),  # the bundle's one showing: never a key, JWT or password
    }
    for where, text in processes.items():
        assert text or where == "SDK", f"nothing captured from the {where}"
        for what, secret in secrets.items():
            assert secret and len(secret) >= 16, what
            if where == ADDED and what in ("join token", "bundle"):
                continue  # the payload that hands the bundle to the SDK user, traced
            assert secret not in text, f"the {what} appears in the {where}'s log"
        seed = SEED.search(text)
        assert seed is None, f"an nkey seed appears in the {where}'s log: {seed!r}"
        jwt = JWT.search(text)
        assert jwt is None, f"a JWT appears in the {where}'s log at {jwt.start() if jwt else 0}"


def _claims(line: str) -> str:
    """Every JWT's claims in ``line``, decoded (what a reader of the log can read)."""
    out = []
    for found in JWT.finditer(line):
        segment = found.group(0).split(".")[1]
        out.append(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode())
    return "\n".join(out)


def test_nats_server_trace_of_the_callout_holds_no_secret(
    nats_server: NatsServer, ops: OpsServices, client: Client, model_file: Path
) -> None:
    model = client.upload_model("rf", model_file)
    published = client.build_pipeline("traced").add_model_step(model).publish(progress=False)
    token = join_token(published.add_edge("traced-edge").docker_run_variables["EDGE_BUNDLE"])

    async def join() -> None:
        edge = await connect_edge(nats_server, "traced-edge", new_seed(), token)
        await edge.close()

    asyncio.run(join())
    callout, _, _ = split_nats_log(nats_server.child.log_text(), nats_server.sdk_user)
    assert callout, "nats-server traced no callout message"
    for line in callout:
        assert token not in line and token not in _claims(line), "the join token in a trace line"
        assert not JWT.search(line), "a JWT in nats-server's trace of the auth callout"
