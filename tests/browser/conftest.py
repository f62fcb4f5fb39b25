"""Headless Chromium (Debian's ``chromium`` and ``chromedriver``, through Selenium) against
one real ``edgepub up`` for the whole module: its dashboard, its services and real edge
agents started as their Docker Run says.

The stack runs with short thresholds so the tests watch state change in seconds:
``EDGEPUB_EDGE_OFFLINE_AFTER_S`` (token service and dashboard alike) and
``EDGEPUB_DASHBOARD_STUCK_AFTER_S``. Screenshots go to ``$EDGEPUB_ARTIFACTS/screenshots``
(else the session's temporary directory), and are printed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.shared.stack_file import StackInfo
from support.edge import EdgeAgent, http
from support.stack import EmbeddedStack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover - the dev extra installs it
    HAVE_SELENIUM = False

OFFLINE_AFTER_S = 3.0
STUCK_AFTER_S = 2.0
HEARTBEAT_S = "0.5"
WINDOW = (1280, 800)
REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if not HAVE_SELENIUM:
        reason = "selenium is not installed (pip install selenium: the dev extra)"
    elif CHROMIUM is None:
        reason = "no chromium on PATH (apt-get install chromium chromium-driver)"
    elif CHROMEDRIVER is None:
        reason = "no chromedriver (apt-get install chromium-driver)"
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def wait(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    """``check()`` until it is truthy (its value), or fail saying ``what`` and the last value;
    exceptions from a page that is being redrawn count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:  # a stale element while a row is redrawn
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(every)


class Stack:
    """The running stack, an SDK client on it, and what the tests add to it."""

    def __init__(self, stack: EmbeddedStack, work: Path) -> None:
        self.stack = stack
        self.work = work
        self.info: StackInfo = stack.info()
        self.client = Client(self.info.nats_url, self.info.sdk_user, self.info.sdk_password)
        self.agents: list[EdgeAgent] = []
        self.model = self.client.upload_model(
            "rf", house_price_model(work / "m.onnx", n_estimators=3)
        )
        self.input = self.model.inputs[0].name

    @property
    def url(self) -> str:
        assert self.info.dashboard_url, "edgepub up wrote no dashboard_url"
        return self.info.dashboard_url.rstrip("/")

    def agent(self, bundle: str, pipeline_url: str, name: str) -> EdgeAgent:
        agent = EdgeAgent(
            self.work / name,
            {
                "PIPELINE_URL": pipeline_url,
                "EDGE_BUNDLE": bundle,
                "OCI_USERNAME": self.info.registry_username or "",
                "OCI_PASSWORD": self.info.registry_password or "",
                "EDGEPUB_HEARTBEAT_S": HEARTBEAT_S,
                "LOCAL_INFERENCE_STORAGE": "64Mi",
                "PLATEAU_PAGE_SIZE": "20",
            },
        ).start()
        self.agents.append(agent)
        agent.wait_ready(60)
        return agent

    def send(self, agent: EdgeAgent, pipeline: str, requests: int, rows: int = 5) -> int:
        body = [{self.input: [0.01 * i] * N_FEATURES} for i in range(rows)]
        session = http()
        for _ in range(requests):
            resp = session.post(f"{agent.url}/pipelines/{pipeline}", json=body, timeout=10)
            assert resp.status_code == 200, resp.text
        return requests * rows

    def nats_user(self, name: str) -> tuple[str, str]:
        creds = json.loads((self.stack.data_dir / "credentials.json").read_text())
        return name, creds["nats_users"][name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("browser")
    s = EmbeddedStack(work / "home", "--edge-port", "0")  # a dev stack may hold 4223
    assert s.child.env is not None
    s.child.env.update(
        EDGEPUB_EDGE_OFFLINE_AFTER_S=str(OFFLINE_AFTER_S),
        EDGEPUB_DASHBOARD_STUCK_AFTER_S=str(STUCK_AFTER_S),
        # the stuck-publish test holds the registry: the push waits, it does not fail
        EDGEPUB_REGISTRY_TIMEOUT_S="120",
    )
    up: Stack | None = None
    try:
        s.start(90)
        wait(lambda: s.info().dashboard_url, 30, "the dashboard URL in stack.json")
        up = Stack(s, work)
        wait(lambda: _healthy(up.url), 30, "the dashboard to serve")
        yield up
    finally:
        if up is not None:
            for agent in up.agents:
                agent.kill()
            up.client.close()
        s.stop()


def _healthy(url: str) -> bool:
    try:
        return http().get(f"{url}/healthz", timeout=2).status_code == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--no-proxy-server",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    # the window's size holds the browser's own bars: make the page itself WINDOW
    driver.get("about:blank")
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("EDGEPUB_ARTIFACTS")
    out = Path(root) / "screenshots" if root else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {out}")
    return out


def js_errors(driver: Any) -> list[str]:
    """The page's console errors since the last call (a script error fails the test)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e.get("level") == "SEVERE" and "favicon" not in e.get("message", "")
    ]
