"""The dashboard's HTTP side (aiohttp): the login, three pages (fleet, publishes, a
pipeline), their JSON, a CSV of the fleet as filtered, server-drawn SVG charts, and a
server-sent event feed per page that pushes a full view on connect and on every change,
coalesced to at most one push per ``PUSH_EVERY_S``, with a ping in between that says
whether the dashboard's own feed from the bus is live.

Every request but the login page, its form and ``/healthz`` needs a session cookie (or
HTTP Basic with a user the bus accepts); every handler only reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Protocol

import msgspec
import structlog
from aiohttp import BasicAuth, web

from . import charts
from .auth import COOKIE, SESSION_S, Logins
from .source import FleetSource
from .traffic import Traffic

log = structlog.get_logger("edgepub.dashboard")

PUSH_EVERY_S = 1.0
PING_S = 5.0
STALE_S = 15.0  # the feed heard nothing from the bus for this long: the page says stale
MAX_RANGE = timedelta(days=31)
PUBLIC = ("/login", "/healthz", "/static/login.css")

_json = msgspec.json.Encoder()


class Views(Protocol):
    """What the pages show, computed from the source's cache (``views.py``)."""

    def fleet(self, query: Mapping[str, str]) -> dict[str, Any]: ...  # ValueError: bad query
    def fleet_csv(self, query: Mapping[str, str]) -> str: ...
    def publishes(self, query: Mapping[str, str]) -> dict[str, Any]: ...
    def pipelines(self) -> list[str]: ...


ReadTraffic = Callable[[str, datetime, datetime, str | None], Awaitable[Traffic]]


def _static(name: str) -> bytes:
    return resources.files("edgepub.services.dashboard").joinpath("static", name).read_bytes()


def _client(request: web.Request) -> str:
    return request.remote or "?"


def parse_range(query: Mapping[str, str], now: datetime) -> tuple[datetime, datetime]:
    """``start`` / ``end`` (ISO 8601, UTC when no zone is given), the last hour by
    default; ValueError naming the parameter for anything else."""

    def one(name: str, default: datetime) -> datetime:
        raw = query.get(name)
        if not raw:
            return default
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}={raw[:40]!r} is not an ISO 8601 time") from None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    end = one("end", now)
    start = one("start", end - timedelta(hours=1))
    if not start < end:
        raise ValueError("start must be before end")
    if end - start > MAX_RANGE:
        raise ValueError(f"a range is at most {MAX_RANGE.days} days")
    return start, end


def signature(view: Any) -> Any:
    """What a push must differ in: the view without the clock (``now``), ages that move
    with it (``*_age_s``: the page counts them from the times itself) and the feed's own
    state (the pings carry that)."""
    if isinstance(view, dict):
        return {
            k: signature(v)
            for k, v in view.items()
            if k not in ("now", "feed") and not k.endswith("_age_s")
        }
    if isinstance(view, list):
        return [signature(v) for v in view]
    return view


def _json_response(request: web.Request, body: Any) -> web.Response:
    resp = web.Response(body=_json.encode(body), content_type="application/json")
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        resp.enable_compression()
    return resp


