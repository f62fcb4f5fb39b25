"""nkeys (NATS's ed25519 keys), behind typed functions: make a seed, name its public key,
sign, verify. The one place edgepub touches the ``nkeys`` library.

A seed is a secret: callers register it with ``logs.register_secret`` and keep it in files
of mode 0600; a public key may be shown anywhere.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Literal

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

KeyKind = Literal["account", "user", "server"]
_PREFIX = {"account": nkeys.PREFIX_BYTE_ACCOUNT, "user": nkeys.PREFIX_BYTE_USER}
_PUBLIC_PREFIX = {"account": "A", "user": "U", "server": "N"}


def new_seed(kind: Literal["account", "user"]) -> str:
    """A fresh seed ("SA..." for an account, "SU..." for a user)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), _PREFIX[kind])
    return seed.decode()


def public_key(seed: str) -> str:
    kp = nkeys.from_seed(bytearray(seed.encode()))
    try:
        key: bytes = kp.public_key
        return key.decode()
    finally:
        kp.wipe()


def sign(seed: str, data: bytes) -> bytes:
    """The raw 64-byte ed25519 signature of ``data``."""
    kp = nkeys.from_seed(bytearray(seed.encode()))
    try:
        signature: bytes = kp.sign(data)
        return signature
    finally:
        kp.wipe()


def _raw_public(public: str, kind: KeyKind) -> bytes | None:
    if not public.startswith(_PUBLIC_PREFIX[kind]) or len(public) != 56:
        return None
    try:
        raw = base64.b32decode(public)
    except (binascii.Error, ValueError):
        return None
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if nkeys.crc16(bytearray(body)) != crc:
        return None
    return body[1:]


def verify(public: str, data: bytes, signature: str, kind: KeyKind = "user") -> bool:
    """True when ``signature`` (base64, standard or URL-safe, padded or not) is ``public``'s
    signature of ``data``. Anything malformed is simply False."""
    raw_key = _raw_public(public, kind)
    if raw_key is None or len(signature) > 200:
        return False
    padded = signature + "=" * (-len(signature) % 4)
    try:
        sig = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        VerifyKey(raw_key).verify(data, sig)
    except (binascii.Error, ValueError, BadSignatureError):
        return False
    return True
