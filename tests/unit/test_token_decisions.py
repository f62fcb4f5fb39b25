"""The token service's decisions, pure: who may connect (every branch of the auth callout's
``authorize``), renewals, credential states over time, what list_edges shows, and the
compare-and-set race of many joins with one token, simulated in every interleaving."""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.services.token.decisions import (
    RENEW_SLACK,
    Deny,
    Grant,
    authorize,
    credential_state,
    edge_info,
    renewed,
    spiffe_id,
)
from edgepub.services.token.jwt import AuthRequest, ClientInfo, ConnectOpts, ServerId
from edgepub.services.token.settings import TokenSettings
from edgepub.shared import keys
from edgepub.shared.bundle import join_token_sha256 as token_sha256
from edgepub.shared.edge_messages import Assignment, EdgeRecord, EdgeSeen

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CFG = TokenSettings(
    issuer_seed=keys.new_seed("account"),
    system_seed=keys.new_seed("user"),
    opscenter_host="ws://127.0.0.1:1/edge",
    trust_domain="edgepub.test",
    join_token_ttl_s=600.0,
    credential_idle_s=3600.0,
    session_ttl_s=300.0,
    offline_after_s=30.0,
)
TOKEN = "0b7f6c1e-3d4a-4c55-9e2b-7a1d2f3e4b5c"
NONCE = "server-nonce-Zq3"
SEED = keys.new_seed("user")
OTHER_SEEDS = tuple(keys.new_seed("user") for _ in range(10))
ASSIGNMENT = Assignment(
    publish_id=7,
    pipeline_name="houses",
    pipeline_version_id=3,
    pipeline_version_name="v3",
    pipeline_url="registry:5000/edgepub/pipelines/houses:v3",
)
PENDING = EdgeRecord(
    id="6f1c7d2e-8a9b-4c0d-9e1f-2a3b4c5d6e7f",
    name="shop-1",
    tags=("eu",),
    assignment=ASSIGNMENT,
    join_token_sha256=token_sha256(TOKEN),
    join_token_expires_at=NOW + timedelta(seconds=CFG.join_token_ttl_s),
    created_at=NOW - timedelta(hours=1),
)
JOINED = msgspec.structs.replace(
    PENDING,
    state="joined",
    public_key=keys.public_key(SEED),
    joined_at=NOW - timedelta(minutes=10),
    credential_expires_at=NOW + timedelta(minutes=20),
)
REVOKED = msgspec.structs.replace(JOINED, state="revoked", public_key=None, revoked_at=NOW)


def signed(seed: str, nonce: str = NONCE, *, urlsafe: bool = True) -> str:
    sig = keys.sign(seed, nonce.encode())
    return (
        base64.urlsafe_b64encode(sig).rstrip(b"=") if urlsafe else base64.b64encode(sig)
    ).decode()


def request(
    name: str = "shop-1",
    seed: str | None = SEED,
    token: str = "",
    *,
    nonce: str = NONCE,
    nkey: str | None = None,
    sig: str | None = None,
) -> AuthRequest:
    """A connect as the server reports it: the client name, its nkey, the nonce signed."""
    return AuthRequest(
        server_id=ServerId(id="NSERVER", name="n1"),
        user_nkey="UCONNECTION",
        client_info=ClientInfo(host="127.0.0.1", id=5, nonce=nonce, kind="Client"),
        connect_opts=ConnectOpts(
            name=name,
            nkey=nkey if nkey is not None else (keys.public_key(seed) if seed else ""),
            sig=sig if sig is not None else (signed(seed, nonce) if seed else ""),
            auth_token=token,
        ),
    )


def denied(decision: Grant | Deny, words: str) -> str:
    assert isinstance(decision, Deny), decision
    assert words in decision.reason, decision.reason
    return decision.reason