class Dashboard:
    def __init__(
        self, source: FleetSource, views: Views, logins: Logins, read_traffic: ReadTraffic
    ) -> None:
        self.source = source
        self.views = views
        self.logins = logins
        self.read_traffic = read_traffic
        self._traffic: dict[tuple[str, str, str, str], tuple[float, Traffic]] = {}

    # --- the app -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        for path in ("/", "/fleet", "/publishes", "/pipelines/{name}"):
            r.add_get(path, self.page)
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/fleet", self.fleet)
        r.add_get("/api/fleet.csv", self.fleet_csv)
        r.add_get("/api/publishes", self.publishes)
        r.add_get("/api/pipelines", self.pipelines)
        r.add_get("/api/pipelines/{name}", self.pipeline)
        r.add_get("/api/pipelines/{name}/{metric}.svg", self.chart)
        r.add_get("/events/{view}", self.events)
        return app

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC:
            return await handler(request)
        user = self.logins.user_of(request.cookies.get(COOKIE))
        if user is None and request.headers.get("Authorization", "").startswith("Basic "):
            try:
                auth = BasicAuth.decode(request.headers["Authorization"])
            except ValueError:
                auth = None
            if auth and await self.logins.check(auth.login, auth.password, client=_client(request)):
                user = auth.login
        if user is None:
            if request.path.startswith(("/api/", "/events/")):
                raise web.HTTPUnauthorized(
                    text="log in first (POST /login, or HTTP Basic with a NATS user)",
                    headers={"WWW-Authenticate": 'Basic realm="edgepub"'},
                )
            raise web.HTTPFound(f"/login?next={request.path_qs}")
        request["user"] = user
        return await handler(request)

    # --- login ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"live": self.source.live}, status=200 if self.source.live else 503
        )

    async def login_page(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("login.html"), content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if self.logins.limited(_client(request)):
            raise web.HTTPTooManyRequests(text="too many failed logins; wait a minute")
        if not await self.logins.check(user, password, client=_client(request)):
            raise web.HTTPFound("/login?failed=1")
        resp = web.HTTPFound(target)
        resp.set_cookie(
            COOKIE,
            self.logins.session(user),
            max_age=int(SESSION_S),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        log.info("login", user=user[:64], client=_client(request))
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        resp = web.HTTPFound("/login")
        resp.del_cookie(COOKIE)
        raise resp

    # --- pages and assets ---------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_static("index.html"),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {".js": "application/javascript", ".css": "text/css", ".html": "text/html"}
        kind = next((t for ext, t in types.items() if name.endswith(ext)), None)
        if kind is None or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        try:
            body = _static(name)
        except (FileNotFoundError, IsADirectoryError):
            raise web.HTTPNotFound() from None
        resp = web.Response(body=body, content_type=kind)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression()
        return resp

    # --- data ----------------------------------------------------------------------------

    def _view(self, view: str, request: web.Request) -> dict[str, Any]:
        query = dict(request.query)
        try:
            if view == "fleet":
                out = self.views.fleet(query)
            elif view == "publishes":
                out = self.views.publishes(query)
            else:
                raise web.HTTPNotFound(text=f"no view {view!r}")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        out["feed"] = self.feed()
        return out

    def feed(self) -> dict[str, Any]:
        age = time.monotonic() - self.source.fresh_at if self.source.fresh_at else None
        stale = not self.source.live or age is None or age > STALE_S
        return {"live": not stale, "connected": self.source.is_connected, "heard_s_ago": age}

    async def fleet(self, request: web.Request) -> web.Response:
        return _json_response(request, self._view("fleet", request))

    async def fleet_csv(self, request: web.Request) -> web.Response:
        try:
            text = self.views.fleet_csv(dict(request.query))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.Response(
            text=text,
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="edgepub-fleet.csv"'},
        )

    async def publishes(self, request: web.Request) -> web.Response:
        return _json_response(request, self._view("publishes", request))

    async def pipelines(self, request: web.Request) -> web.Response:
        return web.json_response({"pipelines": self.views.pipelines()})

    async def _traffic_of(self, request: web.Request, name: str | None = None) -> Traffic:
        name = name if name is not None else request.match_info["name"]
        if name not in self.views.pipelines():
            raise web.HTTPNotFound(text=f"no pipeline {name!r}")
        try:
            start, end = parse_range(request.query, datetime.now(UTC))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        edge = request.query.get("edge") or None
        key = (name, request.query.get("start", ""), request.query.get("end", ""), edge or "")
        cached = self._traffic.get(key)
        if cached and time.monotonic() - cached[0] < PUSH_EVERY_S * 2:
            return cached[1]
        got = await self.read_traffic(name, start, end, edge)
        if len(self._traffic) > 64:
            self._traffic.clear()
        self._traffic[key] = (time.monotonic(), got)
        return got

    async def pipeline(self, request: web.Request) -> web.Response:
        traffic = await self._traffic_of(request)
        body = msgspec.to_builtins(traffic)
        body["feed"] = self.feed()
        return _json_response(request, body)

    async def chart(self, request: web.Request) -> web.Response:
        metric = request.match_info["metric"]
        if metric not in ("rows", "latency"):
            raise web.HTTPNotFound(text="charts: rows.svg, latency.svg")
        return web.Response(
            text=self.svg(await self._traffic_of(request), metric), content_type="image/svg+xml"
        )

    @staticmethod
    def svg(traffic: Traffic, metric: str) -> str:
        series: dict[str, list[tuple[datetime, float]]] = {}
        for m in traffic.minutes:
            value = m.rows if metric == "rows" else m.p50_ms
            if value is not None:
                series.setdefault(m.edge, []).append((m.minute, float(value)))
        title = "inference rows per minute" if metric == "rows" else "latency p50 per minute"
        return charts.line_chart(
            series,
            start=traffic.start,
            end=traffic.end,
            title=title,
            unit="rows/min" if metric == "rows" else "ms",
            combine="sum" if metric == "rows" else "max",
        )

    # --- live ------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``/events/fleet?…`` (or ``publishes``, ``pipeline?name=…``): a ``snapshot`` event
        with the whole view at once and after each change (at most one per PUSH_EVERY_S),
        ``ping`` events with the feed's state in between."""
        view = request.match_info["view"]
        if view == "pipeline":
            name = request.query.get("name", "")
            await self._traffic_of(request, name)  # a bad query is a 400 before the stream

            async def render() -> dict[str, Any]:
                body = msgspec.to_builtins(await self._traffic_of(request, name))
                body["feed"] = self.feed()
                return dict(body)

        else:
            self._view(view, request)  # a bad query is a 400 before the stream starts

            async def render() -> dict[str, Any]:
                return self._view(view, request)

        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        version, last, last_ping = -1, None, time.monotonic()
        try:
            while True:
                started = time.monotonic()
                view_now = await render()
                sig = signature(view_now)
                if sig != last:  # encoded only when it is sent
                    data = _json.encode(view_now)
                    await resp.write(b"event: snapshot\ndata: " + data + b"\n\n")
                    last = sig
                elif started - last_ping >= PING_S:
                    await resp.write(b"event: ping\ndata: " + _json.encode(self.feed()) + b"\n\n")
                    last_ping = started
                await asyncio.sleep(max(0.0, PUSH_EVERY_S - (time.monotonic() - started)))
                if view != "pipeline":  # wake on a change, or re-render each second (ages move)
                    version = await self.source.changed(version, timeout=PUSH_EVERY_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp
