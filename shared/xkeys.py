"""Curve25519 "xkeys" (nkeys' ``X...`` keys) and the sealed boxes nats-server speaks when an
auth callout has an ``xkey``: the server seals each authorization request to the service's
public xkey, the service seals its answer to the server's (header ``Nats-Server-Xkey``).

Compatible with Go nkeys ``CurveKeyPair``: a seed is ``SX...`` (the raw 32-byte private
scalar, nkey seed encoding), a public key ``X...`` (prefix byte ``23 << 3``, the key, crc16
little-endian, base32 unpadded). A sealed message is ``b"xkv1"`` + a random 24-byte nonce +
NaCl ``crypto_box`` (curve25519-xsalsa20-poly1305) of the plaintext.

A seed is a secret: callers register it with ``logs.register_secret``.
"""

from __future__ import annotations

import base64
import binascii
import os

import nkeys
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

PREFIX_BYTE_CURVE = 23 << 3  # base32-encodes to 'X...'
VERSION = b"xkv1"
NONCE_LEN = 24
KEY_LEN = 32
MAX_SEALED = 64 * 1024  # an authorization request is ~1-2 KiB sealed


class XKeyError(ValueError):
    """A curve key or sealed message that is malformed, or a box that does not open."""


def _b32decode(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise XKeyError("not base32") from None


def _checked(raw: bytes) -> bytes:
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if len(raw) < 3 or nkeys.crc16(bytearray(body)) != crc:
        raise XKeyError("checksum mismatch")
    return body


def encode_seed(raw: bytes) -> str:
    """``raw`` (a 32-byte curve25519 private key) as an ``SX...`` seed."""
    if len(raw) != KEY_LEN:
        raise XKeyError(f"a curve private key is {KEY_LEN} bytes, not {len(raw)}")
    head = bytes([nkeys.PREFIX_BYTE_SEED | PREFIX_BYTE_CURVE >> 5, (31 & PREFIX_BYTE_CURVE) << 3])
    body = head + raw
    crc = nkeys.crc16(bytearray(body)).to_bytes(2, "little")
    return base64.b32encode(body + crc).decode().rstrip("=")


def decode_seed(seed: str) -> bytes:
    """The raw private key of an ``SX...`` seed; XKeyError (value not quoted) otherwise."""
    body = _checked(_b32decode(seed))
    if len(body) != 2 + KEY_LEN or body[0] & 248 != nkeys.PREFIX_BYTE_SEED:
        raise XKeyError("not an nkey seed")
    prefix = (body[0] & 7) << 5 | (body[1] & 248) >> 3
    if prefix != PREFIX_BYTE_CURVE:
        raise XKeyError("not a curve (SX...) seed")
    return body[2:]


def encode_public(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise XKeyError(f"a curve public key is {KEY_LEN} bytes, not {len(raw)}")
    body = bytes([PREFIX_BYTE_CURVE]) + raw
    crc = nkeys.crc16(bytearray(body)).to_bytes(2, "little")
    return base64.b32encode(body + crc).decode().rstrip("=")


def decode_public(public: str) -> bytes:
    """The raw key of an ``X...`` public key; XKeyError otherwise."""
    if not public.startswith("X") or len(public) != 56:
        raise XKeyError(f"not a curve public key (X..., 56 characters): {public[:60]!r}")
    body = _checked(_b32decode(public))
    if body[0] != PREFIX_BYTE_CURVE or len(body) != 1 + KEY_LEN:
        raise XKeyError(f"not a curve public key: {public!r}")
    return body[1:]


def new_seed() -> str:
    """A fresh curve seed (``SX...``), as ``nk -gen curve`` makes."""
    return encode_seed(os.urandom(KEY_LEN))


def public_key(seed: str) -> str:
    """The ``X...`` public key of ``seed``."""
    return encode_public(bytes(PrivateKey(decode_seed(seed)).public_key))


def seal(plaintext: bytes, seed: str, recipient: str, *, nonce: bytes | None = None) -> bytes:
    """``plaintext`` sealed from ``seed`` to ``recipient`` (an ``X...`` key): what Go
    nkeys' ``Seal`` makes. ``nonce`` is random unless given (known-answer tests only)."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(nonce) != NONCE_LEN:
        raise XKeyError(f"a nonce is {NONCE_LEN} bytes, not {len(nonce)}")
    box = Box(PrivateKey(decode_seed(seed)), PublicKey(decode_public(recipient)))
    return VERSION + nonce + box.encrypt(plaintext, nonce).ciphertext


def open_sealed(sealed: bytes, seed: str, sender: str) -> bytes:
    """The plaintext ``sender`` (an ``X...`` key) sealed to ``seed``; XKeyError if it is not
    an ``xkv1`` box or does not open (wrong keys, tampered)."""
    if len(sealed) > MAX_SEALED:
        raise XKeyError(f"sealed message of {len(sealed)} bytes (limit {MAX_SEALED})")
    if len(sealed) <= len(VERSION) + NONCE_LEN or not sealed.startswith(VERSION):
        raise XKeyError("not an xkv1 sealed message")
    nonce = sealed[len(VERSION) : len(VERSION) + NONCE_LEN]
    box = Box(PrivateKey(decode_seed(seed)), PublicKey(decode_public(sender)))
    try:
        return box.decrypt(sealed[len(VERSION) + NONCE_LEN :], nonce)
    except CryptoError:
        raise XKeyError("the sealed message does not open with these keys") from None
