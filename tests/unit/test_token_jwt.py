"""NATS JWTs as the token service writes and reads them, and the parsers that meet bytes
from outside: the server's authorization request, a CONNZ answer, a signature. Whatever
arrives, each answers with its own refusal (JwtError, an empty answer, False), never
another exception."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from typing import Any

import msgspec
import nkeys
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from edgepub.services.token import jwt, kick
from edgepub.services.token.callout import Callout, SealError
from edgepub.services.token.decisions import Deny
from edgepub.services.token.settings import TokenSettings
from edgepub.shared import keys, subjects, xkeys

ISSUER = keys.new_seed("account")
SERVER = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER).decode()
OTHER_SERVER = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER).decode()
USER = keys.new_seed("user")
FUZZ = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def request_claims(name: str = "shop-1", **opts: Any) -> dict[str, Any]:
    """What nats-server sends on $SYS.REQ.USER.AUTH (the fields edgepub reads, and more)."""
    return {
        "sub": keys.public_key(ISSUER),
        "aud": "nats-authorization-request",
        "nats": {
            "server_id": {"name": "n1", "host": "127.0.0.1", "id": keys.public_key(SERVER)},
            "user_nkey": "UCONNECTIONKEY",
            "client_info": {"host": "127.0.0.1", "id": 12, "nonce": "abc", "kind": "Client"},
            "connect_opts": {"name": name, "lang": "python3", "version": "2.16.0", **opts},
            "type": "authorization_request",
            "version": 2,
        },
    }


def server_request(claims: dict[str, Any] | None = None, seed: str = SERVER) -> bytes:
    return jwt.encode(claims or request_claims(), seed, issued_at=1_700_000_000).encode()


# --- what the token service writes -----------------------------------------------------------


def test_encode_writes_a_nats_jwt_the_issuer_signed() -> None:
    token = jwt.encode({"sub": "UX", "nats": {"a": [1]}}, ISSUER, issued_at=1234)
    head, payload, signature = token.split(".")
    assert json.loads(unb64(head)) == jwt.HEADER
    claims = json.loads(unb64(payload))
    assert claims["sub"] == "UX" and claims["nats"] == {"a": [1]}
    assert claims["iat"] == 1234 and claims["iss"] == keys.public_key(ISSUER)
    # jti: base32 sha256 of the claims with jti empty, as nats-server computes it
    unsigned = json.dumps({**claims, "jti": ""}, separators=(",", ":")).encode()
    assert claims["jti"] == base64.b32encode(hashlib.sha256(unsigned).digest()).decode().rstrip("=")
    signed = f"{head}.{payload}".encode()
    assert keys.verify(claims["iss"], signed, signature, kind="account")
    assert not keys.verify(claims["iss"], signed + b"x", signature, kind="account")
    assert not keys.verify(keys.public_key(keys.new_seed("account")), signed, signature, "account")


def test_the_user_jwt_carries_the_edges_allow_lists_and_exp() -> None:
    claims = jwt.user_claims(
        user_nkey="UCONN",
        account=subjects.EDGE_ACCOUNT,
        name="shop-1",
        publish=subjects.edge_publish_allow("shop-1"),
        subscribe=subjects.edge_subscribe_allow("shop-1"),
        expires=99,
    )
    token = jwt.encode(claims, ISSUER, issued_at=1)
    got = json.loads(unb64(token.split(".")[1]))
    assert got["sub"] == "UCONN" and got["aud"] == subjects.EDGE_ACCOUNT and got["exp"] == 99
    assert got["nats"]["pub"] == {"allow": list(subjects.edge_publish_allow("shop-1"))}
    assert got["nats"]["sub"] == {"allow": list(subjects.edge_subscribe_allow("shop-1"))}
    assert got["nats"]["type"] == "user" and got["nats"]["version"] == 2
    ok = jwt.response_claims(user_nkey="UCONN", server_id="NS", user_jwt=token)
    assert ok["nats"]["jwt"] == token and "error" not in ok["nats"]
    no = jwt.response_claims(user_nkey="UCONN", server_id="NS", error="refused")
    assert no["nats"]["error"] == "refused" and "jwt" not in no["nats"]
    assert no["aud"] == "NS" and no["nats"]["type"] == "authorization_response"


# --- what the server asks --------------------------------------------------------------------


def test_a_request_signed_by_a_server_key_is_read() -> None:
    req = jwt.decode_request(
        server_request(request_claims(nkey="UEDGE", sig="c2ln", auth_token="t"))
    )
    assert req.connect_opts.name == "shop-1" and req.connect_opts.nkey == "UEDGE"
    assert req.connect_opts.sig == "c2ln" and req.connect_opts.auth_token == "t"
    assert req.client_info.id == 12 and req.client_info.nonce == "abc"
    assert req.server_id.id == keys.public_key(SERVER) and req.user_nkey == "UCONNECTIONKEY"


def test_any_server_key_may_sign_but_only_its_own_signature_counts() -> None:
    assert jwt.decode_request(server_request(seed=OTHER_SERVER)).connect_opts.name == "shop-1"
    head, payload, _ = server_request().decode().split(".")
    _, _, other_sig = server_request(seed=OTHER_SERVER).decode().split(".")
    with pytest.raises(jwt.JwtError, match="not signed by a server key"):
        jwt.decode_request(f"{head}.{payload}.{other_sig}".encode())


@pytest.mark.parametrize(
    "seed", [ISSUER, USER, keys.new_seed("account")], ids=["issuer", "user", "account"]
)
def test_a_request_signed_by_a_key_that_is_no_server_is_refused(seed: str) -> None:
    with pytest.raises(jwt.JwtError, match="not signed by a server key"):
        jwt.decode_request(server_request(seed=seed))


def test_an_unsigned_or_forged_request_is_refused() -> None:
    head, payload, sig = server_request().decode().split(".")
    forged_claims = json.loads(unb64(payload))
    forged_claims["nats"]["connect_opts"]["name"] = "someone-else"
    forged = b64(json.dumps(forged_claims).encode())
    claims_iss = json.loads(unb64(payload))
    claims_iss["iss"] = keys.public_key(OTHER_SERVER)  # claim another server signed it
    reissued = b64(json.dumps(claims_iss).encode())
    for token in (
        f"{head}.{payload}.",
        f"{head}.{payload}.{b64(bytes(64))}",
        f"{head}.{forged}.{sig}",
        f"{head}.{reissued}.{sig}",
        f"{head}.{payload}.{sig[:-4]}",
    ):
        with pytest.raises(jwt.JwtError):
            jwt.decode_request(token.encode())


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"a",
        b"a.b",
        b"a.b.c.d",
        b"...",
        "é.é.é".encode(),
        b"\xff\xfe.\x00.\x80",
        b"e30.e30.e30",
        b"e30.!!!!.e30",
        b"x" * (jwt.MAX_JWT + 1),
        b"." * (jwt.MAX_JWT + 1),
    ],
)
def test_what_is_no_jwt_is_a_jwt_error(token: bytes) -> None:
    with pytest.raises(jwt.JwtError):
        jwt.decode_request(token)


def test_a_huge_request_is_refused_before_it_is_read() -> None:
    with pytest.raises(jwt.JwtError, match="limit"):
        jwt.decode_request(b"e30." + b"A" * (8 << 20) + b".AA")


@pytest.mark.parametrize("depth", [10, 1000, 5000])
@pytest.mark.parametrize("kind", ["array", "object"])
def test_deep_nesting_in_a_request_is_a_jwt_error(depth: int, kind: str) -> None:
    """msgspec guards nesting with RecursionError: deeper than it allows must still be a
    refusal, not an exception that takes the callout down."""
    inner = "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth
    for where in (f'"junk":{inner}', f'"nats":{inner}'):
        payload = f'{{"iss":"N",{where}}}'.encode()
        token = f"e30.{b64(payload)}.AA".encode()
        if len(token) <= jwt.MAX_JWT:
            with pytest.raises(jwt.JwtError):
                jwt.decode_request(token)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
SHAPED = st.fixed_dictionaries(
    {
        "iss": JSON,
        "nats": st.fixed_dictionaries(
            {},
            optional={
                "server_id": JSON | st.fixed_dictionaries({"id": JSON}),
                "user_nkey": JSON,
                "client_info": JSON,
                "connect_opts": JSON
                | st.dictionaries(st.sampled_from(["name", "nkey", "sig"]), JSON),
            },
        ),
    },
)


def refused_or_read(token: bytes) -> None:
    with contextlib.suppress(jwt.JwtError):
        jwt.decode_request(token)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_a_jwt_error(data: bytes) -> None:
    refused_or_read(data)


@FUZZ
@given(
    st.lists(st.binary(max_size=64) | st.text(max_size=64).map(str.encode), min_size=3, max_size=3)
)
def test_three_part_garbage_is_a_jwt_error(parts: list[bytes]) -> None:
    refused_or_read(b".".join(parts))


@FUZZ
@given(payload=st.binary(max_size=512), sig=st.binary(max_size=80))
def test_base64_of_what_is_not_json_is_a_jwt_error(payload: bytes, sig: bytes) -> None:
    refused_or_read(f"e30.{b64(payload)}.{b64(sig)}".encode())


@FUZZ
@given(claims=JSON | SHAPED, signed=st.booleans())
def test_json_of_the_wrong_shape_is_a_jwt_error(claims: Any, signed: bool) -> None:
    """Signed by a real server key or not: a wrong shape is a refusal either way."""
    payload = b64(json.dumps(claims).encode())
    sig = b64(keys.sign(SERVER, f"e30.{payload}".encode())) if signed else "AA"
    with pytest.raises(jwt.JwtError):
        jwt.decode_request(f"e30.{payload}.{sig}".encode())


@FUZZ
@given(name=st.text(max_size=5000), nonce=st.text(max_size=100))
def test_a_signed_request_with_any_strings_is_read_or_refused(name: str, nonce: str) -> None:
    claims = request_claims(name)
    claims["nats"]["client_info"]["nonce"] = nonce
    token = server_request(claims)
    if len(token) > jwt.MAX_JWT or len(name) > 4096:
        with pytest.raises(jwt.JwtError):
            jwt.decode_request(token)
    else:
        req = jwt.decode_request(token)
        assert req.connect_opts.name == name and req.client_info.nonce == nonce


# --- CONNZ answers ---------------------------------------------------------------------------


def connz(*conns: dict[str, Any], server: str = "NSRV") -> bytes:
    return msgspec.json.encode(
        {
            "server": {"id": server, "name": "n1"},
            "data": {"server_id": server, "connections": list(conns)},
        }
    )


def test_edge_connections_finds_the_edges_connections_on_that_server() -> None:
    edges = subjects.EDGE_ACCOUNT
    reply = connz(
        {"cid": 1, "name": "shop-1", "account": edges},
        {"cid": 2, "authorized_user": "shop-1", "account": edges, "extra": [1, {"x": 2}]},
        {"cid": 3, "name": "shop-10", "account": edges},  # another edge
        {"cid": 4, "name": "shop-1", "account": "$SYS"},  # another account
        {"cid": 6, "name": "shop-1", "account": subjects.APP_ACCOUNT},  # a service, not the edge
        {"cid": 5, "name": "shop", "authorized_user": "op", "account": edges},
    )
    assert kick.edge_connections(reply, "shop-1") == ("NSRV", [1, 2])
    assert kick.edge_connections(reply, "ghost") == ("NSRV", [])
    no_data = msgspec.json.encode({"server": {"id": "NSRV"}, "data": None})
    assert kick.edge_connections(no_data, "shop-1") == ("NSRV", [])


def answered(reply: bytes) -> tuple[str, list[int]]:
    server, cids = kick.edge_connections(reply, "shop-1")
    assert isinstance(server, str) and all(isinstance(c, int) for c in cids)
    return server, cids


@FUZZ
@given(st.binary(max_size=4096))
def test_edge_connections_of_arbitrary_bytes_never_raises(data: bytes) -> None:
    answered(data)


@FUZZ
@given(JSON)
def test_edge_connections_of_any_json_never_raises(value: Any) -> None:
    answered(msgspec.json.encode(value))


@FUZZ
@given(
    conns=st.lists(
        st.fixed_dictionaries(
            {"cid": JSON | st.integers()},
            optional={"name": JSON, "authorized_user": JSON, "account": JSON},
        ),
        max_size=5,
    )
)
def test_edge_connections_of_connz_with_wrong_fields_never_raises(conns: list[Any]) -> None:
    answered(connz(*conns))


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_edge_connections_of_deep_nesting_is_empty(depth: int) -> None:
    inner = "[" * depth + "]" * depth
    reply = f'{{"server":{{"id":"NSRV"}},"junk":{inner}}}'.encode()
    server, cids = answered(reply)
    assert cids == [] and server in ("", "NSRV")


def test_edge_connections_of_an_oversize_answer_is_empty() -> None:
    assert kick.edge_connections(b" " * (kick.MAX_CONNZ + 1), "shop-1") == ("", [])


def test_edge_connections_passes_any_integer_cid_to_the_server_that_sent_it() -> None:
    reply = connz({"cid": 2**70, "name": "shop-1", "account": subjects.EDGE_ACCOUNT})
    assert kick.edge_connections(reply, "shop-1") == ("NSRV", [2**70])


# --- signatures ------------------------------------------------------------------------------


def test_verify_accepts_every_base64_spelling_of_a_real_signature() -> None:
    sig = keys.sign(USER, b"nonce")
    public = keys.public_key(USER)
    std = base64.b64encode(sig).decode()
    for spelling in (std, std.rstrip("="), b64(sig), b64(sig) + "=="):
        assert keys.verify(public, b"nonce", spelling)
    assert not keys.verify(public, b"nonce", std, kind="account")
    assert not keys.verify(public, b"nonce!", std)
    flipped = bytearray(sig)
    flipped[0] ^= 1
    assert not keys.verify(public, b"nonce", base64.b64encode(flipped).decode())
    for i in range(1, len(public)):  # one character changed: the checksum or the key is off
        bad = public[:i] + ("A" if public[i] != "A" else "B") + public[i + 1 :]
        assert not keys.verify(bad, b"nonce", std)


KINDS = st.sampled_from(["account", "user", "server"])


@FUZZ
@given(
    public=st.text(max_size=80), data=st.binary(max_size=64), sig=st.text(max_size=300), kind=KINDS
)
def test_verify_of_arbitrary_strings_is_false(
    public: str, data: bytes, sig: str, kind: Any
) -> None:
    assert keys.verify(public, data, sig, kind=kind) is False


@FUZZ
@given(
    data=st.binary(max_size=64),
    sig=st.text(max_size=300) | st.binary(max_size=100).map(b64),
    kind=KINDS,
)
def test_verify_of_a_real_key_and_any_signature_is_false(data: bytes, sig: str, kind: Any) -> None:
    for public in (keys.public_key(USER), keys.public_key(SERVER), keys.public_key(ISSUER)):
        assert keys.verify(public, data, sig, kind=kind) is False


@FUZZ
@given(
    body=st.binary(min_size=32, max_size=32),
    prefix=st.sampled_from(
        [
            nkeys.PREFIX_BYTE_USER,
            nkeys.PREFIX_BYTE_SERVER,
            nkeys.PREFIX_BYTE_ACCOUNT,
            nkeys.PREFIX_BYTE_OPERATOR,
        ]
    ),
    sig=st.binary(max_size=100).map(b64),
)
def test_verify_of_a_well_formed_stranger_key_is_false(body: bytes, prefix: int, sig: str) -> None:
    raw = bytearray([prefix]) + body
    crc = nkeys.crc16(raw).to_bytes(2, "little")
    public = base64.b32encode(bytes(raw) + crc).decode()
    for kind in ("account", "user", "server"):
        assert keys.verify(public, b"data", sig, kind=kind) is False


# --- the encrypted callout: requests sealed to the token service's xkey ----------------------

SERVICE_XKEY = xkeys.new_seed()
SERVER_XKEY = xkeys.new_seed()


def _callout() -> Callout:
    cfg = TokenSettings(
        issuer_seed=ISSUER,
        system_seed=keys.new_seed("user"),
        opscenter_host="wss://ops",
        xkey_seed=SERVICE_XKEY,
    )
    return Callout(nc=None, state=None, settings=cfg)  # type: ignore[arg-type]


def sealed_request(
    claims: dict[str, Any] | None = None, header: str = "Nats-Server-Xkey", to: str = SERVICE_XKEY
) -> Msg:
    """What nats-server with ``auth_callout { xkey }`` sends: the request JWT sealed to the
    service's xkey, its own xkey in the header and in the signed claims."""
    claims = claims or request_claims(auth_token="join-token-in-clear")
    claims["nats"]["server_id"]["xkey"] = xkeys.public_key(SERVER_XKEY)
    data = xkeys.seal(server_request(claims), SERVER_XKEY, xkeys.public_key(to))
    headers = {header: xkeys.public_key(SERVER_XKEY)} if header else None
    return Msg(
        _client=None, subject=subjects.AUTH_CALLOUT, reply="_INBOX.x", data=data, headers=headers
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["Nats-Server-Xkey", "nats-server-xkey"])
def test_a_sealed_request_opens_and_names_the_key_to_seal_the_answer_to(header: str) -> None:
    msg = sealed_request(header=header)
    assert b"join-token-in-clear" not in msg.data and b"eyJ" not in msg.data
    req, sender = _callout().open_request(msg)
    assert req.connect_opts.auth_token == "join-token-in-clear"
    assert sender == xkeys.public_key(SERVER_XKEY) == req.server_id.xkey


