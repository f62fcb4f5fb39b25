"""Config text for the embedded stack's servers, as pure functions over plain data.

The stack supervisor and the test fixtures both render their nats-server and registry
configs here, so what the tests run is what ``edgepub up`` runs.
"""

from __future__ import annotations

import json
import secrets

import bcrypt
import msgspec

from edgepub.shared import keys, subjects, xkeys

from . import permissions
from .permissions import Permissions

SDK_USER = "admin"
REGISTRY_USER = "edgepub"
# One NATS user per service; the name is also the value of EDGEPUB_NATS_USER it gets.
SERVICE_USERS = ("publish", "registry-push", "token", "log-collector", "dashboard")

MAX_PAYLOAD = 8 * 1024 * 1024
MAX_FILE_STORE = 10 * 1024**3
# The registry checks bcrypt on EVERY request. Cost 12 measured ~190 ms per request, cost 5
# ~2 ms. The password is a generated 32-byte random token, so no work factor makes guessing
# it any harder in practice, while cost 12 would add about a second to every publish.
HTPASSWD_COST = 5


class UserSpec(msgspec.Struct, frozen=True, kw_only=True):
    password: str
    permissions: Permissions = Permissions()


class StackCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """Every secret the embedded stack starts with; persisted once, reused on later starts."""

    nats_users: dict[str, str]  # user -> password (the services' users and the SDK user)
    sdk_user: str = SDK_USER
    registry_username: str = REGISTRY_USER
    registry_password: str
    registry_http_secret: str
    # The auth callout's issuer (an account nkey): the token service signs edges' user JWTs
    # with it, the server trusts its public key. Empty in files from before edges existed.
    auth_issuer_seed: str = ""
    # The token service's nkey user in the system account (CONNZ/KICK to cut an edge off).
    system_user_seed: str = ""
    # What a cluster's nodes log in to each other's route listeners with.
    route_password: str = ""
    # The auth callout's curve key (SX...): the server seals each authorization request to
    # its public key and opens the token service's sealed answers, so neither the join token
    # nor a user JWT is ever in clear on the bus or in nats-server's trace.
    auth_xkey_seed: str = ""

    @property
    def complete(self) -> bool:
        keys = (
            self.auth_issuer_seed
            and self.system_user_seed
            and self.route_password
            and self.auth_xkey_seed
        )
        return bool(keys) and all(u in self.nats_users for u in SERVICE_USERS)


class CalloutSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The auth callout: who signs the answers, and the system account's one user.

    Every connect that is not one of the static users goes to the token service on
    ``$SYS.REQ.USER.AUTH``. The system user is an nkey user; a server with an nkey user
    configured sends every client a nonce, which is what an edge signs to prove its key.
    """

    issuer_public_key: str
    xkey_public_key: str  # the token service's curve key (X...): requests are sealed to it
    system_user_public_key: str
    system_permissions: Permissions = Permissions()


def sdk_permissions(user: str = SDK_USER) -> Permissions:
    return permissions.sdk(user)


def generate_credentials(sdk_user: str = SDK_USER) -> StackCredentials:
    users = [*SERVICE_USERS, subjects.token(sdk_user)]
    return StackCredentials(
        nats_users={u: secrets.token_urlsafe(32) for u in users},
        sdk_user=sdk_user,
        registry_password=secrets.token_urlsafe(32),
        registry_http_secret=secrets.token_urlsafe(32),
        auth_issuer_seed=keys.new_seed("account"),
        system_user_seed=keys.new_seed("user"),
        route_password=secrets.token_urlsafe(32),
        auth_xkey_seed=xkeys.new_seed(),
    )


def completed(creds: StackCredentials) -> StackCredentials:
    """``creds`` with the keys a file from an older version lacks."""
    if creds.complete:
        return creds
    return msgspec.structs.replace(
        creds,
        # a service added since (the dashboard): its user, the others' passwords kept
        nats_users={u: secrets.token_urlsafe(32) for u in SERVICE_USERS} | creds.nats_users,
        auth_issuer_seed=creds.auth_issuer_seed or keys.new_seed("account"),
        system_user_seed=creds.system_user_seed or keys.new_seed("user"),
        route_password=creds.route_password or secrets.token_urlsafe(32),
        auth_xkey_seed=creds.auth_xkey_seed or xkeys.new_seed(),
    )


def callout_spec(creds: StackCredentials) -> CalloutSpec:
    return CalloutSpec(
        issuer_public_key=keys.public_key(creds.auth_issuer_seed),
        xkey_public_key=xkeys.public_key(creds.auth_xkey_seed),
        system_user_public_key=keys.public_key(creds.system_user_seed),
        system_permissions=permissions.token_system(),
    )


def nats_users(creds: StackCredentials) -> dict[str, UserSpec]:
    """The NATS users of a stack: each service's, plus the SDK user's narrower one."""
    out: dict[str, UserSpec] = {}
    for user, password in creds.nats_users.items():
        perms = permissions.sdk(user) if user == creds.sdk_user else permissions.service(user)
        out[user] = UserSpec(password=password, permissions=perms)
    return out


def quote(value: str) -> str:
    """A double-quoted string for nats-server's config, or ValueError if it cannot be one."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"control character in config value {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _subject_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(quote(s) for s in items) + "]"


