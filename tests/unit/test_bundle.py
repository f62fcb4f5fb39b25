"""``EDGE_BUNDLE``: the codec round-trips, every bundle the seed prints decodes, and anything
else is one ``BundleError`` line that never quotes the join token or the bundle."""

from __future__ import annotations

import base64
import hashlib
import uuid

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgepub.shared.bundle import (
    KEYS,
    MAX_BUNDLE_CHARS,
    OMITTED_JOIN_TOKEN,
    SCHEMES,
    BundleError,
    EdgeBundle,
    decode_bundle,
    encode_bundle,
    join_token_sha256,
    opscenter_url,
)

# Every bundle printed in the seed (../shared/seeds/000_c1b1334aa20b84df.txt), as printed.
SEED_TTL = (  # "Edge Bundle Token TTL"
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IEVER0VfTkFNRT14Z2ItY2NmcmF1ZC1lZGdlLXRlc3QKZXhwb3J0"
    "IEpPSU5fVE9LRU49MzE0OGFkYTUtMjg1YS00ZmNhLWIzYjgtYjUwYTQ4ZDc1MTFiCmV4cG9ydCBPUFNDRU5URVJfSE9T"
    "VD1kb2MtdGVzdC5lZGdlLndhbGxhcm9vY29tbXVuaXR5Lm5pbmphCmV4cG9ydCBQSVBFTElORV9VUkw9Z2hjci5pby93"
    "YWxsYXJvb2xhYnMvZG9jLXNhbXBsZXMvcGlwZWxpbmVzL2VkZ2UtcGlwZWxpbmU6ZjM4OGMxMDktOGQ1Ny00ZWQyLTk4"
    "MDYtYWExM2Y4NTQ1NzZiCmV4cG9ydCBXT1JLU1BBQ0VfSUQ9NQ=="
)
SEED_DOCKER = (  # "Docker Deployment" and the compose file
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IEVER0VfTkFNRT1lZGdlLWNjZnJhdWQtb2JzZXJ2YWJpbGl0eXlh"
    "aWcKZXhwb3J0IEpPSU5fVE9LRU49MjZmYzFjYjgtMjUxMi00YmU3LTk0ZGUtNjQ2NGI1MGQ2MzhiCmV4cG9ydCBPUFND"
    "RU5URVJfSE9TVD1kb2MtdGVzdC5lZGdlLndhbGxhcm9vY29tbXVuaXR5Lm5pbmphCmV4cG9ydCBQSVBFTElORV9VUkw9"
    "Z2hjci5pby93YWxsYXJvb2xhYnMvZG9jLXNhbXBsZXMvcGlwZWxpbmVzL2VkZ2Utb2JzZXJ2YWJpbGl0eS1waXBlbGlu"
    "ZTozYjQ5ZmJhOC05NGQ4LTRmY2EtYWVjYy1jNzUyNTdmZDE2YzYKZXhwb3J0IFdPUktTUEFDRV9JRD03"
)
SEED_REPLACE_VERSION = (  # "Replace Publish from Pipeline Version"
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IENPTkZJR19DUFVTPTQKZXhwb3J0IEVER0VfTkFNRT1ob3VzZXBy"
    "aWNlLWVkZ2UtaW5saW5lLXJlcGxhY2VtZW50LWRlbW8KZXhwb3J0IE9QU0NFTlRFUl9IT1NUPWRvYy10ZXN0LmVkZ2Uu"
    "d2FsbGFyb29jb21tdW5pdHkubmluamEKZXhwb3J0IFBJUEVMSU5FX1VSTD1naGNyLmlvL3dhbGxhcm9vbGFicy9kb2Mt"
    "c2FtcGxlcy9waXBlbGluZXMvZWRnZS1pbmxpbmUtcmVwbGFjZW1lbnQtZGVtbzo0NDZhZWVkOS0yZDUyLTQ3YWUtOWU1"
    "Yy1mMmEwNWVmMGQ0ZDYKZXhwb3J0IEpPSU5fVE9LRU49b21pdHRlZF9mb3JfcmVwbGFjZQpleHBvcnQgT0NJX1JFR0lT"
    "VFJZPWdoY3IuaW8="
)
SEED_REPLACE_PIPELINE = (  # "Replace Publish from New Pipeline"
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IENPTkZJR19DUFVTPTQKZXhwb3J0IEVER0VfTkFNRT1ob3VzZXBy"
    "aWNlLWVkZ2UtaW5saW5lLXJlcGxhY2VtZW50LWRlbW8KZXhwb3J0IE9QU0NFTlRFUl9IT1NUPWRvYy10ZXN0LmVkZ2Uu"
    "d2FsbGFyb29jb21tdW5pdHkubmluamEKZXhwb3J0IFBJUEVMSU5FX1VSTD1naGNyLmlvL3dhbGxhcm9vbGFicy9kb2Mt"
    "c2FtcGxlcy9waXBlbGluZXMvbmV3LWVkZ2UtaW5saW5lLXJlcGxhY2VtZW50OjAwOTIxNTcxLTNkYjctNGJmOS05NGRj"
    "LTM3N2FhYjU1ODQ3NQpleHBvcnQgSk9JTl9UT0tFTj1vbWl0dGVkX2Zvcl9yZXBsYWNlCmV4cG9ydCBPQ0lfUkVHSVNU"
    "Ulk9Z2hjci5pbw=="
)
OPS = "doc-test.edge.wallaroocommunity.ninja"
GHCR = "ghcr.io/wallaroolabs/doc-samples/pipelines"
TOKEN = "26fc1cb8-2512-4be7-94de-6464b50d638b"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def lines(_newline: str = "\n", **values: str | None) -> str:
    """A bundle with the seed's keys (None drops one) and any extra keys, base64."""
    base: dict[str, str | None] = {
        "BUNDLE_VERSION": "1",
        "EDGE_NAME": "shop-12",
        "JOIN_TOKEN": TOKEN,
        "OPSCENTER_HOST": "ops.example.com/edge",
        "PIPELINE_URL": "r.example.com:5000/edgepub/pipelines/p:1",
        "WORKSPACE_ID": "7",
    }
    base.update(values)
    return b64(_newline.join(f"export {k}={v}" for k, v in base.items() if v is not None))


