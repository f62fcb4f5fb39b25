"""Every subject, stream, bucket and header name edgepub uses: one place, one name each.

Requests from SDK/CLI users carry the caller's NATS user in the subject
(``edgepub.req.<user>.<verb>``). The broker only lets a user publish under its own
token, so a service can trust it as ``created_by`` without trusting message content.
"""

from __future__ import annotations

import re

PREFIX = "edgepub"

# --- request/reply (SDK/CLI -> a service) -------------------------------------------------
# ``edgepub.req.<user>.<service>.<verb>``: each service subscribes to its own verbs only, so
# services never race for a request, and the broker lets a user publish only under its name.
REQUEST_ROOT = f"{PREFIX}.req"

SERVICE_PUBLISH = "publish"
SERVICE_TOKEN = "token"

# A verb constant is "<service>.<verb>": the service that answers it comes first.
VERB_MODEL_REGISTER = f"{SERVICE_PUBLISH}.model.register"
VERB_MODEL_UPLOAD = f"{SERVICE_PUBLISH}.model.upload"
VERB_MODEL_GET = f"{SERVICE_PUBLISH}.model.get"
VERB_PIPELINE_BUILD = f"{SERVICE_PUBLISH}.pipeline.build"
VERB_PUBLISH_CREATE = f"{SERVICE_PUBLISH}.publish.create"
VERB_PUBLISH_GET = f"{SERVICE_PUBLISH}.publish.get"
VERB_PUBLISH_LIST = f"{SERVICE_PUBLISH}.publish.list"
# The token service owns edges: adding one makes its join token, removing one revokes it.
VERB_EDGE_ADD = f"{SERVICE_TOKEN}.edge.add"
VERB_EDGE_REMOVE = f"{SERVICE_TOKEN}.edge.remove"
VERB_EDGE_LIST = f"{SERVICE_TOKEN}.edge.list"
# Moves the edges of the publishes a publish replaces onto it (idempotent; also done by the
# token service when it sees the replacing publish become Published).
VERB_EDGE_MOVE = f"{SERVICE_TOKEN}.edge.move"
VERBS = (
    VERB_MODEL_REGISTER,
    VERB_MODEL_UPLOAD,
    VERB_MODEL_GET,
    VERB_PIPELINE_BUILD,
    VERB_PUBLISH_CREATE,
    VERB_PUBLISH_GET,
    VERB_PUBLISH_LIST,
    VERB_EDGE_ADD,
    VERB_EDGE_REMOVE,
    VERB_EDGE_LIST,
    VERB_EDGE_MOVE,
)


def service_of(verb: str) -> str:
    """The service that answers ``verb`` ("publish.model.get" -> "publish")."""
    return verb.split(".", 1)[0]


def request(user: str, verb: str) -> str:
    """The subject a user sends ``verb`` requests on."""
    return f"{REQUEST_ROOT}.{token(user)}.{verb}"


def request_wildcard(service: str) -> str:
    """Every request any user sends to ``service``."""
    return f"{REQUEST_ROOT}.*.{token(service)}.>"


def request_queue(service: str) -> str:
    """The queue group a service's replicas share, so each request is answered once."""
    return f"{token(service)}-service"


def parse_request(subject: str) -> tuple[str, str]:
    """``edgepub.req.<user>.<service>.<verb...>`` -> (user, "<service>.<verb...>")."""
    parts = subject.split(".")
    if len(parts) < 5 or ".".join(parts[:2]) != REQUEST_ROOT:
        raise ValueError(f"not an edgepub request subject: {subject!r}")
    return parts[2], ".".join(parts[3:])


# --- inboxes -------------------------------------------------------------------------------
INBOX_ROOT = "_INBOX"


def inbox_prefix(user: str) -> str:
    """A user's private inbox prefix (nats-py's ``inbox_prefix``); the broker lets each user
    subscribe under its own prefix only, so nobody reads another's replies."""
    return f"{INBOX_ROOT}.{token(user)}"


