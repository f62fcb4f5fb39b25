"""The edge's identity on disk: its own nkey key pair, kept in the persistent dir.

On first join the edge makes a user key pair, keeps the seed in ``identity.json`` (mode 0600,
written atomically) and never sends it: it proves itself by signing. Later starts read the
file and need no bundle. ``plan_connect`` decides, from that file and the bundle, what the
agent does at start (serve without Ops, reuse the key, or join with a token); it is pure but
for the fresh key pair, whose maker is a parameter.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from edgepub.shared import keys, logs
from edgepub.shared.bundle import EdgeBundle, join_token_sha256, opscenter_url
from edgepub.shared.edge_messages import EdgeName
from edgepub.shared.errors import ConfigError
from edgepub.shared.stack_file import write_private

IDENTITY_FILE = "identity.json"
_USER_SEED = re.compile(r"SU[A-D][A-Z2-7]{55}")  # an nkey user seed: the prefix fixes [2]


def _new_bundle(name: str | None = None) -> str:
    shown = "name" if name is None else repr(name)
    return f"remove_edge({shown}), then add_edge({shown}) for a bundle with a new join token"


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    edge_name: EdgeName
    public_key: str
    seed: str  # secret: never in a repr, a log line or a message
    # The token the key pair was made to present: a crash mid-join retries with the same key.
    pending_token_sha256: str = ""
    joined_token_sha256: str = ""  # "" until the join succeeds
    joined: bool = False
    joined_at: datetime | None = None
    credential_expires_at: datetime | None = None
    server_url: str  # where it joins (and reconnects)

    def __repr__(self) -> str:
        return (
            f"Identity(edge_name={self.edge_name!r}, public_key={self.public_key!r}, "
            f"seed=<hidden>, joined={self.joined}, joined_at={self.joined_at!r}, "
            f"credential_expires_at={self.credential_expires_at!r}, "
            f"server_url={self.server_url!r})"
        )


Action = Literal["serve_only", "reuse", "join"]


class ConnectPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What the agent does at start. ``identity`` is what to keep in the persistent dir
    before connecting (a fresh key pair is saved before its token is presented)."""

    action: Action  # serve_only: no link to Ops (serve without observability)
    edge_name: str | None = None
    seed: str | None = None
    join_token: str | None = None  # present it: a join; None: connect with the key alone
    first_join: bool = False
    server_url: str | None = None
    identity: Identity | None = None

    def __repr__(self) -> str:
        return (
            f"ConnectPlan(action={self.action!r}, edge_name={self.edge_name!r}, "
            f"first_join={self.first_join}, server_url={self.server_url!r})"
        )


SERVE_ONLY = ConnectPlan(action="serve_only")
_decoder = msgspec.json.Decoder(Identity)


def identity_path(persist_dir: Path) -> Path:
    return persist_dir / IDENTITY_FILE