# --- who is asking ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "shop.1", "shop-*", ">", "a b", "shöp", "shop\n1"])
def test_a_connect_without_a_usable_name_is_refused(name: str) -> None:
    denied(authorize(request(name, token=TOKEN), PENDING, NOW, CFG), "no edge name")


@settings(max_examples=200)
@given(name=st.text(max_size=80), token=st.text(max_size=80), nonce=st.text(max_size=40))
def test_any_name_token_or_nonce_is_decided_never_raises(name: str, token: str, nonce: str) -> None:
    """The shell reads the record of the name the connect claims, so the records here are
    that name's: a Grant needs a usable name and the right secret for its state."""
    for record in (None, PENDING, JOINED, REVOKED):
        mine = msgspec.structs.replace(record, name=name) if record else None
        decision = authorize(request(name, token=token, nonce=nonce), mine, NOW, CFG)
        assert isinstance(decision, Grant | Deny)
        if isinstance(decision, Grant):
            assert decision.edge == name and re.fullmatch(r"[A-Za-z0-9_-]+", name)
            assert record is JOINED or (record is PENDING and token == TOKEN)


@pytest.mark.parametrize(
    "bad",
    [
        {"seed": None},  # no nkey, no signature
        {"sig": ""},  # an nkey and no signature
        {"sig": signed(SEED, "another nonce")},  # a replayed signature
        {"sig": signed(OTHER_SEEDS[0])},  # signed by someone else's key
        {"sig": "not base64 at all!"},
        {"sig": base64.b64encode(b"\0" * 64).decode()},
        {"sig": "A" * 500},
        {"nkey": keys.public_key(keys.new_seed("account"))},  # not a user key
        {"nkey": "U" + "A" * 55},  # a user key's shape with a bad checksum
        {"nkey": "garbage"},
    ],
    ids=lambda b: next(iter(b)),
)
def test_a_connect_whose_key_did_not_sign_the_nonce_is_refused(bad: dict[str, str | None]) -> None:
    req = request(token=TOKEN, **bad)  # type: ignore[arg-type]
    for record in (PENDING, JOINED):
        denied(authorize(req, record, NOW, CFG), "the nonce is not signed")


def test_the_signature_may_be_standard_or_url_safe_base64() -> None:
    req = request(sig=signed(SEED, urlsafe=False))
    assert isinstance(authorize(req, JOINED, NOW, CFG), Grant)


@pytest.mark.parametrize("record", [None, REVOKED], ids=["unknown", "revoked"])
def test_an_unknown_or_removed_edge_is_refused_even_with_its_old_token(
    record: EdgeRecord | None,
) -> None:
    for seed, token in ((SEED, ""), (SEED, TOKEN), (OTHER_SEEDS[0], TOKEN)):
        denied(authorize(request(seed=seed, token=token), record, NOW, CFG), "is not known")


# --- joining ---------------------------------------------------------------------------------


def test_a_pending_edge_must_present_its_join_token() -> None:
    denied(authorize(request(), PENDING, NOW, CFG), "present its join token")


@pytest.mark.parametrize("token", ["wrong", TOKEN.upper(), TOKEN + " ", TOKEN[:-1]])
def test_a_wrong_join_token_is_refused(token: str) -> None:
    denied(authorize(request(token=token), PENDING, NOW, CFG), "wrong join token")


def test_a_wrong_token_is_refused_as_wrong_even_after_expiry() -> None:
    """An expired record says nothing about its token to a guesser."""
    later = NOW + timedelta(days=2)
    denied(authorize(request(token="guess"), PENDING, later, CFG), "wrong join token")