# --- edges -------------------------------------------------------------------------------
# An edge is a NATS user whose name is the edge's name (issued by the auth callout). It may
# publish under ``edgepub.edge.<edge>.>`` only and subscribe to its own control subject and
# its own inbox only: the broker, not the services, keeps one edge out of another's affairs.
EDGE_ROOT = f"{PREFIX}.edge"
CONTROL_ROOT = f"{PREFIX}.control"
EDGE_HEARTBEAT = "heartbeat"  # request: status in, the pipeline it should run out
EDGE_RENEW = "renew"  # request: extend the credential while in contact
EDGE_LOGS = "logs"  # a page of inference log rows (or a gap record), into PAGES_STREAM


def edge_subject(edge: str, kind: str) -> str:
    """What edge ``edge`` sends to Ops: ``edgepub.edge.<edge>.<kind>``."""
    return f"{EDGE_ROOT}.{token(edge)}.{token(kind)}"


def edge_wildcard(kind: str) -> str:
    """``kind`` messages from every edge (the token service's subscriptions)."""
    return f"{EDGE_ROOT}.*.{token(kind)}"


def edge_of(subject: str) -> str:
    """The edge an ``edgepub.edge.<edge>.<kind>`` subject came from (the broker let only
    that edge publish it)."""
    parts = subject.split(".")
    if len(parts) < 4 or ".".join(parts[:2]) != EDGE_ROOT:
        raise ValueError(f"not an edge subject: {subject!r}")
    return token(parts[2])


def control(edge: str) -> str:
    """Where Ops tells one edge about a new pipeline or its revocation."""
    return f"{CONTROL_ROOT}.{token(edge)}"


def edge_publish_allow(edge: str) -> tuple[str, ...]:
    return (f"{EDGE_ROOT}.{token(edge)}.>",)


def edge_subscribe_allow(edge: str) -> tuple[str, ...]:
    return (control(edge), f"{inbox_prefix(edge)}.>")


# NATS auth callout: the server asks here who a connecting client is (nats-server >= 2.10).
AUTH_CALLOUT = "$SYS.REQ.USER.AUTH"
AUTH_QUEUE = "edgepub-auth"
# Accounts of the embedded stack: everything edgepub runs lives in APP_ACCOUNT; edges live in
# EDGE_ACCOUNT (placed there by the callout), which imports only the edge subjects as a
# service and the control subjects as a stream. A reply subject an edge names is then mapped
# by the server and answered back into EDGE_ACCOUNT, where no stream, bucket or JetStream API
# exists: an edge cannot make a service or JetStream's publish ack write into Ops' state.
# SYSTEM_ACCOUNT holds the token service's kick/connz user.
APP_ACCOUNT = "EDGEPUB"
EDGE_ACCOUNT = "EDGES"
SYSTEM_ACCOUNT = "SYS"
SYS_CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"
SYS_KICK_ANY = "$SYS.REQ.SERVER.*.KICK"


def sys_kick(server_id: str) -> str:
    return f"$SYS.REQ.SERVER.{token(server_id)}.KICK"


# --- work stream: events between services -------------------------------------------------
WORK_STREAM = "EDGEPUB_WORK"
WORK_SUBJECTS = f"{PREFIX}.work.>"
PUBLISH_REQUESTED = f"{PREFIX}.work.publish.requested"
PUBLISH_PUSH_STARTED = f"{PREFIX}.work.publish.push_started"
PUBLISH_PUSHED = f"{PREFIX}.work.publish.pushed"
PUBLISH_PUSH_FAILED = f"{PREFIX}.work.publish.push_failed"
PUBLISH_PUSHED_OR_FAILED = (PUBLISH_PUSH_STARTED, PUBLISH_PUSHED, PUBLISH_PUSH_FAILED)

# --- events stream: state changes users watch ---------------------------------------------
EVENTS_STREAM = "EDGEPUB_EVENTS"
EVENTS_SUBJECTS = f"{PREFIX}.events.>"


PUBLISH_EVENTS_ALL = f"{PREFIX}.events.publish.>"


def publish_events(publish_id: int) -> str:
    """Every state a publish passes through is published here (full record each time)."""
    return f"{PREFIX}.events.publish.{publish_id}"


