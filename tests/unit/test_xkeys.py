"""Curve "xkeys" and sealed boxes as Go nkeys writes them (what nats-server seals the auth
callout with): the key encodings, a round trip, a known answer, and refusals of whatever
else arrives (XKeyError, never another exception)."""

from __future__ import annotations

import base64
import os

import nkeys
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.shared import keys, xkeys

# NaCl's published crypto_box test vector (Bernstein, "Cryptography in NaCl", section 10;
# tests/box.c): Alice's and Bob's keys are RFC 7748's X25519 test keys.
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
MESSAGE = bytes.fromhex(
    "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffce5ecbaaf33bd751a1ac728"
    "d45e6c61296cdc3c01233561f41db66cce314adb310e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1"
    "318a024a838f21af1fde048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f937763848645e"
    "0705"
)
BOXED = bytes.fromhex(  # poly1305 tag, then the xsalsa20 ciphertext
    "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476f"
    "b8c531a1186ac0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738b48eeee3"
    "14a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5"
    "f9b37973f622a43d14a6599b1f654cb45a74e355a5"
)


def test_curve_seeds_and_public_keys_are_nkeys_with_the_curve_prefix() -> None:
    seed = xkeys.new_seed()
    public = xkeys.public_key(seed)
    assert seed.startswith("SX") and len(seed) == 58
    assert public.startswith("X") and len(public) == 56
    # nkeys' own seed decoding reads the header and checksum the same way (it refuses the
    # curve prefix byte only because it predates curve keys)
    raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
    assert raw[0] & 248 == nkeys.PREFIX_BYTE_SEED
    assert ((raw[0] & 7) << 5 | (raw[1] & 248) >> 3) == xkeys.PREFIX_BYTE_CURVE == 23 << 3
    assert nkeys.crc16_checksum(bytearray(raw[:-2])) == raw[-2:]
    assert xkeys.decode_seed(seed) == raw[2:-2]
    assert xkeys.decode_public(public) == xkeys.decode_public(xkeys.public_key(seed))


def test_known_answer_nacl_box_in_an_xkv1_envelope() -> None:
    alice, bob = xkeys.encode_seed(ALICE_SK), xkeys.encode_seed(BOB_SK)
    assert xkeys.decode_public(xkeys.public_key(alice)) == ALICE_PK
    assert xkeys.decode_public(xkeys.public_key(bob)) == BOB_PK
    sealed = xkeys.seal(MESSAGE, alice, xkeys.public_key(bob), nonce=NONCE)
    assert sealed == b"xkv1" + NONCE + BOXED
    assert xkeys.open_sealed(sealed, bob, xkeys.public_key(alice)) == MESSAGE


def test_seal_open_round_trip_with_a_fresh_nonce_each_time() -> None:
    server, service = xkeys.new_seed(), xkeys.new_seed()
    request = b"eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.claims.sig"
    one = xkeys.seal(request, server, xkeys.public_key(service))
    two = xkeys.seal(request, server, xkeys.public_key(service))
    assert one != two and one.startswith(b"xkv1") and request not in one
    assert xkeys.open_sealed(one, service, xkeys.public_key(server)) == request
    assert xkeys.open_sealed(two, service, xkeys.public_key(server)) == request


def test_a_box_opens_only_for_its_keys_and_untampered() -> None:
    server, service, stranger = xkeys.new_seed(), xkeys.new_seed(), xkeys.new_seed()
    sealed = xkeys.seal(b"secret", server, xkeys.public_key(service))
    with pytest.raises(xkeys.XKeyError, match="does not open"):
        xkeys.open_sealed(sealed, stranger, xkeys.public_key(server))
    with pytest.raises(xkeys.XKeyError, match="does not open"):
        xkeys.open_sealed(sealed, service, xkeys.public_key(stranger))
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(xkeys.XKeyError, match="does not open"):
        xkeys.open_sealed(flipped, service, xkeys.public_key(server))
    with pytest.raises(xkeys.XKeyError, match="xkv1"):
        xkeys.open_sealed(b"xkv2" + sealed[4:], service, xkeys.public_key(server))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "X",
        keys.public_key(keys.new_seed("account")),  # an ed25519 key, not a curve key
        keys.new_seed("user"),
        "X" + "A" * 55,  # right shape, wrong checksum
        "é" * 56,
    ],
)
def test_what_is_no_curve_key_is_an_xkey_error(text: str) -> None:
    for parse in (xkeys.decode_public, xkeys.decode_seed, xkeys.public_key):
        with pytest.raises(xkeys.XKeyError):
            parse(text)


@settings(max_examples=200)
@given(st.binary(max_size=200), st.sampled_from([b"", b"xkv1", b"xkv1" + bytes(24)]))
def test_open_of_arbitrary_bytes_is_an_xkey_error(data: bytes, head: bytes) -> None:
    with pytest.raises(xkeys.XKeyError):
        xkeys.open_sealed(head + data, xkeys.new_seed(), xkeys.public_key(xkeys.new_seed()))


def test_an_oversize_sealed_message_is_refused_before_it_is_read() -> None:
    with pytest.raises(xkeys.XKeyError, match="limit"):
        xkeys.open_sealed(b"xkv1" + os.urandom(xkeys.MAX_SEALED), xkeys.new_seed(), "X")