def test_first_join_binds_the_key_and_starts_the_credential() -> None:
    grant = authorize(request(token=TOKEN), PENDING, NOW, CFG)
    assert isinstance(grant, Grant) and grant.first_join and grant.edge == "shop-1"
    rec = grant.record
    assert rec.state == "joined" and rec.public_key == keys.public_key(SEED)
    assert rec.joined_at == NOW
    assert rec.credential_expires_at == NOW + timedelta(seconds=CFG.credential_idle_s)
    assert grant.session_expires_at == NOW + timedelta(seconds=CFG.session_ttl_s)
    # nothing else about the edge changes on joining
    unchanged = msgspec.structs.replace(
        rec, state="pending", public_key=None, joined_at=None, credential_expires_at=None
    )
    assert unchanged == PENDING


def test_the_session_never_outlives_the_credential() -> None:
    short = msgspec.structs.replace(CFG, credential_idle_s=60.0, session_ttl_s=3600.0)
    grant = authorize(request(token=TOKEN), PENDING, NOW, short)
    assert isinstance(grant, Grant)
    assert grant.session_expires_at == grant.record.credential_expires_at
    assert grant.session_expires_at == NOW + timedelta(seconds=60)


@settings(max_examples=100)
@given(eps_us=st.integers(min_value=1, max_value=10**9), after_us=st.integers(0, 10**12))
def test_a_join_token_works_until_its_expiry_and_not_at_it(eps_us: int, after_us: int) -> None:
    expiry = PENDING.join_token_expires_at
    before = expiry - timedelta(microseconds=eps_us)
    assert isinstance(authorize(request(token=TOKEN), PENDING, before, CFG), Grant)
    assert credential_state(PENDING, before) == "pending"
    for at in (expiry, expiry + timedelta(microseconds=after_us)):
        denied(authorize(request(token=TOKEN), PENDING, at, CFG), "join token expired")
        assert credential_state(PENDING, at) == "expired"


@settings(max_examples=100)
@given(token=st.uuids().map(str))
def test_a_refusal_never_quotes_the_presented_token(token: str) -> None:
    for record in (None, PENDING, JOINED, REVOKED):
        for seed in (SEED, OTHER_SEEDS[1]):
            decision = authorize(request(seed=seed, token=token), record, NOW, CFG)
            if isinstance(decision, Deny):
                assert token not in decision.reason


# --- a joined edge ---------------------------------------------------------------------------


def test_a_joined_edge_reconnects_with_its_key_alone_and_renews() -> None:
    later = NOW + timedelta(minutes=5)
    for token in ("", TOKEN, "anything"):  # the key counts; a token is ignored
        grant = authorize(request(token=token), JOINED, later, CFG)
        assert isinstance(grant, Grant) and not grant.first_join
        assert grant.record.public_key == JOINED.public_key
        assert grant.record.joined_at == JOINED.joined_at
        assert grant.record.credential_expires_at == later + timedelta(
            seconds=CFG.credential_idle_s
        )


def test_a_reconnect_right_after_a_renewal_writes_nothing() -> None:
    """A fleet reconnecting at once (a broker restart) costs reads, not writes: a credential
    renewed within RENEW_SLACK of its life stands as it is."""
    fresh = msgspec.structs.replace(
        JOINED, credential_expires_at=NOW + timedelta(seconds=CFG.credential_idle_s - 1)
    )
    grant = authorize(request(), fresh, NOW, CFG)
    assert isinstance(grant, Grant) and not grant.write and grant.record == fresh
    slack = CFG.credential_idle_s * RENEW_SLACK
    later = NOW + timedelta(seconds=slack + 1)
    grant = authorize(request(), fresh, later, CFG)
    assert isinstance(grant, Grant) and grant.write
    assert grant.record.credential_expires_at == later + timedelta(seconds=CFG.credential_idle_s)


def test_a_joined_edge_is_refused_with_another_key_even_with_the_token() -> None:
    for token in ("", TOKEN):
        denied(
            authorize(request(seed=OTHER_SEEDS[2], token=token), JOINED, NOW, CFG),
            "joined with another key",
        )