# --- inference logs -------------------------------------------------------------------------
# Edges publish pages on ``edgepub.edge.<edge>.logs`` into PAGES_STREAM (work queue: a page
# leaves once the collector appended it). The collector appends them to LOGS_STREAM on
# ``edgepub.logs.<workspace>.<pipeline>.<partition>`` (partition = the edge's authenticated
# name, from the page's subject), each append checked against the edge's watermark message
# on ``edgepub.wm.<edge>`` in the same stream.
PAGES_STREAM = "EDGEPUB_EDGE_PAGES"
PAGES_SUBJECTS = f"{EDGE_ROOT}.*.{EDGE_LOGS}"
LOGS_STREAM = "EDGEPUB_LOGS"
LOGS_ROOT = f"{PREFIX}.logs"
WATERMARK_ROOT = f"{PREFIX}.wm"
CONSUMER_LOG_COLLECTOR = "log-collector"


def pipeline_log(workspace_id: int, pipeline: str, partition: str) -> str:
    """Where one edge's rows of one pipeline are filed at Ops."""
    return f"{LOGS_ROOT}.{workspace_id}.{token(pipeline)}.{token(partition)}"


def pipeline_logs(workspace_id: int, pipeline: str, partition: str | None = None) -> str:
    """A pipeline's log, every edge's (or one partition's): what readers filter on."""
    return f"{LOGS_ROOT}.{workspace_id}.{token(pipeline)}.{token(partition) if partition else '*'}"


def watermark(edge: str) -> str:
    """The last edge sequence Ops holds for ``edge`` (one rolled-up message per edge)."""
    return f"{WATERMARK_ROOT}.{token(edge)}"


# --- durable consumers ----------------------------------------------------------------------
CONSUMER_REGISTRY_PUSH = "registry-push"
CONSUMER_PUBLISH_OUTCOMES = "publish-outcomes"
CONSUMER_TOKEN_REPLACES = "token-replaces"  # the token service follows publish records

# --- KV buckets and the object store -------------------------------------------------------
KV_MODELS = "edgepub_models"
KV_PIPELINES = "edgepub_pipelines"
KV_PIPELINE_VERSIONS = "edgepub_pipeline_versions"
KV_PUBLISHES = "edgepub_publishes"
KV_REQUESTS = "edgepub_requests"
KV_COUNTERS = "edgepub_counters"
KV_PUBLISH_SERVICE = (  # the buckets the publish service owns
    KV_MODELS,
    KV_PIPELINES,
    KV_PIPELINE_VERSIONS,
    KV_PUBLISHES,
    KV_REQUESTS,
    KV_COUNTERS,
)
# Edges, their credentials and what they last reported: the token service writes it (the
# publish service creates it with the other buckets, as it creates every stream).
KV_EDGES = "edgepub_edges"
OBJECT_STORE_MODELS = "edgepub_model_files"  # verified model bytes; services write it
# Where SDK users upload model bytes; the publish service verifies each upload while copying
# it into OBJECT_STORE_MODELS, so no user can overwrite the bytes a publish reads.
OBJECT_STORE_UPLOADS = "edgepub_model_uploads"

# --- headers -------------------------------------------------------------------------------
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_ERROR_CODE = "Edgepub-Error"
# on control messages, naming the edge: set only by the token service's own publishes; a
# message on a control subject without it is a reply that some edge pointed there
HEADER_CONTROL = "Edgepub-Control"
# on pages and on the pipeline log's messages
HEADER_FIRST_SEQ = "Edgepub-First-Seq"  # the first edge sequence number the page holds
HEADER_LAST_SEQ = "Edgepub-Last-Seq"
HEADER_ROWS = "Edgepub-Rows"  # inference rows in the page (gap lines not counted)
HEADER_PIPELINE = "Edgepub-Pipeline"  # the pipeline the rows belong to (a page holds one)
HEADER_WORKSPACE = "Edgepub-Workspace"
HEADER_PARTITION = "Edgepub-Partition"  # set by the collector: the edge's name

_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def token(value: str) -> str:
    """Refuse anything that would change a subject's shape (dots, wildcards, spaces)."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} cannot be a subject token: use letters, digits, '-', '_'")
    return value


def model_key(name: str, version: str) -> str:
    return f"{token(name)}.{token(version)}"
