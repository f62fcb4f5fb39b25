"""``EDGE_BUNDLE``: standard base64 of newline-joined ``export KEY=VALUE`` lines.

The seed's keys, in its order: ``BUNDLE_VERSION`` (1), ``EDGE_NAME``, ``JOIN_TOKEN`` (a UUID4,
single use), ``OPSCENTER_HOST``, ``PIPELINE_URL``, ``WORKSPACE_ID``. Decoding is validation:
a bad bundle raises ``BundleError`` whose message never contains the join token or the
bundle text (both are credentials).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

import msgspec

KEYS = (
    "BUNDLE_VERSION",
    "EDGE_NAME",
    "JOIN_TOKEN",
    "OPSCENTER_HOST",
    "PIPELINE_URL",
    "WORKSPACE_ID",
)
SUPPORTED_VERSION = 1
_LINE = re.compile(r"(?:export\s+)?(?P<key>[A-Z_][A-Z0-9_]*)=(?P<value>.*)")
_EDGE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~\-/]*)?")


class BundleError(ValueError):
    """What is wrong with a bundle, without quoting its secret parts."""


class EdgeBundle(msgspec.Struct, frozen=True, kw_only=True):
    bundle_version: int
    edge_name: str
    join_token: str
    opscenter_host: str
    pipeline_url: str
    workspace_id: int

    def __repr__(self) -> str:  # the join token is a credential: keep it out of reprs
        return (
            f"EdgeBundle(edge_name={self.edge_name!r}, opscenter_host={self.opscenter_host!r}, "
            f"pipeline_url={self.pipeline_url!r}, workspace_id={self.workspace_id})"
        )


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
        values[match["key"]] = _strip_quotes(match["value"].strip())
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


def _check_fields(values: dict[str, str]) -> EdgeBundle:
    missing = [key for key in KEYS if not values.get(key)]
    if missing:
        raise BundleError(f"lacks {', '.join(missing)}; expected {', '.join(KEYS)}")
    version = values["BUNDLE_VERSION"]
    if version != str(SUPPORTED_VERSION):
        raise BundleError(f"has BUNDLE_VERSION={version!r}; this agent reads version 1")
    name = values["EDGE_NAME"]
    if not _EDGE_NAME.fullmatch(name) or len(name) > 63:
        raise BundleError(f"has EDGE_NAME={name!r}; expected a DNS-safe name")
    try:
        token = uuid.UUID(values["JOIN_TOKEN"])
    except ValueError:
        raise BundleError("has a JOIN_TOKEN that is not a UUID (value hidden)") from None
    if token.version != 4:
        raise BundleError("has a JOIN_TOKEN that is not a version-4 UUID (value hidden)")
    host = values["OPSCENTER_HOST"]
    if not _HOST.fullmatch(host):
        raise BundleError(f"has OPSCENTER_HOST={host!r}; expected host[:port][/path]")
    workspace = values["WORKSPACE_ID"]
    if not workspace.isdigit() or int(workspace) < 1:
        raise BundleError(f"has WORKSPACE_ID={workspace!r}; expected a positive whole number")
    return EdgeBundle(
        bundle_version=SUPPORTED_VERSION,
        edge_name=name,
        join_token=str(token),
        opscenter_host=host,
        pipeline_url=values["PIPELINE_URL"],
        workspace_id=int(workspace),
    )


def decode_bundle(text: str) -> EdgeBundle:
    """Decode and validate an ``EDGE_BUNDLE`` value."""
    if not text.strip():
        raise BundleError("is empty")
    return _check_fields(_lines(_decode_base64(text)))


def encode_bundle(bundle: EdgeBundle) -> str:
    """The inverse of ``decode_bundle``: the seed's lines, in the seed's order."""
    values = {
        "BUNDLE_VERSION": str(bundle.bundle_version),
        "EDGE_NAME": bundle.edge_name,
        "JOIN_TOKEN": bundle.join_token,
        "OPSCENTER_HOST": bundle.opscenter_host,
        "PIPELINE_URL": bundle.pipeline_url,
        "WORKSPACE_ID": str(bundle.workspace_id),
    }
    text = "\n".join(f"export {key}={values[key]}" for key in KEYS)
    return base64.b64encode(text.encode()).decode()