# --- the seed's bundles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            SEED_TTL,
            EdgeBundle(
                edge_name="xgb-ccfraud-edge-test",
                join_token="3148ada5-285a-4fca-b3b8-b50a48d7511b",
                opscenter_host=OPS,
                pipeline_url=f"{GHCR}/edge-pipeline:f388c109-8d57-4ed2-9806-aa13f854576b",
                workspace_id=5,
            ),
        ),
        (
            SEED_DOCKER,
            EdgeBundle(
                edge_name="edge-ccfraud-observabilityyaig",
                join_token=TOKEN,
                opscenter_host=OPS,
                pipeline_url=(
                    f"{GHCR}/edge-observability-pipeline:3b49fba8-94d8-4fca-aecc-c75257fd16c6"
                ),
                workspace_id=7,
            ),
        ),
        (
            SEED_REPLACE_VERSION,
            EdgeBundle(
                edge_name="houseprice-edge-inline-replacement-demo",
                join_token=None,
                opscenter_host=OPS,
                pipeline_url=(
                    f"{GHCR}/edge-inline-replacement-demo:446aeed9-2d52-47ae-9e5c-f2a05ef0d4d6"
                ),
                workspace_id=None,
            ),
        ),
        (
            SEED_REPLACE_PIPELINE,
            EdgeBundle(
                edge_name="houseprice-edge-inline-replacement-demo",
                join_token=None,
                opscenter_host=OPS,
                pipeline_url=(
                    f"{GHCR}/new-edge-inline-replacement:00921571-3db7-4bf9-94dc-377aab558475"
                ),
                workspace_id=None,
            ),
        ),
    ],
    ids=["token-ttl", "docker", "replace-version", "replace-pipeline"],
)
def test_every_seed_bundle_decodes(text: str, expected: EdgeBundle) -> None:
    assert decode_bundle(text) == expected


def test_the_seeds_joining_bundles_encode_back_byte_for_byte() -> None:
    for text in (SEED_TTL, SEED_DOCKER):
        assert encode_bundle(decode_bundle(text)) == text


def test_a_replace_bundle_encodes_in_the_seeds_key_order() -> None:
    text = base64.b64decode(encode_bundle(decode_bundle(SEED_REPLACE_VERSION))).decode()
    assert [line.split("=")[0] for line in text.splitlines()] == [
        f"export {key}" for key in KEYS if key != "WORKSPACE_ID"
    ]
    assert f"export JOIN_TOKEN={OMITTED_JOIN_TOKEN}" in text


def test_bundle_keys_are_the_seeds() -> None:
    assert KEYS == (
        "BUNDLE_VERSION",
        "EDGE_NAME",
        "JOIN_TOKEN",
        "OPSCENTER_HOST",
        "PIPELINE_URL",
        "WORKSPACE_ID",
    )
    assert OMITTED_JOIN_TOKEN == "omitted_for_replace"