@settings(max_examples=100)
@given(eps_us=st.integers(min_value=1, max_value=10**9), after_us=st.integers(0, 10**12))
def test_a_credential_works_until_idle_and_not_at_it(eps_us: int, after_us: int) -> None:
    expiry = JOINED.credential_expires_at
    assert expiry is not None
    before = expiry - timedelta(microseconds=eps_us)
    assert isinstance(authorize(request(), JOINED, before, CFG), Grant)
    assert renewed(JOINED, before, CFG) is not None
    for at in (expiry, expiry + timedelta(microseconds=after_us)):
        reason = denied(authorize(request(), JOINED, at, CFG), "credential expired")
        assert "remove_edge and add_edge" in reason
        assert renewed(JOINED, at, CFG) is None
        assert credential_state(JOINED, at) == "expired"


def test_a_joined_record_without_a_credential_expiry_is_refused() -> None:
    broken = msgspec.structs.replace(JOINED, credential_expires_at=None)
    denied(authorize(request(), broken, NOW, CFG), "credential expired")
    assert renewed(broken, NOW, CFG) is None
    assert credential_state(broken, NOW) == "expired"


# --- renewals and states ---------------------------------------------------------------------


def test_renewed_moves_only_the_credential_forward() -> None:
    later = NOW + timedelta(minutes=1)
    out = renewed(JOINED, later, CFG)
    assert out is not None
    assert out.credential_expires_at == later + timedelta(seconds=CFG.credential_idle_s)
    assert (
        msgspec.structs.replace(out, credential_expires_at=JOINED.credential_expires_at) == JOINED
    )


@pytest.mark.parametrize("record", [PENDING, REVOKED], ids=["pending", "revoked"])
def test_only_a_joined_edge_renews(record: EdgeRecord) -> None:
    assert renewed(record, NOW, CFG) is None


@settings(max_examples=200)
@given(offsets=st.lists(st.integers(-(10**7), 10**7), min_size=1, max_size=20))
def test_credential_states_over_time_never_come_back_from_expired(offsets: list[int]) -> None:
    for record, alive in ((PENDING, "pending"), (JOINED, "joined")):
        states = [credential_state(record, NOW + timedelta(seconds=s)) for s in sorted(offsets)]
        assert set(states) <= {alive, "expired"}
        if "expired" in states:
            assert all(s == "expired" for s in states[states.index("expired") :])
    assert {credential_state(REVOKED, NOW + timedelta(seconds=s)) for s in offsets} == {"revoked"}


# --- what list_edges shows -------------------------------------------------------------------


def seen_at(at: datetime) -> EdgeSeen:
    return EdgeSeen(
        at=at,
        status="serving",
        running_publish_id=7,
        running_version="v3",
        agent_version="0.1.0",
        backlog=4,
    )


def test_an_edge_never_seen_shows_never_and_no_report() -> None:
    info = edge_info(PENDING, None, NOW, CFG, "bundle")
    assert info.connection == "never" and info.last_seen is None
    assert (info.running_version, info.agent_version, info.status, info.backlog) == (None,) * 4
    assert info.credential_state == "pending" and info.offline_after_s == CFG.offline_after_s
    assert info.bundle == "bundle"


@settings(max_examples=100)
@given(ago_us=st.integers(min_value=-(10**6), max_value=10**9))
def test_online_within_the_threshold_offline_past_it(ago_us: int) -> None:
    seen = seen_at(NOW - timedelta(microseconds=ago_us))
    info = edge_info(JOINED, seen, NOW, CFG, "")
    limit_us = int(CFG.offline_after_s * 1_000_000)
    assert info.connection == ("online" if ago_us <= limit_us else "offline")
    assert info.last_seen == seen.at and info.running_version == "v3"
    assert info.agent_version == "0.1.0" and info.backlog == 4 and info.running_publish_id == 7


def test_online_at_exactly_the_threshold() -> None:
    at = NOW - timedelta(seconds=CFG.offline_after_s)
    assert edge_info(JOINED, seen_at(at), NOW, CFG, "").connection == "online"
    late = at - timedelta(microseconds=1)
    assert edge_info(JOINED, seen_at(late), NOW, CFG, "").connection == "offline"