def test_the_answer_is_sealed_so_only_the_requesting_server_opens_it() -> None:
    callout = _callout()
    req, sender = callout.open_request(sealed_request())
    answer = callout.answer(req, Deny(reason="no such edge"))
    sealed = xkeys.seal(answer, SERVICE_XKEY, sender)
    assert b"eyJ" not in sealed  # the server takes an answer starting eyJ as clear text
    opened = xkeys.open_sealed(sealed, SERVER_XKEY, xkeys.public_key(SERVICE_XKEY))
    claims = json.loads(unb64(opened.decode().split(".")[1]))
    assert claims["nats"]["error"] == "no such edge" and claims["aud"] == req.server_id.id


def test_a_request_that_is_not_sealed_or_not_to_us_is_refused() -> None:
    callout = _callout()
    clear = Msg(_client=None, data=server_request(), reply="_INBOX.x")  # type: ignore[arg-type]
    with pytest.raises(SealError, match="not encrypted"):
        callout.open_request(clear)
    with pytest.raises(SealError, match="not encrypted"):
        callout.open_request(sealed_request(header=""))
    with pytest.raises(SealError, match="does not open"):
        callout.open_request(sealed_request(to=xkeys.new_seed()))
    swapped = sealed_request()
    assert swapped.headers is not None
    swapped.headers["Nats-Server-Xkey"] = xkeys.public_key(xkeys.new_seed())
    with pytest.raises(SealError, match="does not open"):
        callout.open_request(swapped)


def test_a_request_whose_signed_xkey_is_not_the_sealing_one_is_refused() -> None:
    claims = request_claims()
    msg = sealed_request(claims)
    other = request_claims()
    other["nats"]["server_id"]["xkey"] = xkeys.public_key(xkeys.new_seed())
    msg.data = xkeys.seal(server_request(other), SERVER_XKEY, xkeys.public_key(SERVICE_XKEY))
    with pytest.raises(SealError, match="signed server xkey"):
        _callout().open_request(msg)
