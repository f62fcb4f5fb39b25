"""``EDGE_BUNDLE``: standard base64 of newline-joined ``export KEY=VALUE`` lines.

The seed's keys, in its order: ``BUNDLE_VERSION`` (1), ``EDGE_NAME``, ``JOIN_TOKEN`` (a UUID4,
single use), ``OPSCENTER_HOST``, ``PIPELINE_URL``, ``WORKSPACE_ID``. Real bundles carry more:
the seed's replaced locations add ``CONFIG_CPUS`` and ``OCI_REGISTRY`` in another order, say
``JOIN_TOKEN=omitted_for_replace`` (the edge joined already) and have no ``WORKSPACE_ID``.
The decoder ignores keys it does not know and reads both forms.

Decoding is validation: a bad bundle raises ``BundleError`` whose one-line message never
contains the join token or the bundle text (both are credentials).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid

import msgspec

from .settings import servers_of

KEYS = (
    "BUNDLE_VERSION",
    "EDGE_NAME",
    "JOIN_TOKEN",
    "OPSCENTER_HOST",
    "PIPELINE_URL",
    "WORKSPACE_ID",
)
SUPPORTED_VERSION = 1
# What a replaced location's bundle says instead of a token (the seed): join with /persist.
OMITTED_JOIN_TOKEN = "omitted_for_replace"
# The seed's bundles are ~400 characters; a page of base64 is a mistake, not a bundle.
MAX_BUNDLE_CHARS = 16 * 1024
MAX_WORKSPACE_ID = 2**63 - 1
MAX_HOSTNAME = 253
SCHEMES = ("nats", "tls", "ws", "wss")
DEFAULT_SCHEME = "wss"  # host/edge: through HTTPS reverse proxies, as the seed's edges report
HOST_EXPECTED = "[nats://|tls://|ws://|wss://]host[:port][/path] (a cluster's: comma-separated)"
MAX_HOSTS = 16

_LINE = re.compile(r"(?:export\s+)?(?P<key>[A-Z_][A-Z0-9_]*)=(?P<value>.*)")
_EDGE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"  # a DNS label: at most 63
_HOST = re.compile(
    rf"(?:(?P<scheme>{'|'.join(SCHEMES)})://)?"
    rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~\-/]*)?"
)
# An OCI reference: host[:port]/path[:tag][@digest]; no spaces, quotes or shell characters.
_PIPELINE_URL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:/@+\-]*")
_SHOWN = 80  # characters of a refused (non-secret) value quoted in an error


class BundleError(ValueError):
    """What is wrong with a bundle, in one line, without quoting its secret parts."""


class EdgeBundle(msgspec.Struct, frozen=True, kw_only=True):
    bundle_version: int = SUPPORTED_VERSION
    edge_name: str
    join_token: str | None  # None: omitted_for_replace (the edge joined before)
    opscenter_host: str
    pipeline_url: str
    workspace_id: int | None  # None only when the token is omitted (the seed's replaces)

    def __repr__(self) -> str:  # the join token is a credential: keep it out of reprs
        token = "omitted" if self.join_token is None else "hidden"
        return (
            f"EdgeBundle(edge_name={self.edge_name!r}, join_token=<{token}>, "
            f"opscenter_host={self.opscenter_host!r}, pipeline_url={self.pipeline_url!r}, "
            f"workspace_id={self.workspace_id})"
        )


def join_token_sha256(token: str) -> str:
    """How a join token is remembered (by the token service and by the edge): sha256 hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _show(value: str) -> str:
    """A refused value, quoted and cut short: an error stays one readable line."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def _strip_quotes(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _lines(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise BundleError(f"line {number} is not 'export KEY=VALUE'")
        key = match["key"]
        if key in values:
            raise BundleError(f"sets {key} twice (line {number}); expected each key once")
        values[key] = _strip_quotes(match["value"].strip())
    return values


def _decode_base64(text: str) -> str:
    compact = "".join(text.split())
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError("is not standard base64") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError("does not decode to UTF-8 text") from None


def _join_token(raw: str) -> str | None:
    if raw == OMITTED_JOIN_TOKEN:
        return None
    try:
        token = uuid.UUID(raw)
    except ValueError:
        raise BundleError(
            f"has a JOIN_TOKEN that is not a UUID (value hidden); expected a version-4 UUID "
            f"or {OMITTED_JOIN_TOKEN}"
        ) from None
    if token.version != 4:
        raise BundleError("has a JOIN_TOKEN that is not a version-4 UUID (value hidden)")
    return str(token)


def _workspace(raw: str | None, token: str | None) -> int | None:
    if raw is None:
        if token is None:
            return None
        raise BundleError("lacks WORKSPACE_ID; a bundle with a join token names its workspace")
    whole = raw.isascii() and raw.isdigit() and len(raw) <= 19  # int() refuses '²'
    if not whole or not 1 <= int(raw) <= MAX_WORKSPACE_ID:
        raise BundleError(f"has WORKSPACE_ID={_show(raw)}; expected a positive whole number")
    return int(raw)


def _hosts(value: str) -> list[re.Match[str]] | None:
    """Every entry of an OPSCENTER_HOST list checked (one host, or a cluster's nodes)."""
    parts = value.split(",")
    if len(parts) > MAX_HOSTS:
        return None
    matches = [_host(part) for part in parts]
    return None if any(m is None for m in matches) else matches  # type: ignore[return-value]


def _host(host: str) -> re.Match[str] | None:
    match = _HOST.fullmatch(host)
    if match is None or len(match["host"]) > MAX_HOSTNAME:
        return None
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        return None
    return match


def _check_fields(values: dict[str, str]) -> EdgeBundle:
    required = [key for key in KEYS if key != "WORKSPACE_ID"]
    missing = [key for key in required if not values.get(key)]
    if missing:
        raise BundleError(f"lacks {', '.join(missing)}; expected {', '.join(KEYS)}")
    version = values["BUNDLE_VERSION"]
    if version != str(SUPPORTED_VERSION):
        raise BundleError(
            f"has BUNDLE_VERSION={_show(version)}; this agent reads version {SUPPORTED_VERSION}"
        )
    name = values["EDGE_NAME"]
    if not _EDGE_NAME.fullmatch(name) or len(name) > 63:
        raise BundleError(
            f"has EDGE_NAME={_show(name)}; expected a DNS-safe name (1-63 lowercase letters, "
            "digits and '-')"
        )
    token = _join_token(values["JOIN_TOKEN"])
    host = values["OPSCENTER_HOST"]
    if _hosts(host) is None:
        raise BundleError(f"has OPSCENTER_HOST={_show(host)}; expected {HOST_EXPECTED}")
    pipeline_url = values["PIPELINE_URL"]
    if not _PIPELINE_URL.fullmatch(pipeline_url):
        raise BundleError(
            f"has PIPELINE_URL={_show(pipeline_url)}; expected host[:port]/path:version"
        )
    return EdgeBundle(
        bundle_version=SUPPORTED_VERSION,
        edge_name=name,
        join_token=token,
        opscenter_host=host,
        pipeline_url=pipeline_url,
        workspace_id=_workspace(values.get("WORKSPACE_ID") or None, token),
    )


def decode_bundle(text: str) -> EdgeBundle:
    """Decode and validate an ``EDGE_BUNDLE`` value; keys beyond the seed's are ignored."""
    if len(text) > MAX_BUNDLE_CHARS:
        raise BundleError(
            f"is {len(text)} characters; a bundle is at most {MAX_BUNDLE_CHARS} "
            "(copy EDGE_BUNDLE from publish.add_edge(...) alone)"
        )
    if not text.strip():
        raise BundleError("is empty")
    return _check_fields(_lines(_decode_base64(text)))


def _values(bundle: EdgeBundle) -> dict[str, str]:
    values = {
        "BUNDLE_VERSION": str(bundle.bundle_version),
        "EDGE_NAME": bundle.edge_name,
        "JOIN_TOKEN": OMITTED_JOIN_TOKEN if bundle.join_token is None else bundle.join_token,
        "OPSCENTER_HOST": bundle.opscenter_host,
        "PIPELINE_URL": bundle.pipeline_url,
    }
    if bundle.workspace_id is not None:
        values["WORKSPACE_ID"] = str(bundle.workspace_id)
    return values


def encode_bundle(bundle: EdgeBundle) -> str:
    """The inverse of ``decode_bundle``: the seed's lines, in the seed's order. A bundle that
    would not decode is refused here (``BundleError``), so Ops never hands one out."""
    values = _values(bundle)
    if _check_fields(values) != bundle:  # e.g. a token spelled in upper case
        raise BundleError("is not in its canonical form; build it from decode_bundle's fields")
    text = "\n".join(f"export {key}={values[key]}" for key in KEYS if key in values)
    return base64.b64encode(text.encode()).decode()


def opscenter_url(host: str) -> str:
    """The NATS server URL an edge connects to for ``OPSCENTER_HOST``: an explicit scheme
    wins (returned as is); ``host[:port][/path]`` means ``wss://host[:port][/path]``. A
    comma-separated list (a cluster's nodes) gives the list of URLs, comma-separated."""
    matches = _hosts(host)
    if matches is None:
        raise BundleError(f"OPSCENTER_HOST={_show(host)}: expected {HOST_EXPECTED}")
    urls = [m.string if m["scheme"] else f"{DEFAULT_SCHEME}://{m.string}" for m in matches]
    try:
        servers_of(",".join(urls))
    except ValueError as exc:
        raise BundleError(f"OPSCENTER_HOST={_show(host)}: {exc}") from None
    return ",".join(urls)