def _direction(name: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> list[str]:
    # An empty allow list would mean "no restriction" to nats-server: deny everything instead.
    parts = [f"allow: {_subject_list(allow)}"] if allow else []
    if deny or not allow:
        parts.append(f"deny: {_subject_list(deny or ('>',))}")
    return [f"      {name}: {{ {', '.join(parts)} }}"]


def _user_block(identity: str, p: Permissions) -> list[str]:
    """One user: ``identity`` is ``user: "...", password: "..."`` or ``nkey: "..."``."""
    lines = [
        f"  {{ {identity}",
        "    permissions: {",
        *_direction("publish", p.publish_allow, p.publish_deny),
        *_direction("subscribe", p.subscribe_allow, p.subscribe_deny),
    ]
    if p.allow_responses:
        lines.append("      allow_responses: true")
    lines += ["    }", "  }"]
    return lines


def _password_user(user: str, spec: UserSpec) -> list[str]:
    return _user_block(f"user: {quote(user)}, password: {quote(spec.password)}", spec.permissions)


class WebsocketSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The edge-facing listener: NATS over WebSocket (``ws://``, or ``wss://`` with a
    certificate; behind an HTTPS reverse proxy it is ``wss://<domain>/edge``)."""

    host: str
    port: int
    cert_file: str | None = None  # both set: TLS on the listener itself
    key_file: str | None = None


def _websocket(ws: WebsocketSpec) -> list[str]:
    lines = ["websocket {", f"  listen: {quote(f'{ws.host}:{ws.port}')}"]
    if ws.cert_file and ws.key_file:
        lines += [
            "  tls {",
            f"    cert_file: {quote(ws.cert_file)}",
            f"    key_file: {quote(ws.key_file)}",
            "  }",
        ]
    else:  # plain: on loopback, or behind a proxy that terminates TLS
        lines.append("  no_tls: true")
    # edges come through proxies and load balancers: no Origin check, compression on
    lines += ["  compression: true", "}"]
    return lines


ROUTE_USER = "route"


class ClusterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """This node's place in a JetStream cluster: its route listener and every other
    node's (routes log in with ``password``)."""

    name: str
    host: str
    port: int
    peers: tuple[tuple[str, int], ...]  # the other nodes' route listeners
    password: str


def _cluster(cluster: ClusterSpec) -> list[str]:
    routes = [
        quote(f"nats-route://{ROUTE_USER}:{cluster.password}@{host}:{port}")
        for host, port in cluster.peers
    ]
    return [
        "cluster {",
        f"  name: {quote(cluster.name)}",
        f"  listen: {quote(f'{cluster.host}:{cluster.port}')}",
        "  authorization {",
        f"    user: {quote(ROUTE_USER)}",
        f"    password: {quote(cluster.password)}",
        "  }",
        f"  routes: [{', '.join(routes)}]",
        # clients hear of no other node: nats-py would dial a WebSocket node's URL with
        # nats://; every client has the list (an edge's, or the load balancer in front)
        "  no_advertise: true",
        "}",
    ]


def _edge_exchange() -> tuple[list[str], list[str]]:
    """What the app account exports to the edge account, and the edge account's imports:
    edges' requests and pages as a service (their replies come back mapped, so a reply
    subject an edge names can only ever be answered inside the edge account), Ops' control
    messages as a stream. Nothing else of the app account is visible to an edge."""
    app = subjects.APP_ACCOUNT
    edge, control = quote(f"{subjects.EDGE_ROOT}.>"), quote(f"{subjects.CONTROL_ROOT}.>")
    exports = [
        "    exports = [",
        f"      {{ service: {edge}, response_type: singleton }}",
        f"      {{ stream: {control} }}",
        "    ]",
    ]
    imports = [
        "    imports = [",
        f"      {{ service: {{ account: {app}, subject: {edge} }} }}",
        f"      {{ stream: {{ account: {app}, subject: {control} }} }}",
        "    ]",
    ]
    return exports, imports


def _accounts(users: dict[str, UserSpec], callout: CalloutSpec | None) -> list[str]:
    app, system = subjects.APP_ACCOUNT, subjects.SYSTEM_ACCOUNT
    lines = ["accounts {", f"  {app} {{", "    jetstream: enabled", "    users = ["]
    for user, spec in sorted(users.items()):
        lines += ["    " + line for line in _password_user(user, spec)]
    lines.append("    ]")
    sys_users: list[str] = []
    if callout is not None:
        exports, imports = _edge_exchange()
        lines += [*exports, "  }", f"  {subjects.EDGE_ACCOUNT} {{", *imports]
        identity = f"nkey: {quote(callout.system_user_public_key)}"
        sys_users = ["    " + line for line in _user_block(identity, callout.system_permissions)]
    lines += ["  }", f"  {system} {{", "    users = [", *sys_users, "    ]", "  }", "}"]
    lines.append(f"system_account: {system}")
    return lines


def _callout(users: dict[str, UserSpec], callout: CalloutSpec) -> list[str]:
    # Static users (services, the SDK user) skip the callout; everyone else is an edge
    # that the token service answers for, placing it in the edge account.
    # The system user is known by its nkey; it bypasses the callout like the static users.
    auth_users = ", ".join(quote(u) for u in [*sorted(users), callout.system_user_public_key])
    return [
        "authorization {",
        "  timeout: 2",
        "  auth_callout {",
        f"    issuer: {quote(callout.issuer_public_key)}",
        f"    xkey: {quote(callout.xkey_public_key)}",
        f"    account: {subjects.APP_ACCOUNT}",
        f"    auth_users: [{auth_users}]",
        "  }",
        "}",
    ]


def nats_config(
    *,
    host: str,
    port: int,
    store_dir: str,
    users: dict[str, UserSpec],
    max_payload: int = MAX_PAYLOAD,
    max_file_store: int = MAX_FILE_STORE,
    http_port: int | None = None,
    server_name: str = "edgepub",
    callout: CalloutSpec | None = None,
    websocket: WebsocketSpec | None = None,
    cluster: ClusterSpec | None = None,
) -> str:
    """nats-server config: JetStream on, authentication always on (no anonymous user).

    Every static user lives in the app account; with ``callout``, any other connect is an
    edge asking the token service to vouch for it. ``websocket`` adds the edge listener,
    ``cluster`` the routes to the other nodes of a JetStream cluster.
    """
    if not users:
        raise ValueError("a NATS config needs at least one user: the bus is never open")
    lines = [
        "# Generated by edgepub; edits are overwritten on the next start.",
        f"server_name: {quote(server_name)}",
        f"listen: {quote(f'{host}:{port}')}",
        f"max_payload: {max_payload}",
    ]
    if http_port is not None:
        lines.append(f"http: {quote(f'{host}:{http_port}')}")
    if websocket is not None:
        lines += _websocket(websocket)
    if cluster is not None:
        lines += _cluster(cluster)
    lines += [
        "jetstream {",
        f"  store_dir: {quote(store_dir)}",
        f"  max_file_store: {max_file_store}",
        "}",
        *_accounts(users, callout),
    ]
    if callout is not None:
        lines += _callout(users, callout)
    lines.append("")
    return "\n".join(lines)


def _yaml(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(value)


def registry_config(
    *, host: str, port: int, root_dir: str, htpasswd_path: str, http_secret: str
) -> str:
    """Config for CNCF distribution 2.8 (Debian's docker-registry) with htpasswd auth."""
    return "\n".join(
        [
            "# Generated by edgepub; edits are overwritten on the next start.",
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {_yaml(root_dir)}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {_yaml(f'{host}:{port}')}",
            f"  secret: {_yaml(http_secret)}",
            "auth:",
            "  htpasswd:",
            "    realm: edgepub",
            f"    path: {_yaml(htpasswd_path)}",
            "health:",
            "  storagedriver:",
            "    enabled: true",
            "    interval: 10s",
            "    threshold: 3",
            "",
        ]
    )


def htpasswd_line(user: str, password: str, cost: int = HTPASSWD_COST) -> str:
    """One htpasswd line (bcrypt); see HTPASSWD_COST for why the cost is low."""
    if ":" in user or "\n" in user:
        raise ValueError(f"htpasswd user {user!r} cannot contain ':' or a newline")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()
    return f"{user}:{hashed}\n"