# --- round trip -----------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,20}[A-Za-z0-9])?", fullmatch=True)
hostnames = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
ports = st.none() | st.integers(min_value=1, max_value=65535)
paths = st.none() | st.from_regex(r"(/[A-Za-z0-9._~\-]{0,12}){1,3}", fullmatch=True)
schemes = st.none() | st.sampled_from(SCHEMES)


@st.composite
def hosts(draw: st.DrawFn) -> str:
    scheme, port, path = draw(schemes), draw(ports), draw(paths)
    host = draw(hostnames)
    return (f"{scheme}://" if scheme else "") + host + (f":{port}" if port else "") + (path or "")


tokens = st.none() | st.uuids(version=4).map(str)
pipeline_urls = st.builds(
    lambda host, repo, name, version: f"{host}/{repo}/pipelines/{name}{version}",
    st.sampled_from(["ghcr.io", "127.0.0.1:5000", "registry.example.com:443"]),
    st.from_regex(r"[a-z0-9]+(/[a-z0-9._\-]+){0,2}", fullmatch=True),
    names,
    st.one_of(
        st.uuids().map(lambda u: f":{u}"),
        st.from_regex(r"@sha256:[0-9a-f]{64}", fullmatch=True),
    ),
)


@st.composite
def bundles(draw: st.DrawFn) -> EdgeBundle:
    token = draw(tokens)
    workspace = draw(st.integers(min_value=1, max_value=2**63 - 1))
    return EdgeBundle(
        edge_name=draw(names),
        join_token=token,
        opscenter_host=draw(hosts()),
        pipeline_url=draw(pipeline_urls),
        # the seed's replace bundles carry no WORKSPACE_ID; a joining bundle must
        workspace_id=draw(st.none() | st.just(workspace)) if token is None else workspace,
    )


@given(bundles())
def test_encode_then_decode_is_the_same_bundle(bundle: EdgeBundle) -> None:
    text = encode_bundle(bundle)
    assert decode_bundle(text) == bundle
    keys = [line.split("=")[0] for line in base64.b64decode(text).decode().splitlines()]
    assert keys == [f"export {k}" for k in KEYS if k != "WORKSPACE_ID" or bundle.workspace_id]


@given(bundles())
def test_repr_hides_the_join_token(bundle: EdgeBundle) -> None:
    if bundle.join_token is not None:
        assert bundle.join_token not in repr(bundle) and bundle.join_token not in str(bundle)
    assert bundle.edge_name in repr(bundle)


