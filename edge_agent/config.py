"""The edge agent's settings, read from the environment the seed documents.

``parse_env`` is pure: a mapping in, an ``AgentConfig`` out, or a ``ConfigError`` whose one
line names the variable, the value and what is expected. Secrets (``OCI_PASSWORD``, the
bundle and its ``JOIN_TOKEN``) are never quoted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

from edgepub.shared.artifact import Reference, parse_reference
from edgepub.shared.bundle import BundleError, EdgeBundle, decode_bundle
from edgepub.shared.errors import ConfigError, EdgepubError

from .sizes import EXPECTED as SIZE_EXPECTED
from .sizes import SizeError, format_size, parse_size

DEFAULT_PERSIST_DIR = "/persist"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 64 << 20
DEFAULT_LOG_STORAGE = 1 << 30  # when neither LOCAL_INFERENCE_STORAGE nor PLATEAU_PAGE_SIZE
DEFAULT_PAGE_SIZE = 1000
DEFAULT_HANDOFF_CAPACITY = 10_000
DEFAULT_HANDOFF_BYTES = 64 << 20
INFLIGHT_PER_WORKER = 8  # EDGEPUB_MAX_INFLIGHT's default, per CONFIG_CPUS worker thread
DEFAULT_MAX_RECORDS = 100_000  # a 60 MiB body of 740k records peaked at 1.5 GB RSS
DEFAULT_MAX_HEADER = 32 << 10
DEFAULT_HEADER_TIMEOUT_S = 10
DEFAULT_BODY_TIMEOUT_S = 60
DEFAULT_KEEP_ALIVE_S = 30
DEFAULT_MAX_CONNECTIONS = 1000
MAX_TIMEOUT_S = 3600
MIN_LOG_STORAGE = 1 << 20
MAX_PAGE_SIZE = 1_000_000
DEFAULT_HEARTBEAT_S = 10.0  # Ops calls an edge offline after 3 missed beats (30 s)
MAX_CPUS = 1024.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOOPBACK = {"localhost", "127.0.0.1", "[::1]"}
_REGISTRY = re.compile(r"(?:(?P<scheme>https?)://)?(?P<host>[^/\s]+)(?P<path>/[^\s]*)?")


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one connection may cost before it is refused (``web/protocol.py``)."""

    max_header_bytes: int = DEFAULT_MAX_HEADER  # request line + headers: 431 past it
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # connect or first byte -> headers: 408
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # headers -> whole body: 408
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S  # idle between requests: closed
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open at once: 503 past it


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    pipeline_url: str
    reference: Reference
    insecure: bool  # plain HTTP to the registry
    oci_username: str | None = None
    oci_password: str | None = msgspec.field(default=None)
    cpus: float = 1.0
    debug: bool = False
    bundle: EdgeBundle | None = None
    log_storage_bytes: int = DEFAULT_LOG_STORAGE
    page_size: int = DEFAULT_PAGE_SIZE
    log_limits_given: bool = False
    local_log: bool = True  # EDGEPUB_LOCAL_LOG=false: no SQLite log, nothing shipped (benches)
    persist_dir: Path = Path(DEFAULT_PERSIST_DIR)
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY  # on the wire, and an Arrow body decoded
    max_records: int = DEFAULT_MAX_RECORDS
    http: HttpLimits = msgspec.field(default_factory=HttpLimits)
    handoff_capacity: int = DEFAULT_HANDOFF_CAPACITY
    handoff_bytes: int = DEFAULT_HANDOFF_BYTES
    max_inflight: int | None = None  # None: INFLIGHT_PER_WORKER per worker thread
    log_format: str = "auto"
    heartbeat_s: float = DEFAULT_HEARTBEAT_S  # how often the edge reports to Ops

    @property
    def intra_op_threads(self) -> int:
        """onnxruntime intra-op threads for ``CONFIG_CPUS`` (1.25 -> 1, 4 -> 4), and as many
        worker threads for requests served off the event loop."""
        return max(1, math.floor(self.cpus))

    @property
    def inflight_limit(self) -> int:
        """Large or slow requests worked on off the event loop at once (503 past it)."""
        if self.max_inflight is not None:
            return self.max_inflight
        return INFLIGHT_PER_WORKER * self.intra_op_threads

    @property
    def edge_name(self) -> str | None:
        return self.bundle.edge_name if self.bundle else None

    def __repr__(self) -> str:  # never show the password or the bundle's token
        return (
            f"AgentConfig(pipeline_url={self.pipeline_url!r}, cpus={self.cpus}, "
            f"persist_dir={str(self.persist_dir)!r}, port={self.port}, "
            f"edge_name={self.edge_name!r})"
        )