def _corrupt(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: {what}; move it away and join again: {_new_bundle()}")


def _check(path: Path, identity: Identity) -> Identity:
    if not _USER_SEED.fullmatch(identity.seed):
        raise _corrupt(path, "its seed is not an nkey user seed")
    if keys.public_key(identity.seed) != identity.public_key:
        raise _corrupt(path, "its public_key is not its seed's")
    return identity


def load_identity(persist_dir: Path) -> Identity | None:
    """The identity kept in ``persist_dir``, or None before the first join."""
    path = identity_path(persist_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _corrupt(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        identity = _check(path, _decoder.decode(data))
    except msgspec.DecodeError as exc:  # the message names a field, never a value
        raise _corrupt(path, f"is not an edge identity ({exc})") from None
    logs.register_secret(identity.seed)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:  # copied with loose bits: the seed is secret
        os.chmod(path, 0o600)
    return identity


def save_identity(persist_dir: Path, identity: Identity) -> Path:
    """Write ``identity.json`` atomically, mode 0600: a reader sees the old file or the new."""
    logs.register_secret(identity.seed)
    path = identity_path(persist_dir)
    write_private(path, msgspec.json.format(msgspec.json.encode(identity)))
    return path


def fresh_seed() -> str:
    """A new user key pair's seed, registered for redaction before anyone can log it."""
    seed = keys.new_seed("user")
    logs.register_secret(seed)
    return seed


def _reuse(identity: Identity, bundle: EdgeBundle | None) -> ConnectPlan:
    server_url = identity.server_url if bundle is None else opscenter_url(bundle.opscenter_host)
    kept = msgspec.structs.replace(identity, server_url=server_url)
    return ConnectPlan(
        action="reuse",
        edge_name=identity.edge_name,
        seed=identity.seed,
        server_url=server_url,
        identity=kept,
    )


def _join(bundle: EdgeBundle, token: str, seed: str) -> ConnectPlan:
    server_url = opscenter_url(bundle.opscenter_host)
    identity = Identity(
        edge_name=bundle.edge_name,
        public_key=keys.public_key(seed),
        seed=seed,
        pending_token_sha256=join_token_sha256(token),
        server_url=server_url,
    )
    return ConnectPlan(
        action="join",
        edge_name=bundle.edge_name,
        seed=seed,
        join_token=token,
        first_join=True,
        server_url=server_url,
        identity=identity,
    )


def _without_token(identity: Identity | None, bundle: EdgeBundle) -> ConnectPlan:
    """A replaced location's bundle (omitted_for_replace): only a kept key can connect."""
    if identity is None:
        raise ConfigError(
            f"EDGE_BUNDLE is for edge {bundle.edge_name!r}, which already joined "
            "(JOIN_TOKEN=omitted_for_replace), but the persistent dir holds no identity "
            f"({IDENTITY_FILE}; was /persist lost?): {_new_bundle(bundle.edge_name)}"
        )
    if identity.edge_name != bundle.edge_name:
        raise ConfigError(
            f"EDGE_BUNDLE is for edge {bundle.edge_name!r} (JOIN_TOKEN=omitted_for_replace) "
            f"but the persistent dir holds edge {identity.edge_name!r}'s identity: mount "
            f"{bundle.edge_name!r}'s persistent volume, or {_new_bundle(bundle.edge_name)}"
        )
    return _reuse(identity, bundle)


def plan_connect(
    identity: Identity | None,
    bundle: EdgeBundle | None,
    new_seed: Callable[[], str] = fresh_seed,
) -> ConnectPlan:
    """What to do at start, from the kept identity and the bundle (either may be absent).

    - no bundle: reuse the kept key, or serve without a link to Ops if there is none;
    - JOIN_TOKEN=omitted_for_replace: reuse the kept key of this edge (else a ConfigError);
    - the token this edge joined with: reuse the key (a restart with the same bundle);
    - the token of an unfinished join (crashed before the answer): retry with the same key;
    - any other token (a re-added edge, another edge): join with it and a fresh key pair.
    """
    if bundle is None:
        return SERVE_ONLY if identity is None else _reuse(identity, None)
    token = bundle.join_token
    if token is None:
        return _without_token(identity, bundle)
    sha = join_token_sha256(token)
    if identity is not None and identity.edge_name == bundle.edge_name:
        if identity.joined and identity.joined_token_sha256 == sha:
            return _reuse(identity, bundle)
        if not identity.joined and identity.pending_token_sha256 == sha:
            return _join(bundle, token, identity.seed)
    return _join(bundle, token, new_seed())


def joined(identity: Identity, *, at: datetime, credential_expires_at: datetime) -> Identity:
    """The identity after Ops accepted its join: the pending token is the joined one."""
    return msgspec.structs.replace(
        identity,
        joined=True,
        joined_token_sha256=identity.pending_token_sha256,
        joined_at=at,
        credential_expires_at=credential_expires_at,
    )


def renewed(identity: Identity, *, credential_expires_at: datetime) -> Identity:
    return msgspec.structs.replace(identity, credential_expires_at=credential_expires_at)