def test_join_token_sha256_is_the_hex_digest_of_the_token() -> None:
    assert join_token_sha256(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert join_token_sha256(TOKEN) != join_token_sha256(str(uuid.uuid4()))


# --- what real bundles contain ----------------------------------------------------------------


def test_extra_keys_in_any_order_are_ignored() -> None:
    text = b64(
        "export OCI_REGISTRY=ghcr.io\nexport WORKSPACE_ID=7\nexport CONFIG_CPUS=4\n"
        f"export JOIN_TOKEN={TOKEN}\nexport EDGE_NAME=shop-12\nexport BUNDLE_VERSION=1\n"
        "export PIPELINE_URL=r.example.com/p/pipelines/p:1\nexport OPSCENTER_HOST=ops.example.com"
    )
    bundle = decode_bundle(text)
    assert (bundle.edge_name, bundle.join_token, bundle.workspace_id) == ("shop-12", TOKEN, 7)


def test_shell_spellings_decode() -> None:
    """Quotes, comments, blank lines, CRLF, no ``export``, base64 wrapped over lines."""
    text = (
        "# made by hand\r\n\r\nBUNDLE_VERSION='1'\r\nexport EDGE_NAME=\"shop-12\"\r\n"
        f"export  JOIN_TOKEN={TOKEN.upper()}\r\nexport OPSCENTER_HOST=ops.example.com\r\n"
        "export PIPELINE_URL=r.example.com/p/pipelines/p:1\r\nexport WORKSPACE_ID=7\r\n"
    )
    wrapped = "\n".join(b64(text)[i : i + 76] for i in range(0, len(b64(text)), 76))
    bundle = decode_bundle(f"  {wrapped.rstrip('=')}\n")
    assert bundle.join_token == TOKEN and bundle.edge_name == "shop-12"


def test_omitted_for_replace_is_no_token() -> None:
    bundle = decode_bundle(lines(JOIN_TOKEN=OMITTED_JOIN_TOKEN, WORKSPACE_ID=None))
    assert bundle.join_token is None and bundle.workspace_id is None
    assert "join_token=<omitted>" in repr(bundle)


@pytest.mark.parametrize(
    "host,url",
    [
        (OPS, f"wss://{OPS}"),
        ("ops.example.com/edge", "wss://ops.example.com/edge"),
        ("127.0.0.1:8443/edge", "wss://127.0.0.1:8443/edge"),
        ("[::1]:8080", "wss://[::1]:8080"),
        ("nats://10.0.0.5:4222", "nats://10.0.0.5:4222"),
        ("tls://nats.lan:4222", "tls://nats.lan:4222"),
        ("ws://127.0.0.1:8080/edge", "ws://127.0.0.1:8080/edge"),
        ("wss://ops.example.com/edge", "wss://ops.example.com/edge"),
        # a cluster's nodes, each an edge may reconnect to
        ("ws://127.0.0.1:1,ws://127.0.0.1:2", "ws://127.0.0.1:1,ws://127.0.0.1:2"),
        (
            "a.example.com/edge,b.example.com/edge",
            "wss://a.example.com/edge,wss://b.example.com/edge",
        ),
    ],
)
def test_opscenter_url(host: str, url: str) -> None:
    assert opscenter_url(host) == url
    assert decode_bundle(lines(OPSCENTER_HOST=host)).opscenter_host == host


@pytest.mark.parametrize(
    "host",
    [
        "",
        "-",
        "http://ops.example.com",
        "https://ops.example.com/edge",
        "wss://",
        "wss:///edge",
        "ops example.com",
        "ops.example.com:0",
        "ops.example.com:99999",
        "ops.example.com:port",
        "-ops.example.com",
        "ops..example.com",
        "ops.example.com/edge?x=1",
        "user:pw@ops.example.com",
        "x" * 500,
        "ws://a:1,",
        "ws://a:1,nats://b:2",  # one client speaks WebSocket or TCP, not both
        ",".join(["a.example.com"] * 17),
    ],
)
def test_opscenter_url_refuses_anything_else(host: str) -> None:
    with pytest.raises(BundleError) as info:
        opscenter_url(host)
    message = str(info.value)
    assert message.startswith("OPSCENTER_HOST=") and "\n" not in message, message
    assert "wss://" in message and len(message) < 300


@given(hosts())
def test_every_generated_host_has_a_url(host: str) -> None:
    url = opscenter_url(host)
    assert url.split("://")[0] in SCHEMES and url.endswith(host.split("://")[-1])


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,words",
    [
        ("", ["empty"]),
        ("%%%", ["base64"]),
        ("ZXhw-_", ["base64"]),
        ("Zm9v\u00e9", ["base64"]),
        (base64.b64encode(b"\xff\xfe").decode(), ["UTF-8"]),
        (b64("hello world"), ["line 1", "export KEY=VALUE"]),
        (lines(BUNDLE_VERSION="2"), ["BUNDLE_VERSION='2'", "version 1"]),
        (lines(EDGE_NAME="Shop_12"), ["EDGE_NAME='Shop_12'", "DNS-safe"]),
        (lines(EDGE_NAME="a" * 64), ["EDGE_NAME=", "1-63"]),
        (lines(JOIN_TOKEN="not-a-uuid"), ["JOIN_TOKEN", "hidden", OMITTED_JOIN_TOKEN]),
        (lines(JOIN_TOKEN=str(uuid.uuid1())), ["JOIN_TOKEN", "version-4"]),
        (lines(JOIN_TOKEN=None), ["lacks JOIN_TOKEN"]),
        (lines(WORKSPACE_ID="x"), ["WORKSPACE_ID='x'", "positive"]),
        (lines(WORKSPACE_ID="0"), ["WORKSPACE_ID='0'"]),
        (lines(WORKSPACE_ID="\u00b2"), ["WORKSPACE_ID="]),
        (lines(WORKSPACE_ID="9" * 5000), ["WORKSPACE_ID=", "5000 characters"]),
        (lines(WORKSPACE_ID=None), ["lacks WORKSPACE_ID", "join token"]),
        (lines(OPSCENTER_HOST=None), ["lacks OPSCENTER_HOST"]),
        (lines(OPSCENTER_HOST="http://ops"), ["OPSCENTER_HOST='http://ops'", "wss://"]),
        (lines(PIPELINE_URL="r.example.com/p q"), ["PIPELINE_URL='r.example.com/p q'"]),
        (lines(PIPELINE_URL="$(reboot)"), ["PIPELINE_URL="]),
        (b64(base64.b64decode(lines()).decode() + "\nexport EDGE_NAME=b"), ["EDGE_NAME twice"]),
        ("A" * (MAX_BUNDLE_CHARS + 1), [f"{MAX_BUNDLE_CHARS + 1} characters", "at most"]),
    ],
)
def test_bad_bundles_are_one_line_naming_the_problem(text: str, words: list[str]) -> None:
    with pytest.raises(BundleError) as info:
        decode_bundle(text)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "\n" not in message and len(message) < 300
    assert TOKEN not in message and TOKEN[:8] not in message
    if len(text) > 8:
        assert text not in message


