"""NATS JWTs, as pure functions: read the server's authorization request, write the user
JWT and the authorization response the token service answers with.

A NATS JWT is ``base64url(header).base64url(claims).base64url(ed25519 signature)`` with the
header ``{"typ":"JWT","alg":"ed25519-nkey"}``; ``jti`` is the base32 sha256 of the claims.
The request is signed by the server's nkey (``iss`` starts with N), which is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any

import msgspec

from edgepub.shared import keys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
MAX_JWT = 16 * 1024  # an authorization request is ~1 KiB; a client's JWT could be more
_Text = Annotated[str, msgspec.Meta(max_length=4096)]


class JwtError(ValueError):
    """A token that is not a well-formed, correctly signed NATS JWT."""


class ServerId(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    id: _Text
    name: _Text = ""
    xkey: _Text = ""  # the server's curve key, when the callout is encrypted


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    host: _Text = ""
    id: int = 0  # the connection's id on its server (what KICK takes)
    nonce: _Text = ""
    kind: _Text = ""
    type: _Text = ""


class ConnectOpts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """What the client sent in CONNECT. An edge sends its name as the client ``name``, its
    nkey with the nonce signed, and (until joined) the join token as ``auth_token``: the
    one secret nats-py sends beside an nkey."""

    name: _Text = ""
    nkey: _Text = ""
    sig: _Text = ""
    auth_token: _Text = ""
    user: _Text = ""
    lang: _Text = ""
    version: _Text = ""


class AuthRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    server_id: ServerId
    user_nkey: _Text
    client_info: ClientInfo = ClientInfo()
    connect_opts: ConnectOpts = ConnectOpts()


class _RequestClaims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    iss: _Text
    nats: AuthRequest


_request_claims = msgspec.json.Decoder(_RequestClaims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("a JWT part is not base64url") from None


def encode(claims: dict[str, Any], seed: str, *, issued_at: int) -> str:
    """Sign ``claims`` with ``seed`` (``iss`` is its public key, ``iat`` ``issued_at``)."""
    body = {**claims, "iat": issued_at, "iss": keys.public_key(seed), "jti": ""}
    digest = hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps(HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = keys.sign(seed, f"{head}.{payload}".encode())
    return f"{head}.{payload}.{_b64(signature)}"


def decode_request(token: bytes) -> AuthRequest:
    """The server's authorization request, its signature checked; JwtError otherwise."""
    if len(token) > MAX_JWT:
        raise JwtError(f"authorization request of {len(token)} bytes (limit {MAX_JWT})")
    try:
        head, payload, signature = token.decode("ascii").split(".")
    except (UnicodeDecodeError, ValueError):
        raise JwtError("not a JWT (three dot-separated base64url parts)") from None
    try:
        claims = _request_claims.decode(_unb64(payload))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise JwtError(f"not an authorization request: {exc}") from None
    except RecursionError:  # msgspec's guard against nesting past the C stack
        raise JwtError("not an authorization request: JSON nested too deeply") from None
    sig = base64.b64encode(_unb64(signature)).decode()
    if not keys.verify(claims.iss, f"{head}.{payload}".encode(), sig, kind="server"):
        raise JwtError("the authorization request is not signed by a server key")
    return claims.nats


def user_claims(
    *,
    user_nkey: str,
    account: str,
    name: str,
    publish: tuple[str, ...],
    subscribe: tuple[str, ...],
    expires: int,
) -> dict[str, Any]:
    """A user JWT's claims: the edge's allow lists, and ``exp`` as the backstop."""
    return {
        "sub": user_nkey,
        "aud": account,
        "name": name,
        "exp": expires,
        "nats": {
            "pub": {"allow": list(publish)},
            "sub": {"allow": list(subscribe)},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }


def response_claims(
    *, user_nkey: str, server_id: str, user_jwt: str | None = None, error: str | None = None
) -> dict[str, Any]:
    """The callout's answer: the user JWT, or an error (which the server logs)."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if user_jwt is not None:
        nats["jwt"] = user_jwt
    if error is not None:
        nats["error"] = error
    return {"sub": user_nkey, "aud": server_id, "nats": nats}
