"""Who may look: the same login as the SDK. A user name and password the bus itself
accepts (the dashboard connects to NATS with them once, then closes) gets a session cookie
signed with this process's key; nothing else gets past the login page.

Failed logins are limited per client address (``MAX_FAILURES`` in ``FAILURE_WINDOW_S``),
so the page is no faster a password oracle than the bus. The password is never stored or
logged; a successful check is remembered for ``CHECK_TTL_S`` as a keyed hash, so HTTP
Basic clients (scripts, ``curl``) do not open a NATS connection per request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import deque

import nats
import nats.errors
import structlog

log = structlog.get_logger("edgepub.dashboard")

SESSION_S = 12 * 3600.0
CHECK_TTL_S = 60.0
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
MAX_CLIENTS = 10_000  # addresses remembered for the failure limit
COOKIE = "edgepub_session"
MAC_BYTES = 32  # sha256; the MAC is binary, so it is cut off by length, not by a separator


class Logins:
    def __init__(self, servers: list[str], *, connect_timeout_s: float = 5.0) -> None:
        self._servers = servers
        self._timeout = connect_timeout_s
        self._key = secrets.token_bytes(32)  # sessions end with the process
        self._checked: dict[bytes, float] = {}  # keyed hash of (user, password) -> until
        self._failures: dict[str, deque[float]] = {}

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def limited(self, client: str) -> bool:
        """True when ``client`` failed MAX_FAILURES times in the last FAILURE_WINDOW_S."""
        now = time.monotonic()
        got = self._failures.get(client)
        if not got:
            return False
        while got and got[0] < now - FAILURE_WINDOW_S:
            got.popleft()
        return len(got) >= MAX_FAILURES

    def _failed(self, client: str) -> None:
        if len(self._failures) >= MAX_CLIENTS:
            self._failures.clear()
        self._failures.setdefault(client, deque(maxlen=MAX_FAILURES)).append(time.monotonic())

    async def check(self, user: str, password: str, *, client: str) -> bool:
        """Does the bus accept ``user`` / ``password``? (False when ``client`` is limited.)"""
        if not user or not password or len(user) > 256 or len(password) > 1024:
            return False
        if self.limited(client):
            return False
        digest = self._digest(user, password)
        now = time.monotonic()
        if self._checked.get(digest, 0.0) > now:
            return True
        ok = await self._connects(user, password)
        if ok:
            if len(self._checked) > 1000:
                self._checked.clear()
            self._checked[digest] = now + CHECK_TTL_S
        else:
            self._failed(client)
            log.info("login_refused", user=user[:64], client=client)
        return ok

    async def _connects(self, user: str, password: str) -> bool:
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=self._servers,
                    user=user,
                    password=password,
                    name="edgepub-dashboard-login",
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=self._timeout,
                ),
                self._timeout * 2,
            )
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        await nc.close()
        return True

    def session(self, user: str, *, now: float | None = None) -> str:
        """A cookie value naming ``user`` until SESSION_S from now."""
        until = int((now if now is not None else time.time()) + SESSION_S)
        body = f"{user}|{until}".encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(body + b"|" + mac).decode()

    def user_of(self, cookie: str | None, *, now: float | None = None) -> str | None:
        """The user a session cookie names, or None (forged, expired, malformed)."""
        if not cookie or len(cookie) > 1024:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie.encode())
        except (ValueError, TypeError):
            return None
        body, sep, mac = raw[: -MAC_BYTES - 1], raw[-MAC_BYTES - 1 : -MAC_BYTES], raw[-MAC_BYTES:]
        if sep != b"|" or not hmac.compare_digest(
            mac, hmac.new(self._key, body, hashlib.sha256).digest()
        ):
            return None
        user, _, until = body.decode(errors="replace").rpartition("|")
        if not until.isdigit() or int(until) < (now if now is not None else time.time()):
            return None
        return user