def _bad(name: str, value: str | None, expected: str) -> ConfigError:
    shown = "not set" if value is None else f"{value!r}"
    return ConfigError(f"{name}={shown}: expected {expected}")


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value is not None and value.strip() else None


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise _bad(name, raw, "true or false")


def _digits(raw: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also admits '²', which ``int`` refuses."""
    return raw.isascii() and raw.isdigit()


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    if not _digits(raw) or not low <= int(raw) <= high:
        raise _bad(name, raw, f"a whole number from {low} to {high}")
    return int(raw)


def _optional_whole(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    return None if _get(env, name) is None else _whole(env, name, low, low, high)


def parse_cpus(raw: str | None) -> float:
    if raw is None:
        return 1.0
    try:
        cpus = float(raw)
    except ValueError:
        raise _bad("CONFIG_CPUS", raw, "a number of CPUs such as 1 or 2.5") from None
    if not math.isfinite(cpus) or not 0 < cpus <= MAX_CPUS:
        raise _bad("CONFIG_CPUS", raw, f"a number of CPUs above 0 and at most {MAX_CPUS:g}")
    return cpus


def parse_log_limits(storage: str | None, page: str | None) -> tuple[int, int, bool]:
    """``LOCAL_INFERENCE_STORAGE`` and ``PLATEAU_PAGE_SIZE``: both or neither (the seed)."""
    if storage is None and page is None:
        return DEFAULT_LOG_STORAGE, DEFAULT_PAGE_SIZE, False
    if page is None:
        raise _bad(
            "PLATEAU_PAGE_SIZE",
            None,
            "rows per upload page; it must be set together "
            f"with LOCAL_INFERENCE_STORAGE={storage!r}",
        )
    if storage is None:
        raise _bad(
            "LOCAL_INFERENCE_STORAGE",
            None,
            f"a size such as 1Gi; it must be set together with PLATEAU_PAGE_SIZE={page!r}",
        )
    try:
        size = parse_size(storage)
    except SizeError:
        raise _bad("LOCAL_INFERENCE_STORAGE", storage, SIZE_EXPECTED) from None
    if size < MIN_LOG_STORAGE:
        raise _bad(
            "LOCAL_INFERENCE_STORAGE",
            storage,
            f"at least {format_size(MIN_LOG_STORAGE)} for the local inference log",
        )
    if not _digits(page) or not 1 <= int(page) <= MAX_PAGE_SIZE:
        raise _bad("PLATEAU_PAGE_SIZE", page, f"a whole number of rows from 1 to {MAX_PAGE_SIZE}")
    return size, int(page), True


def parse_bundle(raw: str | None) -> EdgeBundle | None:
    if raw is None:
        return None
    try:
        return decode_bundle(raw)
    except BundleError as exc:
        # The value itself is a credential: name it by length only.
        raise ConfigError(
            f"EDGE_BUNDLE=<{len(raw)} characters, hidden>: {exc}; expected the base64 bundle "
            "from publish.add_edge(...)"
        ) from None


def parse_registry(oci_registry: str | None, pipeline_url: str, reference: Reference) -> bool:
    """Whether to speak plain HTTP; refuses an ``OCI_REGISTRY`` that is not PIPELINE_URL's."""
    host_of_url = reference.registry
    if oci_registry is None:
        return host_of_url.rsplit(":", 1)[0] in _LOOPBACK or host_of_url in _LOOPBACK
    match = _REGISTRY.fullmatch(oci_registry)
    if match is None:
        raise _bad("OCI_REGISTRY", oci_registry, "[http://|https://]host[:port][/path]")
    path = (match["path"] or "").strip("/")
    if match["host"] != host_of_url or (path and not reference.repository.startswith(path)):
        raise _bad(
            "OCI_REGISTRY",
            oci_registry,
            f"the registry that PIPELINE_URL={pipeline_url!r} names ({host_of_url}); "
            "credentials are only sent there",
        )
    if match["scheme"] is not None:
        return match["scheme"] == "http"
    host = host_of_url.rsplit(":", 1)[0]
    return host in _LOOPBACK


def _pipeline_url(env: Mapping[str, str], bundle: EdgeBundle | None) -> tuple[str, Reference]:
    raw = _get(env, "PIPELINE_URL") or (bundle.pipeline_url if bundle else None)
    if raw is None:
        raise _bad(
            "PIPELINE_URL",
            None,
            "the publish's pipeline URL, e.g. registry.example.com/edgepub/pipelines/p1:<version>",
        )
    try:
        return raw, parse_reference(raw)
    except EdgepubError:
        raise _bad("PIPELINE_URL", raw, "host[:port]/path/pipelines/<name>:<version>") from None


def _credentials(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    user, password = _get(env, "OCI_USERNAME"), env.get("OCI_PASSWORD") or None
    if user is not None and password is None:
        raise _bad("OCI_PASSWORD", None, f"the registry password for OCI_USERNAME={user!r}")
    if user is None and password is not None:
        raise _bad("OCI_USERNAME", None, "the registry user name that goes with OCI_PASSWORD")
    return user, password


def _log_format(env: Mapping[str, str]) -> str:
    fmt = _get(env, "EDGEPUB_LOG_FORMAT") or "auto"
    if fmt not in {"auto", "json", "console"}:
        raise _bad("EDGEPUB_LOG_FORMAT", fmt, "json, console or auto")
    return fmt


def _size(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        size = parse_size(raw)
    except SizeError:
        raise _bad(name, raw, SIZE_EXPECTED) from None
    if size < 1024:
        raise _bad(name, raw, "at least 1Ki")
    return size


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _bad(name, raw, f"a number of seconds from {low:g} to {high:g}") from None
    if not low <= value <= high:  # also refuses nan
        raise _bad(name, raw, f"a number of seconds from {low:g} to {high:g}")
    return value


def parse_http_limits(env: Mapping[str, str]) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=_size(env, "EDGEPUB_MAX_HEADER", DEFAULT_MAX_HEADER),
        header_timeout_s=_whole(
            env, "EDGEPUB_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S, 1, MAX_TIMEOUT_S
        ),
        body_timeout_s=_whole(
            env, "EDGEPUB_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S, 1, MAX_TIMEOUT_S
        ),
        keep_alive_s=_whole(env, "EDGEPUB_KEEP_ALIVE_S", DEFAULT_KEEP_ALIVE_S, 1, MAX_TIMEOUT_S),
        max_connections=_whole(
            env, "EDGEPUB_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, 1, 1_000_000
        ),
    )


def parse_env(env: Mapping[str, str]) -> AgentConfig:
    """The whole configuration, or the first problem found as a ``ConfigError``."""
    bundle = parse_bundle(_get(env, "EDGE_BUNDLE"))
    pipeline_url, reference = _pipeline_url(env, bundle)
    insecure = parse_registry(_get(env, "OCI_REGISTRY"), pipeline_url, reference)
    user, password = _credentials(env)
    storage, page, given = parse_log_limits(
        _get(env, "LOCAL_INFERENCE_STORAGE"), _get(env, "PLATEAU_PAGE_SIZE")
    )
    return AgentConfig(
        pipeline_url=pipeline_url,
        reference=reference,
        insecure=insecure,
        oci_username=user,
        oci_password=password,
        cpus=parse_cpus(_get(env, "CONFIG_CPUS")),
        debug=_flag(env, "DEBUG", False),
        bundle=bundle,
        log_storage_bytes=storage,
        page_size=page,
        log_limits_given=given,
        local_log=_flag(env, "EDGEPUB_LOCAL_LOG", True),
        persist_dir=Path(_get(env, "EDGEPUB_PERSIST_DIR") or DEFAULT_PERSIST_DIR),
        host=_get(env, "EDGEPUB_HOST") or "0.0.0.0",
        port=_whole(env, "EDGEPUB_PORT", DEFAULT_PORT, 1, 65535),
        max_body_bytes=_size(env, "EDGEPUB_MAX_BODY", DEFAULT_MAX_BODY),
        max_records=_whole(env, "EDGEPUB_MAX_RECORDS", DEFAULT_MAX_RECORDS, 1, 1_000_000_000),
        http=parse_http_limits(env),
        handoff_capacity=_whole(env, "EDGEPUB_LOG_QUEUE", DEFAULT_HANDOFF_CAPACITY, 1, 10_000_000),
        handoff_bytes=_size(env, "EDGEPUB_LOG_QUEUE_BYTES", DEFAULT_HANDOFF_BYTES),
        max_inflight=_optional_whole(env, "EDGEPUB_MAX_INFLIGHT", 1, 100_000),
        log_format=_log_format(env),
        heartbeat_s=_seconds(env, "EDGEPUB_HEARTBEAT_S", DEFAULT_HEARTBEAT_S, 0.1, 3600.0),
    )
