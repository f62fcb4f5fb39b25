"""Who may do what on the bus: one permission set per NATS user, as pure data.

Least privilege, enforced by nats-server: every user gets exactly the subjects and
JetStream API calls its code uses, and the server refuses the rest (tested in
``tests/integration/test_bus_permissions.py`` as each user). The building blocks below
name what a piece of code does (reads a stream, owns a durable consumer, writes a KV
bucket); each user's set is a sum of them.

Every user subscribes only under its own inbox prefix (``_INBOX.<user>``; nats-py's
``inbox_prefix``, set by ``shared/bus.connect``), so no one reads another's replies. No
user may delete or purge a stream it does not own, and nobody but the publish service
may write the model files that publishes read.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from edgepub.shared import subjects

_API = "$JS.API"


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """What one NATS user may publish and subscribe to (nats-server subject patterns)."""

    publish_allow: tuple[str, ...] = (">",)
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = (">",)
    subscribe_deny: tuple[str, ...] = ()
    # Lets a user that answers requests publish to the one reply subject it was sent.
    allow_responses: bool = False


def _api(*parts: str) -> str:
    return ".".join((_API, *parts))


def stream_reader(stream: str) -> tuple[str, ...]:
    """Look a stream up and read single messages from it (KV get, object info)."""
    return (
        _api("STREAM", "INFO", stream),
        _api("STREAM", "MSG", "GET", stream),
        _api("DIRECT", "GET", stream),
        _api("DIRECT", "GET", stream, ">"),
    )


def ordered_reader(stream: str) -> tuple[str, ...]:
    """Ephemeral ordered consumers on a stream (KV watch and keys, object chunks, events):
    create, look at its own state, and the flow-control answers its deliveries ask for."""
    return (
        _api("CONSUMER", "CREATE", stream),
        _api("CONSUMER", "CREATE", stream, ">"),
        _api("CONSUMER", "INFO", stream, ">"),
        f"$JS.FC.{stream}.>",
    )


def stream_owner(stream: str) -> tuple[str, ...]:
    """Create a stream and bring its config up to date (never delete or purge it)."""
    return (_api("STREAM", "CREATE", stream), _api("STREAM", "UPDATE", stream))


def durable_consumer(stream: str, durable: str) -> tuple[str, ...]:
    """Create, bind, fetch from and ack one named durable pull consumer."""
    return (
        _api("STREAM", "INFO", stream),
        _api("CONSUMER", "CREATE", stream, durable),
        _api("CONSUMER", "CREATE", stream, durable, ">"),
        _api("CONSUMER", "DURABLE", "CREATE", stream, durable),
        _api("CONSUMER", "INFO", stream, durable),
        _api("CONSUMER", "MSG", "NEXT", stream, durable),
        f"$JS.ACK.{stream}.{durable}.>",
    )


def kv_writer(bucket: str) -> tuple[str, ...]:
    stream = f"KV_{bucket}"
    return (f"$KV.{bucket}.>", *stream_reader(stream), *ordered_reader(stream))


def object_store_reader(bucket: str) -> tuple[str, ...]:
    stream = f"OBJ_{bucket}"
    return (*stream_reader(stream), *ordered_reader(stream))


def _inbox(user: str) -> tuple[str, ...]:
    return (f"{subjects.inbox_prefix(user)}.>",)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def sdk(user: str) -> Permissions:
    """An SDK/CLI user: requests to any service under its own name, model uploads into the
    upload area (never the verified store), ordered reads of publish events and of the
    pipeline log."""
    return Permissions(
        publish_allow=(
            f"{subjects.REQUEST_ROOT}.{subjects.token(user)}.>",
            f"$O.{subjects.OBJECT_STORE_UPLOADS}.>",
            *ordered_reader(subjects.EVENTS_STREAM),
            # pipeline.logs() and `logs tail`: read the pipeline log (never write it)
            *stream_reader(subjects.LOGS_STREAM),
            *ordered_reader(subjects.LOGS_STREAM),
        ),
        subscribe_allow=_inbox(user),
    )


PUBLISH_KV = subjects.KV_PUBLISH_SERVICE


def publish_service(user: str = "publish") -> Permissions:
    """Answers the publish verbs; owns the work and events streams, its KV buckets and
    both model object stores; follows push outcomes with its durable consumer."""
    models = f"OBJ_{subjects.OBJECT_STORE_MODELS}"
    uploads = f"OBJ_{subjects.OBJECT_STORE_UPLOADS}"
    owned = (
        subjects.WORK_STREAM,
        subjects.EVENTS_STREAM,
        subjects.PAGES_STREAM,  # created here like every stream; edges and the collector use them
        subjects.LOGS_STREAM,
        models,
        uploads,
        *(f"KV_{b}" for b in PUBLISH_KV),
        f"KV_{subjects.KV_EDGES}",  # created here like every bucket; the token service writes it
    )
    return Permissions(
        publish_allow=_unique(
            (
                subjects.PUBLISH_REQUESTED,
                subjects.PUBLISH_EVENTS_ALL,
                *(p for s in owned for p in stream_owner(s)),
                *(p for s in owned for p in stream_reader(s)),
                *(p for b in PUBLISH_KV for p in kv_writer(b)),
                f"$O.{subjects.OBJECT_STORE_MODELS}.>",
                *object_store_reader(subjects.OBJECT_STORE_MODELS),
                *object_store_reader(subjects.OBJECT_STORE_UPLOADS),
                # uploads, once copied or refused, and chunks an entry no longer uses
                # (a refused copy, a replaced entry) are purged: only in these two stores
                _api("STREAM", "PURGE", uploads),
                _api("STREAM", "PURGE", models),
                *durable_consumer(subjects.WORK_STREAM, subjects.CONSUMER_PUBLISH_OUTCOMES),
            )
        ),
        subscribe_allow=(subjects.request_wildcard(subjects.SERVICE_PUBLISH), *_inbox(user)),
        allow_responses=True,
    )


def registry_push_service(user: str = "registry-push") -> Permissions:
    """Takes push work from its durable consumer, reads model files, reports outcomes."""
    return Permissions(
        publish_allow=_unique(
            (
                subjects.PUBLISH_PUSH_STARTED,
                subjects.PUBLISH_PUSHED,
                subjects.PUBLISH_PUSH_FAILED,
                *durable_consumer(subjects.WORK_STREAM, subjects.CONSUMER_REGISTRY_PUSH),
                *object_store_reader(subjects.OBJECT_STORE_MODELS),
            )
        ),
        subscribe_allow=_inbox(user),
    )


def token_service(user: str = "token") -> Permissions:
    """Answers the edge verbs and the server's auth callout; writes the edges bucket, reads
    publish records, follows publish records to move replaced edges, tells edges over their
    control subjects. Its replies (auth answers included) go out as responses only."""
    publishes = f"KV_{subjects.KV_PUBLISHES}"
    return Permissions(
        publish_allow=_unique(
            (
                f"{subjects.CONTROL_ROOT}.*",
                *kv_writer(subjects.KV_EDGES),
                *stream_reader(publishes),
                *durable_consumer(subjects.EVENTS_STREAM, subjects.CONSUMER_TOKEN_REPLACES),
            )
        ),
        subscribe_allow=(
            subjects.AUTH_CALLOUT,
            subjects.request_wildcard(subjects.SERVICE_TOKEN),
            subjects.edge_wildcard(subjects.EDGE_HEARTBEAT),
            subjects.edge_wildcard(subjects.EDGE_RENEW),
            *_inbox(user),
        ),
        allow_responses=True,
    )


SYSTEM_USER = "token-sys"


def token_system(user: str = SYSTEM_USER) -> Permissions:
    """The token service's user in the system account: find an edge's connections on every
    server (CONNZ) and close them (KICK). Nothing else of the system account."""
    return Permissions(
        publish_allow=(subjects.SYS_CONNZ, subjects.SYS_KICK_ANY),
        subscribe_allow=_inbox(user),
    )


def edge(name: str) -> Permissions:
    """An edge, as the auth callout issues it: its own subjects, its control subject and its
    inbox. Publishing into a stream needs no JetStream API: the ack comes to its inbox."""
    return Permissions(
        publish_allow=subjects.edge_publish_allow(name),
        subscribe_allow=subjects.edge_subscribe_allow(name),
    )


def log_collector(user: str = "log-collector") -> Permissions:
    """Takes pages from its durable consumer on the pages stream, appends them and the
    edges' watermarks to the pipeline log, reads watermarks back and pages ahead (direct
    get). It may
    not create, change or delete a stream, write pages, or read any bucket."""
    return Permissions(
        publish_allow=_unique(
            (
                *durable_consumer(subjects.PAGES_STREAM, subjects.CONSUMER_LOG_COLLECTOR),
                f"{subjects.LOGS_ROOT}.>",
                f"{subjects.WATERMARK_ROOT}.>",
                *stream_reader(subjects.LOGS_STREAM),
                # reads ahead on an edge's subject for a page stored behind its successors
                _api("DIRECT", "GET", subjects.PAGES_STREAM),
            )
        ),
        subscribe_allow=_inbox(user),
    )


def dashboard(user: str = "dashboard") -> Permissions:
    """Reads what it shows and nothing else: the edges and publishes buckets (get, watch)
    and the pipeline log (ordered reads). It writes no bucket, stream or subject."""
    buckets = (f"KV_{subjects.KV_EDGES}", f"KV_{subjects.KV_PUBLISHES}")
    return Permissions(
        publish_allow=_unique(
            (
                *(p for s in buckets for p in stream_reader(s)),
                *(p for s in buckets for p in ordered_reader(s)),
                *stream_reader(subjects.LOGS_STREAM),
                *ordered_reader(subjects.LOGS_STREAM),
            )
        ),
        subscribe_allow=_inbox(user),
    )


SERVICES = {
    "publish": publish_service,
    "registry-push": registry_push_service,
    "token": token_service,
    "log-collector": log_collector,
    "dashboard": dashboard,
}


def service(name: str) -> Permissions:
    return SERVICES[name](name)
