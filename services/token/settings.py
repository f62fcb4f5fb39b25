"""The token service's configuration: every period is a setting, so tests need not wait days."""

from __future__ import annotations

import msgspec

from edgepub.shared import keys, logs, xkeys
from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env

DAY_S = 86_400.0


class TokenSettings(msgspec.Struct, frozen=True, kw_only=True):
    issuer_seed: str  # account nkey: signs the edges' user JWTs (secret)
    system_seed: str  # user nkey in the system account: CONNZ/KICK (secret)
    opscenter_host: str  # OPSCENTER_HOST in bundles: where edges reach Ops
    # curve key (SX...): opens the server's sealed authorization requests, seals the answers
    # (secret); without it every request is refused
    xkey_seed: str = ""
    trust_domain: str = "edgepub.local"  # spiffe://<trust domain>/ns/deployments/edge/<id>
    join_token_ttl_s: float = DAY_S  # the seed: a JOIN_TOKEN is valid 24 h
    credential_idle_s: float = 7 * DAY_S  # the seed: contact at least once every 7 days
    session_ttl_s: float = 3600.0  # a user JWT's exp: the backstop behind kick + refusal
    offline_after_s: float = 30.0  # no heartbeat for this long: offline (3 x 10 s beats)
    # CONNZ answers are gathered until none came for this long after the last: every
    # server of a cluster answers within a few ms of the others
    kick_quiet_s: float = 0.05

    def __repr__(self) -> str:
        return f"TokenSettings(opscenter_host={self.opscenter_host!r}, ...)"

    @property
    def issuer_public_key(self) -> str:
        return keys.public_key(self.issuer_seed)

    @classmethod
    def from_env(cls, env: Env | None = None) -> TokenSettings:
        env = env or Env()
        issuer = env.text("EDGEPUB_AUTH_ISSUER_SEED")
        system = env.text("EDGEPUB_SYSTEM_USER_SEED")
        xkey = env.text("EDGEPUB_AUTH_XKEY_SEED")
        for name, seed, prefix in (
            ("EDGEPUB_AUTH_ISSUER_SEED", issuer, "SA"),
            ("EDGEPUB_SYSTEM_USER_SEED", system, "SU"),
            ("EDGEPUB_AUTH_XKEY_SEED", xkey, "SX"),
        ):
            logs.register_secret(seed)
            if not seed.startswith(prefix):
                raise ConfigError(f"{name} is not an nkey seed starting {prefix} (value hidden)")
        try:
            xkeys.public_key(xkey)
        except xkeys.XKeyError as exc:
            raise ConfigError(
                f"EDGEPUB_AUTH_XKEY_SEED is not a curve seed ({exc}; value hidden): "
                "set the auth_xkey_seed of the stack's credentials (nk -gen curve makes one)"
            ) from None
        settings = cls(
            issuer_seed=issuer,
            xkey_seed=xkey,
            system_seed=system,
            opscenter_host=env.text("EDGEPUB_OPSCENTER_HOST"),
            trust_domain=env.text("EDGEPUB_TRUST_DOMAIN", "edgepub.local"),
            join_token_ttl_s=env.number("EDGEPUB_JOIN_TOKEN_TTL_S", DAY_S),
            credential_idle_s=env.number("EDGEPUB_CREDENTIAL_IDLE_S", 7 * DAY_S),
            session_ttl_s=env.number("EDGEPUB_EDGE_SESSION_TTL_S", 3600.0),
            offline_after_s=env.number("EDGEPUB_EDGE_OFFLINE_AFTER_S", 30.0),
        )
        for name, value in (
            ("EDGEPUB_JOIN_TOKEN_TTL_S", settings.join_token_ttl_s),
            ("EDGEPUB_CREDENTIAL_IDLE_S", settings.credential_idle_s),
            ("EDGEPUB_EDGE_SESSION_TTL_S", settings.session_ttl_s),
            ("EDGEPUB_EDGE_OFFLINE_AFTER_S", settings.offline_after_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value} must be a positive number of seconds")
        return settings
