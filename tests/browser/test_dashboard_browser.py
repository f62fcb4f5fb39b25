"""The fleet dashboard in headless Chromium against a real ``edgepub up`` and real edge
agents: log in through the form; an edge that dies turns offline without a reload; a
replace shows pending, then in sync; a publish held in Publishing says it is stuck and why;
1,000 edges filter, sort and page from the URL; the pipeline view draws its charts and the
latest rows; the page says when its own feed is stale.

The tests share one stack and one browser (module scope) and run in file order. Each view
is saved as a screenshot (the path is printed); with ``EDGEPUB_UPDATE_SCREENSHOTS=1`` they
are also copied to ``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import random
import shutil
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from edgepub import Client, PipelinePublish
from edgepub.samples import house_price_model
from edgepub.shared import subjects
from edgepub.shared.edge_messages import EdgeRecord, EdgeSeen, LogSeen, Traffic
from edgepub.shared.schemas import decoder, encode
from support.edge import EdgeAgent, http

from .conftest import OFFLINE_AFTER_S, REPO, Stack, js_errors, wait

pytestmark = pytest.mark.timeout(300)

SIMULATED = 1000
VERSIONS = ("v1.0", "v1.1", "v2.0")


# --- helpers ----------------------------------------------------------------------------------


def js(browser: Any, script: str, *args: Any) -> Any:
    return browser.execute_script(script, *args)


def open_page(browser: Any, stack: Stack, path: str) -> None:
    browser.get(stack.url + path)
    wait(lambda: js(browser, "return document.readyState") == "complete", 20, f"{path} to load")


def cell(browser: Any, edge: str, col: str, attr: str = "textContent") -> str | None:
    script = (
        'const td = document.querySelector(`#fleet tr[data-edge="${arguments[0]}"] '
        'td[data-col="${arguments[1]}"]`);'
        "if (!td) return null;"
        "return arguments[2] === 'value' ? td.dataset.value : td.textContent;"
    )
    got: str | None = js(browser, script, edge, col, "value" if attr == "value" else "text")
    return got


def count(browser: Any, selector: str) -> int:
    n: int = js(browser, "return document.querySelectorAll(arguments[0]).length", selector)
    return n


def exists(browser: Any, selector: str) -> bool:
    return count(browser, selector) > 0


CHART_LINE = "#chart-rows svg polyline, #chart-rows svg circle"


def mark_page(browser: Any) -> None:
    """A flag on this document: still there later means the page was never reloaded."""
    js(browser, "window.__sameDocument = 'yes';")


def same_document(browser: Any) -> bool:
    return bool(js(browser, "return window.__sameDocument === 'yes';"))


def feed_state(browser: Any) -> str:
    state: str = js(browser, "return document.querySelector('#feed-status').dataset.state;")
    return state


def url_params(browser: Any) -> dict[str, str]:
    got: dict[str, str] = js(
        browser, "return Object.fromEntries(new URLSearchParams(location.search));"
    )
    return got


def shoot(browser: Any, screenshots: Path, name: str) -> Path:
    js(browser, "window.scrollTo(0, 0);")
    time.sleep(0.3)
    path = screenshots / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot {name}: {path}")
    if os.environ.get("EDGEPUB_UPDATE_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs / f"{name}.png")
    return path


def no_script_errors(browser: Any) -> None:
    errors = [e for e in js_errors(browser) if "/static/" in e or "Uncaught" in e]
    assert errors == [], errors


def publish_with_edge(
    stack: Stack, pipeline: str, edge: str, tags: list[str] | None = None
) -> tuple[PipelinePublish, EdgeAgent]:
    published = stack.client.build_pipeline(pipeline).add_model_step(stack.model)
    publish = published.publish(progress=False)
    bundle = publish.add_edge(edge, tags=tags or []).docker_run_variables["EDGE_BUNDLE"]
    agent = stack.agent(bundle, publish.pipeline_url or "", edge)
    return publish, agent


# --- the tests -------------------------------------------------------------------------------


def test_login_then_a_killed_edge_turns_offline_without_a_reload(
    stack: Stack, browser: Any
) -> None:
    _, agent = publish_with_edge(stack, "ui-live", "live-1", ["eu", "store"])

    browser.get(stack.url + "/fleet?q=live-1")  # not logged in: the login form, then back
    wait(lambda: "/login" in browser.current_url, 20, "the redirect to the login form")
    browser.find_element("id", "user").send_keys(stack.info.sdk_user or "")
    browser.find_element("id", "password").send_keys(stack.info.sdk_password or "")
    browser.find_element("id", "login").click()
    wait(lambda: browser.current_url.endswith("/fleet?q=live-1"), 20, "back on the fleet page")

    wait(lambda: cell(browser, "live-1", "connection") == "online", 30, "live-1 online")
    assert feed_state(browser) == "live"
    threshold = browser.find_element("id", "offline-threshold").text
    assert "offline after 3 s" in threshold, threshold
    assert "eu" in (cell(browser, "live-1", "tags") or "")
    wait(lambda: cell(browser, "live-1", "sync", "value") == "in_sync", 30, "live-1 in sync")
    wait(lambda: "ago" in (cell(browser, "live-1", "last_seen") or ""), 10, "last seen, relative")

    mark_page(browser)
    agent.kill()
    killed = time.monotonic()
    # the threshold, a heartbeat interval, a push interval, and slack for a loaded machine
    wait(lambda: cell(browser, "live-1", "connection") == "offline", OFFLINE_AFTER_S + 15,
         "live-1 offline")  # fmt: skip
    took = time.monotonic() - killed
    print(f"\nlive-1 shown offline {took:.1f} s after SIGKILL (threshold {OFFLINE_AFTER_S:g} s)")
    assert same_document(browser), "the page reloaded"
    offline = js(browser, "return document.querySelector('[data-counter=offline] .v').textContent")
    assert int(offline) >= 1
    no_script_errors(browser)


def test_a_replace_shows_pending_then_in_sync(stack: Stack, browser: Any) -> None:
    old, agent = publish_with_edge(stack, "ui-swap", "swap-1")
    open_page(browser, stack, "/fleet?q=swap-1")
    wait(lambda: cell(browser, "swap-1", "sync", "value") == "in_sync", 40, "swap-1 in sync")
    old_version = cell(browser, "swap-1", "running_version", "value")
    assert old_version == old.pipeline_version_name
    # every sync state the row shows, recorded in the page as it happens
    js(
        browser,
        """window.__syncs = [];
        window.__syncTimer = setInterval(() => {
          const td = document.querySelector('#fleet tr[data-edge="swap-1"] td[data-col="sync"]');
          const v = td && td.dataset.value;
          if (v && window.__syncs[window.__syncs.length - 1] !== v) window.__syncs.push(v);
        }, 50);""",
    )
    mark_page(browser)

    other = stack.client.upload_model(
        "rf-next", house_price_model(stack.work / "m2.onnx", n_estimators=4)
    )
    # The agent swaps within a heartbeat or two of the replace, faster than a push: hold
    # it (SIGSTOP) so the page can be seen saying pending, then let it go and swap.
    assert agent.child.pid is not None
    os.kill(agent.child.pid, signal.SIGSTOP)
    try:
        new = (
            stack.client.build_pipeline("ui-swap")
            .add_model_step(other)
            .publish(replaces=[old], progress=False)
        )
        assert new.pipeline_version_name != old_version
        wanted = new.pipeline_version_name
        wait(lambda: cell(browser, "swap-1", "desired_version", "value") == wanted, 30, "desired")
        assert cell(browser, "swap-1", "sync", "value") == "pending"
        assert cell(browser, "swap-1", "running_version", "value") == old_version
        why = js(browser, "return document.querySelector('#fleet tr[data-edge=\"swap-1\"] "
                 "td[data-col=sync]').title")  # fmt: skip
        print(f"\nswap-1 pending: {why}")
        assert f"publish {new.id}" in why
    finally:
        os.kill(agent.child.pid, signal.SIGCONT)

    def swapped() -> bool:
        return (
            cell(browser, "swap-1", "sync", "value") == "in_sync"
            and cell(browser, "swap-1", "running_version", "value") == new.pipeline_version_name
        )

    wait(swapped, 60, "swap-1 running the new version, in sync")
    wait(lambda: js(browser, "return window.__syncs.at(-1)") == "in_sync", 5, "the recorder")
    syncs = js(browser, "clearInterval(window.__syncTimer); return window.__syncs;")
    print(f"\nswap-1 sync states seen: {syncs}")
    assert "pending" in syncs, syncs
    assert syncs[-1] == "in_sync" and syncs.index("pending") < len(syncs) - 1, syncs
    assert syncs[0] == "in_sync", syncs  # in sync on the old one, pending, in sync again
    assert cell(browser, "swap-1", "desired_version", "value") == new.pipeline_version_name
    assert same_document(browser), "the page reloaded"
    stack.swap_agent = agent  # type: ignore[attr-defined]  # the pipeline test sends to it
    no_script_errors(browser)


def test_a_publish_held_in_publishing_says_it_is_stuck_and_why(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    model = stack.client.upload_model(
        "rf-stuck", house_price_model(stack.work / "m3.onnx", n_estimators=5)
    )
    (registry,) = stack.stack.children("docker-registry")
    open_page(browser, stack, "/publishes")
    mark_page(browser)
    done: dict[str, Any] = {}

    def publish() -> None:  # blocks while the registry is held
        try:
            with Client(stack.info.nats_url, stack.info.sdk_user, stack.info.sdk_password) as c:
                done["publish"] = (
                    c.build_pipeline("ui-stuck").add_model_step(model).publish(progress=False)
                )
        except Exception as exc:  # reported below
            done["error"] = exc

    os.kill(registry, signal.SIGSTOP)  # the registry hangs: the push waits on it
    thread = threading.Thread(target=publish, daemon=True)
    try:
        thread.start()
        row = 'tr[data-publish][data-status="Publishing"][data-stuck="true"]'
        reason = wait(
            lambda: js(
                browser,
                "const r = document.querySelector(arguments[0]); return r && r.textContent;",
                f"{row} .stuck-reason",
            ),
            30,
            "a stuck publish with its reason",
        )
        print(f"\nstuck publish shows: {reason}")
        assert reason.startswith("stuck: Publishing for ")
        assert "the registry push has reported no outcome" in reason
        shown = js(
            browser, f"return document.querySelector('{row} td[data-col=pipeline]').textContent"
        )
        assert shown == "ui-stuck"
        # the rollout of the replace (test above) is spelled out
        swap = js(
            browser,
            """const rows = Array.from(document.querySelectorAll('#publishes tr[data-publish]'))
              .filter((tr) => tr.querySelector('td[data-col=pipeline]').textContent === 'ui-swap');
            return rows.map((tr) => Object.fromEntries(Array.from(tr.querySelectorAll('td.rollout'))
              .map((td) => [td.dataset.col, Number(td.textContent)])));""",
        )
        assert {"rollout-targeted": 1, "rollout-running": 1} in [
            {k: r[k] for k in ("rollout-targeted", "rollout-running")} for r in swap
        ], swap
        shoot(browser, screenshots, "publishes")
    finally:
        os.kill(registry, signal.SIGCONT)
    thread.join(120)
    assert "publish" in done, done.get("error")
    pid = done["publish"].id
    wait(
        lambda: (
            js(
                browser,
                f"return document.querySelector('tr[data-publish=\"{pid}\"]').dataset.status",
            )
            == "Published"
        ),
        30,
        "the publish shown Published once the registry answers",
    )
    assert not js(
        browser, f"return document.querySelector('tr[data-publish=\"{pid}\"] .stuck-reason')"
    )
    assert same_document(browser), "the page reloaded"
    no_script_errors(browser)


async def _token_bus(stack: Stack) -> Any:
    user, password = stack.nats_user("token")
    return await nats.connect(
        stack.info.nats_url,
        user=user,
        password=password,
        inbox_prefix=subjects.inbox_prefix(user),  # the only inbox the broker lets it read
    )


async def _beat(stack: Stack, made: list[dict[str, Any]], share: float) -> None:
    """A fresh heartbeat for ``share`` of the simulated edges (they show online a while)."""
    nc = await _token_bus(stack)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_EDGES)
        now = datetime.now(UTC)
        beats = [
            kv.put(f"seen.{m['name']}", encode(msgspec.structs.replace(m["seen"], at=now)))
            for m in made[: int(len(made) * share)]
        ]
        for start in range(0, len(beats), 200):
            await asyncio.gather(*beats[start : start + 200])
    finally:
        await nc.close()


async def _write_edges(stack: Stack, n: int) -> list[dict[str, Any]]:
    """``n`` edges written to the edges bucket as the token service writes them (a record
    copied from a real edge's, a heartbeat with figures), as the token service's user."""
    nc = await _token_bus(stack)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_EDGES)
        template = decoder(EdgeRecord).decode((await kv.get("edge.swap-1")).value)
        now = datetime.now(UTC)
        rng = random.Random(12)
        made = []
        puts = []
        for i in range(n):
            name = f"sim-{i:04d}"
            running = VERSIONS[rng.choices(range(3), weights=(3, 2, 5))[0]]
            record = msgspec.structs.replace(
                template,
                id=str(uuid.uuid4()),
                name=name,
                tags=(rng.choice(("eu", "us", "apac")), f"rack-{i % 20}"),
                assignment=msgspec.structs.replace(
                    template.assignment,
                    pipeline_name="ui-sim",
                    pipeline_version_name="v2.0",
                    publish_id=9000,
                ),
                assigned_at=now - timedelta(minutes=rng.randint(1, 600)),
            )
            backlog = rng.randint(0, 20_000)
            seen = EdgeSeen(
                at=now - timedelta(seconds=rng.uniform(0, 2)),
                status="serving",
                running_version=running,
                agent_version="0.1.0",
                running_since=now - timedelta(minutes=rng.randint(1, 300)),
                traffic=Traffic(
                    interval_s=0.5,
                    requests=rng.randint(0, 50),
                    rate_per_s=round(rng.uniform(0, 100), 1),
                    p50_ms=round(rng.uniform(0.1, 5), 2),
                    p95_ms=round(rng.uniform(5, 40), 2),
                ),
                log=LogSeen(
                    backlog_rows=backlog,
                    backlog_bytes=backlog * 180,
                    oldest_unsent_at=now - timedelta(seconds=rng.randint(1, 900)),
                    last_ack_at=now - timedelta(seconds=rng.randint(1, 60)),
                ),
            )
            puts.append(kv.put(f"edge.{name}", encode(record)))
            puts.append(kv.put(f"seen.{name}", encode(seen)))
            made.append(
                {"name": name, "running_version": running, "backlog_rows": backlog, "seen": seen}
            )
        for start in range(0, len(puts), 200):
            await asyncio.gather(*puts[start : start + 200])
        return made
    finally:
        await nc.close()


def test_a_thousand_edges_filter_sort_and_page_from_the_url(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    made = asyncio.run(_write_edges(stack, SIMULATED))
    session = http()
    session.auth = (stack.info.sdk_user or "", stack.info.sdk_password or "")
    wait(lambda: session.get(f"{stack.url}/api/fleet?q=sim-", timeout=10).json()["matched"]
         == SIMULATED, 30, "the dashboard to hold every simulated edge")  # fmt: skip

    # page weight and first render, with the whole fleet there
    bodies = {
        name: session.get(f"{stack.url}{path}", timeout=10).content
        for name, path in (
            ("index.html", "/fleet"),
            ("app.js", "/static/app.js"),
            ("app.css", "/static/app.css"),
            ("/api/fleet", "/api/fleet"),
        )
    }
    sizes = {name: len(body) for name, body in bodies.items()}
    started = time.monotonic()
    open_page(browser, stack, "/fleet")
    wait(lambda: js(browser, "return document.querySelectorAll('#fleet tbody tr').length") == 100,
         30, "the first page of rows")  # fmt: skip
    wall = time.monotonic() - started
    first = js(browser, "return window.edgepubFirstRender")
    total = js(browser, "return document.querySelector('[data-counter=total] .v').textContent")
    print(
        f"\npage weight with {SIMULATED} edges (+ real ones): "
        + ", ".join(f"{k} {v:,} B" for k, v in sizes.items())
        + f"; total {sum(sizes.values()):,} B as served (uncompressed), "
        + f"{sum(len(gzip.compress(b)) for b in bodies.values()):,} B if gzipped"
        + f"\ntime to first render: {first:.0f} ms after navigation start "
        f"(rows on screen {wall * 1000:.0f} ms after driver.get); counters say {total} edges"
    )
    assert int(total.replace(",", "")) >= SIMULATED

    # filter by running version through the filter input: the URL holds it
    mark_page(browser)
    box = browser.find_element("css selector", 'input[data-filter="running_version"]')
    box.send_keys("v1.1")
    expected = sorted(m["name"] for m in made if m["running_version"] == "v1.1")
    wait(
        lambda: url_params(browser).get("running_version.contains") == "v1.1",
        10,
        "the filter in the URL",
    )
    wait(lambda: js(browser, "return document.querySelector('#fleet').dataset.matched")
         == str(len(expected)), 15, "the matched count")  # fmt: skip

    def shown(col: str) -> list[Any]:
        got: list[Any] = js(
            browser,
            "return Array.from(document.querySelectorAll('#fleet tbody tr')).map("
            '(tr) => tr.querySelector(`td[data-col="${arguments[0]}"]`).dataset.value);',
            col,
        )
        return got

    wait(lambda: shown("name") == expected[:100], 15, "the first 100 by name")
    assert len(expected) > 100 and set(shown("running_version")) == {"v1.1"}
    assert f"of {len(expected):,} matched" in browser.find_element("id", "fleet-matched").text

    # sort by backlog, ascending then descending, by clicking the header
    by_backlog = sorted(
        (m for m in made if m["running_version"] == "v1.1"),
        key=lambda m: (m["backlog_rows"], m["name"]),
    )
    browser.find_element("css selector", 'button[data-sort="backlog_rows"]').click()
    wait(lambda: url_params(browser).get("sort") == "backlog_rows", 10, "sort in the URL")
    wait(lambda: shown("name") == [m["name"] for m in by_backlog[:100]], 15, "ascending by backlog")
    browser.find_element("css selector", 'button[data-sort="backlog_rows"]').click()
    wait(lambda: url_params(browser).get("sort") == "-backlog_rows", 10, "descending in the URL")
    descending = sorted(by_backlog, key=lambda m: (-m["backlog_rows"], m["name"]))
    wait(
        lambda: shown("name") == [m["name"] for m in descending[:100]], 15, "descending by backlog"
    )
    backlogs = [int(v) for v in shown("backlog_rows")]
    assert backlogs == sorted(backlogs, reverse=True)

    # the next page, then a reload keeps all of it
    browser.find_element("id", "fleet-next").click()
    wait(lambda: url_params(browser).get("offset") == "100", 10, "offset in the URL")
    wait(lambda: shown("name") == [m["name"] for m in descending[100:200]], 15, "the second page")
    assert same_document(browser), "filtering reloaded the page"
    csv = browser.find_element("id", "fleet-csv").get_attribute("href")
    assert "running_version.contains=v1.1" in csv and "offset" not in csv
    lines = session.get(csv, timeout=10).text.strip().splitlines()
    assert len(lines) == len(expected) + 1  # the header, every matching row (not one page)

    browser.back()  # history holds each step: back to the first page, same filter and sort
    wait(lambda: "offset" not in url_params(browser), 10, "back to the first page")
    wait(lambda: shown("name") == [m["name"] for m in descending[:100]], 15, "the first page again")
    browser.forward()
    wait(lambda: url_params(browser).get("offset") == "100", 10, "forward to the second page")

    browser.refresh()
    wait(
        lambda: shown("name") == [m["name"] for m in descending[100:200]],
        20,
        "the same page after a reload",
    )
    value = browser.find_element(
        "css selector", 'input[data-filter="running_version"]'
    ).get_attribute("value")
    assert value == "v1.1"
    assert (
        js(
            browser,
            "return document.querySelector('th[data-col=backlog_rows]').getAttribute('aria-sort')",
        )
        == "descending"
    )

    # the counters are filters too: out of sync is every simulated edge not on v2.0
    browser.find_element("css selector", '[data-counter="out_of_sync"]').click()
    wait(lambda: url_params(browser).get("sync") == "pending,failed", 10, "the counter's filter")
    made.sort(key=lambda m: random.Random(m["name"]).random())  # a mix of online and offline
    asyncio.run(_beat(stack, made, 0.85))
    open_page(browser, stack, "/fleet?q=sim-&sort=-rate_per_s")
    wait(lambda: js(browser, "return document.querySelectorAll('#fleet tbody tr').length") == 100,
         20, "the fleet sorted by rate")  # fmt: skip
    shoot(browser, screenshots, "fleet")
    no_script_errors(browser)


def test_the_pipeline_view_draws_its_charts_and_latest_rows(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    agent: EdgeAgent = stack.swap_agent  # type: ignore[attr-defined]
    sent = stack.send(agent, "ui-swap", requests=30, rows=4)
    open_page(browser, stack, "/fleet")
    mark_page(browser)
    wait(
        lambda: exists(browser, '#nav-pipeline option[value="ui-swap"]'), 20, "ui-swap in the menu"
    )
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "nav-pipeline")).select_by_value("ui-swap")
    wait(
        lambda: js(browser, "return location.pathname") == "/pipelines/ui-swap",
        10,
        "the pipeline view",
    )
    latest = wait(
        lambda: (
            (n := js(browser, "return document.querySelectorAll('#latest tbody tr').length")) >= 10
            and n
        ),
        60,
        "the latest rows",
    )
    assert latest <= 20
    assert js(browser, "return document.querySelector('#latest tbody tr').dataset.edge") == "swap-1"
    wait(lambda: exists(browser, CHART_LINE), 30, "the rows chart with a line")
    assert js(browser, "return !!document.querySelector('#chart-latency svg')")

    def rows_shown() -> int:
        return int(browser.find_element("id", "pipeline-summary").text.split()[0].replace(",", ""))

    # the edge ships its log in pages: the count grows, live, until every row is at Ops
    wait(lambda: rows_shown() >= sent, 60, f"all {sent} rows counted on the page")

    Select(browser.find_element("id", "edge-filter")).select_by_value("swap-1")
    wait(lambda: url_params(browser).get("edge") == "swap-1", 10, "the edge filter in the URL")
    browser.find_element("css selector", 'button[data-range="24h"]').click()
    wait(
        lambda: url_params(browser) == {"edge": "swap-1", "last": "24h"}, 10, "the range in the URL"
    )
    wait(lambda: exists(browser, '[data-range="24h"].active'), 5, "the 24h preset active")
    wait(lambda: js(browser, "return document.querySelectorAll('#latest tbody tr').length") >= 10,
         30, "the rows again for the last 24 h")  # fmt: skip
    browser.find_element("css selector", 'button[data-range="1h"]').click()
    wait(lambda: url_params(browser) == {"edge": "swap-1"}, 10, "back to the last hour")
    wait(lambda: exists(browser, CHART_LINE), 30, "the chart again")
    wait(
        lambda: js(browser, "return document.querySelectorAll('#latest tbody tr').length") >= 10,
        30,
        "rows",
    )
    assert same_document(browser), "the page reloaded"
    shoot(browser, screenshots, "pipeline")
    no_script_errors(browser)


def test_the_page_says_when_its_feed_is_stale(stack: Stack, browser: Any) -> None:
    open_page(browser, stack, "/publishes")
    wait(lambda: feed_state(browser) == "live", 20, "a live feed")
    (dashboard,) = stack.stack.children("edgepub.services.dashboard")
    os.kill(dashboard, signal.SIGSTOP)  # the connection stays open; nothing arrives
    try:
        wait(lambda: feed_state(browser) == "stale", 30, "the page to say stale")
        text = browser.find_element("id", "feed-status").text
        print(f"\nfeed status while the dashboard is held: {text!r}")
        assert "stale" in text and "updated" in text
    finally:
        os.kill(dashboard, signal.SIGCONT)
    wait(lambda: feed_state(browser) == "live", 30, "live again")