def test_the_size_cap_is_checked_before_decoding() -> None:
    padded = lines() + " " * (MAX_BUNDLE_CHARS - len(lines()))
    assert decode_bundle(padded).edge_name == "shop-12"
    with pytest.raises(BundleError, match="at most"):
        decode_bundle(padded + " ")


@pytest.mark.parametrize(
    "change",
    [
        {"edge_name": "Shop_12"},
        {"join_token": TOKEN.upper()},
        {"join_token": f"{TOKEN}\nexport EDGE_NAME=evil"},
        {"join_token": OMITTED_JOIN_TOKEN},
        {"workspace_id": None},
        {"workspace_id": 0},
        {"opscenter_host": "https://ops"},
        {"pipeline_url": "r.example.com/p/pipelines/p:1\nexport X=1"},
        {"bundle_version": 2},
    ],
)
def test_encode_refuses_what_decode_would_refuse(change: dict[str, object]) -> None:
    good = decode_bundle(lines())
    bad = msgspec.structs.replace(good, **change)
    with pytest.raises(BundleError) as info:
        encode_bundle(bad)
    assert TOKEN not in str(info.value)


# --- fuzz -------------------------------------------------------------------------------------


def _decodes_or_one_line(text: str, secret: str | None = None) -> None:
    try:
        bundle = decode_bundle(text)
    except BundleError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message
        assert len(message) < 300, message
        if secret:
            assert secret not in message
    else:
        assert decode_bundle(encode_bundle(bundle)) == bundle


@given(st.text())
@example("=" * 8)
@example(" \u2028 ")
def test_any_text_decodes_or_is_one_line(text: str) -> None:
    _decodes_or_one_line(text)


@given(st.binary(max_size=4096))
def test_any_bytes_as_text_or_as_base64_decode_or_are_one_line(raw: bytes) -> None:
    _decodes_or_one_line(raw.decode("latin-1"))
    _decodes_or_one_line(base64.b64encode(raw).decode())


key_names = st.sampled_from([*KEYS, "CONFIG_CPUS", "OCI_REGISTRY", "X"])
line_text = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"export {k}={v}", key_names, st.text(max_size=40)),
    st.builds(lambda k, v: f"{k}={v}", key_names, st.text(max_size=40)),
)


@given(st.lists(line_text, max_size=12))
def test_base64_of_random_lines_decodes_or_is_one_line(random_lines: list[str]) -> None:
    try:
        text = b64("\n".join(random_lines))
    except UnicodeEncodeError:  # lone surrogates: not text a bundle can carry
        return
    _decodes_or_one_line(text)


@given(
    st.uuids(version=4).map(str),
    st.sampled_from([k for k in KEYS if k != "JOIN_TOKEN"]),
    st.none() | st.text(max_size=60).filter(lambda v: "\n" not in v and "\r" not in v),
    st.sampled_from(["\n", "\r\n"]),
)
def test_a_broken_bundle_never_quotes_its_token(
    token: str, key: str, value: str | None, newline: str
) -> None:
    """One field of a bundle with a real token is changed or dropped: decode it or say what is
    wrong, never with the token in the line."""
    try:
        text = lines(JOIN_TOKEN=token, _newline=newline, **{key: value})
    except UnicodeEncodeError:  # lone surrogates: not text a bundle can carry
        return
    _decodes_or_one_line(text, token)


@given(st.integers(min_value=MAX_BUNDLE_CHARS + 1, max_value=MAX_BUNDLE_CHARS * 64))
def test_huge_inputs_are_refused_by_size(size: int) -> None:
    with pytest.raises(BundleError, match="at most"):
        decode_bundle(lines()[:4] * (size // 4 + 1))
