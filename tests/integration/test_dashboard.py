"""The dashboard's HTTP side across real processes (nats-server, the Ops services, the
dashboard service): the login is the SDK's and nothing is served without it, the JSON and
CSV views follow what the token service writes, the server-sent feed pushes a full view on
connect and the change after, bad queries get a 400 naming the problem."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepub import Client
from support.edge_bus import add_edge, admin
from support.procs import free_port
from support.servers import NatsServer
from support.services import OpsServices, ServiceProcess, clean_environ

pytestmark = pytest.mark.timeout(180)

HOST = "127.0.0.1"
EDGEPUB = str(Path(sys.executable).parent / "edgepub")


class Page:
    """HTTP to the dashboard, as a browser (cookie) or a script (HTTP Basic)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            h = dict(headers or {})
            if self.cookie:
                h["Cookie"] = self.cookie
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kw)

    def login(self, user: str, password: str) -> tuple[int, dict[str, str]]:
        form = urllib.parse.urlencode({"user": user, "password": password, "next": "/fleet"})
        status, headers, _ = self.request(
            "POST",
            "/login",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if "set-cookie" in headers:
            self.cookie = headers["set-cookie"].split(";", 1)[0]
        return status, headers

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


@pytest.fixture
def dashboard(ops: OpsServices, client: Client) -> Iterator[Page]:
    port = free_port()
    ops.start(
        "dashboard",
        env={"EDGEPUB_DASHBOARD_PORT": str(port), "EDGEPUB_EDGE_OFFLINE_AFTER_S": "5"},
        ready_event="dashboard_serving",
    )
    page = Page(port)
    deadline = time.monotonic() + 20
    while page.get("/healthz")[0] != 200:
        assert time.monotonic() < deadline, "the dashboard's feed never went live"
        time.sleep(0.1)
    yield page


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("shop").add_model_step(model).publish(progress=False).id


def _add(nats_server: NatsServer, publish_id: int, name: str, tags: tuple[str, ...] = ()) -> None:
    async def main() -> None:
        nc = await admin(nats_server)
        try:
            await add_edge(nc, publish_id, name, tags)
        finally:
            await nc.close()

    asyncio.run(main())


def test_nothing_is_served_without_the_sdk_login(dashboard: Page, nats_server: NatsServer) -> None:
    s = nats_server.settings()
    assert dashboard.get("/api/fleet")[0] == 401
    assert dashboard.get("/events/fleet")[0] == 401
    status, headers, _ = dashboard.get("/fleet")
    assert status == 302 and headers["location"].startswith("/login")
    assert dashboard.get("/login")[0] == 200
    # a wrong password, a forged cookie, a user the bus does not know: the login page again
    assert dashboard.login(s.user or "", "wrong")[1]["location"] == "/login?failed=1"
    dashboard.cookie = "edgepub_session=" + base64.urlsafe_b64encode(b"admin|9999999999|x").decode()
    assert dashboard.get("/api/fleet")[0] == 401
    dashboard.cookie = None
    basic = base64.b64encode(f"{s.user}:{s.password}".encode()).decode()
    assert dashboard.get("/api/fleet", headers={"Authorization": f"Basic {basic}"})[0] == 200
    assert dashboard.get("/api/fleet", headers={"Authorization": "Basic !!"})[0] == 401
    status, headers = dashboard.login(s.user or "", s.password or "")
    assert status == 302 and headers["location"] == "/fleet"
    assert "httponly" in headers["set-cookie"].lower()
    assert dashboard.get("/fleet")[0] == 200


def test_failed_logins_are_limited_per_address(dashboard: Page, nats_server: NatsServer) -> None:
    for _ in range(10):
        dashboard.login("admin", "wrong")
    s = nats_server.settings()
    # now even the right password waits: the page is no password oracle
    status, _ = dashboard.login(s.user or "", s.password or "")
    assert status == 429


def test_the_fleet_follows_the_token_service_and_the_feed_pushes_changes(
    dashboard: Page, nats_server: NatsServer, publish_id: int
) -> None:
    s = nats_server.settings()
    dashboard.login(s.user or "", s.password or "")
    _add(nats_server, publish_id, "shop-1", ("eu",))
    deadline = time.monotonic() + 10
    while not (view := dashboard.json("/api/fleet"))["rows"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (row,) = view["rows"]
    assert (row["name"], row["tags"], row["connection"], row["credential_state"]) == (
        "shop-1",
        ["eu"],
        "never",
        "pending",
    )
    assert row["desired_publish_id"] == publish_id and row["offline_after_s"] == 5
    assert view["counters"]["total"] == 1 and view["feed"]["live"] is True
    publishes = dashboard.json("/api/publishes")["rows"]
    assert publishes[0]["id"] == publish_id and publishes[0]["status"] == "Published"
    assert publishes[0]["rollout"]["targeted"] == 1
    assert publishes[0]["rollout"]["offline_not_reached"] == 1
    assert dashboard.json("/api/pipelines") == {"pipelines": ["shop"]}

    # the feed: a full view at once, then the next edge without asking
    conn = http.client.HTTPConnection(HOST, dashboard.port, timeout=10)
    conn.request("GET", "/events/fleet?sort=-name", headers={"Cookie": dashboard.cookie or ""})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"

    def next_snapshot() -> dict[str, Any]:
        event = ""
        while True:
            line = resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                return json.loads(line[6:])  # type: ignore[no-any-return]

    first = next_snapshot()
    assert [r["name"] for r in first["rows"]] == ["shop-1"]
    _add(nats_server, publish_id, "shop-2")
    snap = next_snapshot()
    while [r["name"] for r in snap["rows"]] != ["shop-2", "shop-1"]:
        snap = next_snapshot()
    assert snap["counters"]["total"] == 2
    conn.close()

    # filters and sorting through the query; CSV of what is shown
    names = [r["name"] for r in dashboard.json("/api/fleet?tags.contains=eu")["rows"]]
    assert names == ["shop-1"]
    status, headers, body = dashboard.get("/api/fleet.csv?sort=-name")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    lines = body.decode().splitlines()
    assert lines[0].startswith("name,") and [x.split(",")[0] for x in lines[1:]] == [
        "shop-2",
        "shop-1",
    ]


def test_bad_queries_are_refused_naming_the_problem(
    dashboard: Page, nats_server: NatsServer
) -> None:
    s = nats_server.settings()
    dashboard.login(s.user or "", s.password or "")
    for path, named in [
        ("/api/fleet?sort=nope", "nope"),
        ("/api/fleet?limit=999999", "limit"),
        ("/api/fleet?requests.gt=many", "requests"),
        ("/events/fleet?bogus=1", "bogus"),
        ("/api/pipelines/shop?start=yesterday", "start"),
    ]:
        status, _, body = dashboard.get(path)
        assert status in (400, 404), (path, status)
        if status == 400:
            assert named in body.decode(), (path, body)
    assert dashboard.get("/api/pipelines/nobody")[0] == 404
    assert dashboard.get("/static/../auth.py")[0] == 404
    assert dashboard.get("/static/nope.js")[0] == 404
    # a body past the limit is refused, the service lives on
    big = b"user=" + b"a" * 200_000
    status, _, _ = dashboard.request(
        "POST", "/login", big, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 413
    assert dashboard.get("/healthz")[0] == 200


def test_the_dashboard_stops_cleanly_on_sigterm(dashboard: Page, ops: OpsServices) -> None:
    proc: ServiceProcess = ops["dashboard"]
    assert proc.terminate() == 0


def test_edgepub_dashboard_runs_against_any_deployment(
    nats_server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """``edgepub dashboard --nats-url … --user dashboard``: the same page, in the foreground,
    on the given port; SIGTERM stops it with 0. Without a deployment it says what to give."""
    port = free_port()
    s = nats_server.settings("dashboard")
    env = clean_environ() | {
        "EDGEPUB_NATS_PASSWORD": s.password or "",
        "EDGEPUB_LOG_FORMAT": "json",
    }
    argv = [EDGEPUB, "dashboard", "--nats-url", s.url]
    proc = subprocess.Popen(
        [*argv, "--user", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        page = Page(port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if page.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
            time.sleep(0.1)
        sdk = nats_server.settings()
        basic = base64.b64encode(f"{sdk.user}:{sdk.password}".encode()).decode()
        status, _, body = page.get("/api/fleet", headers={"Authorization": f"Basic {basic}"})
        assert status == 200 and json.loads(body)["counters"]["total"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = subprocess.run(
        [EDGEPUB, "dashboard", "--data-dir", str(tmp_path / "none")],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2 and "no embedded stack" in out.stdout + out.stderr