SPIFFE = re.compile(r"\Aedgepub\.test/ns/deployments/edge/([0-9a-f-]{36})\Z")


@settings(max_examples=50)
@given(edge_id=st.uuids())
def test_spiffe_id_names_the_trust_domain_and_the_edge_uuid(edge_id: uuid.UUID) -> None:
    record = msgspec.structs.replace(JOINED, id=str(edge_id))
    info = edge_info(record, None, NOW, CFG, "")
    match = SPIFFE.match(info.spiffe_id)
    assert match and uuid.UUID(match.group(1)) == edge_id
    assert info.spiffe_id == spiffe_id(CFG.trust_domain, str(edge_id))


def test_edge_info_carries_the_record_and_its_assignment() -> None:
    info = edge_info(JOINED, None, NOW, CFG, "")
    assert (info.id, info.name, info.tags) == (JOINED.id, "shop-1", ("eu",))
    assert info.publish_id == 7 and info.pipeline_version_id == 3
    assert info.pipeline_url == ASSIGNMENT.pipeline_url and info.pipeline_name == "houses"
    assert info.credential_state == "joined"
    assert info.credential_expires_at == JOINED.credential_expires_at
    assert edge_info(REVOKED, None, NOW, CFG, "").credential_state == "revoked"


# --- many joins, one token: compare-and-set ---------------------------------------------------


@dataclass
class Attempt:
    """One connect in the callout's loop: read the record, decide, write if unchanged."""

    req: AuthRequest
    snapshot: tuple[EdgeRecord, int] | None = None
    pending: Grant | None = None
    outcome: Grant | Deny | None = None


class Store:
    def __init__(self, record: EdgeRecord) -> None:
        self.record, self.revision = record, 1

    def step(self, a: Attempt, now: datetime) -> None:
        if a.outcome is not None:
            return
        if a.pending is None:  # read and decide on what is there now
            a.snapshot = (self.record, self.revision)
            decision = authorize(a.req, self.record, now, CFG)
            if isinstance(decision, Deny):
                a.outcome = decision
            else:
                a.pending = decision
            return
        assert a.snapshot is not None
        if a.snapshot[1] == self.revision:  # compare-and-set: the first write wins
            self.record, self.revision = a.pending.record, self.revision + 1
            a.outcome = a.pending
        a.pending = None  # lost the race: decide again on the written record


@settings(max_examples=200)
@given(
    n=st.integers(min_value=2, max_value=10),
    schedule=st.lists(st.integers(min_value=0, max_value=9), max_size=60),
)
def test_of_many_joins_racing_with_one_token_exactly_one_wins(n: int, schedule: list[int]) -> None:
    store = Store(PENDING)
    attempts = [Attempt(request(seed=OTHER_SEEDS[i], token=TOKEN)) for i in range(n)]
    for i in schedule:
        store.step(attempts[i % n], NOW)
    for _ in range(3 * n):  # then let every attempt finish
        for a in attempts:
            store.step(a, NOW)
    outcomes = [a.outcome for a in attempts]
    assert all(o is not None for o in outcomes)
    grants = [o for o in outcomes if isinstance(o, Grant)]
    assert len(grants) == 1 and grants[0].first_join, outcomes
    won = next(i for i, o in enumerate(outcomes) if isinstance(o, Grant))
    assert store.record.public_key == keys.public_key(OTHER_SEEDS[won])
    assert store.revision == 2
    for o in outcomes:
        if isinstance(o, Deny):
            assert "joined with another key" in o.reason
    # the winner comes back with its key alone; the token is spent for everyone else
    again = authorize(request(seed=OTHER_SEEDS[won]), store.record, NOW, CFG)
    assert isinstance(again, Grant) and not again.first_join
