"""``pipeline.logs()`` and ``edgepub logs`` against a real nats-server: pages appended to
EDGEPUB_LOGS as the collector appends them (by a test user that may publish on
``edgepub.logs.>`` only), for two edges and two pipeline versions whose outputs differ,
read back as the SDK user; and windows of up to 1 M rows of a 1 M-row log, each read in a
process of its own whose memory grows with the window, not with the log."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pandas as pd
import pyarrow as pa
import pytest

from edgepub import Client
from edgepub.services.stack import config
from edgepub.services.stack.permissions import Permissions
from edgepub.shared import subjects
from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.log_lines import (
    Gap,
    GapLine,
    RowLine,
    decode_line,
    encode_line,
    join_lines,
)
from support.servers import NatsServer
from support.services import clean_environ

pytestmark = pytest.mark.timeout(240)

WRITER = "log-writer-test"
WRITER_PASSWORD = "log-writer-test-password"
EDGEPUB = [sys.executable, "-c", "from edgepub.cli import main; main()"]
# Rows logged before their pages were appended (as always), within log_window.LATE_SLACK_MS
T0 = 0  # the rows' base time: set per test, see _rows_ten_minutes_ago


@pytest.fixture(autouse=True)
def _rows_ten_minutes_ago() -> None:
    """Rows are timed 10 minutes before the test RUNS (not before the module was collected,
    which in a long suite can be more than a window read's 15-minute late slack)."""
    global T0
    T0 = int((datetime.now(UTC) - timedelta(minutes=10)).timestamp() * 1000)


@pytest.fixture
def nats_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    """The stack's users plus one that appends to the pipeline log as the collector does
    (so these tests need nothing of the collector's own permissions)."""
    stack_users = config.nats_users

    def with_writer(creds: config.StackCredentials) -> dict[str, config.UserSpec]:
        users = dict(stack_users(creds))
        users[WRITER] = config.UserSpec(
            password=WRITER_PASSWORD,
            permissions=Permissions(
                publish_allow=(f"{subjects.LOGS_ROOT}.>",),
                subscribe_allow=(f"{subjects.inbox_prefix(WRITER)}.>",),
            ),
        )
        return users

    monkeypatch.setattr(config, "nats_users", with_writer)
    server = NatsServer(tmp_path / "nats")
    try:
        server.start()
        yield server
    finally:
        server.kill()


def rows(first_seq: int, n: int, t0: int, step_ms: int, version: str, **outs: Any) -> list[RowLine]:
    return [
        RowLine(
            seq=first_seq + i,
            time=t0 + i * step_ms,
            pipeline="house",
            pipeline_version=version,
            in_={"tensor": [float(first_seq + i), 2.0, 3.0, 4.0]},
            out={k: v(first_seq + i) for k, v in outs.items()},
            elapsed_ns=(1000 + i,),
            models=(("house-model", version, "ab" * 32),),
        )
        for i in range(n)
    ]


def page(
    pipeline: str, edge: str, lines: list[RowLine | GapLine]
) -> tuple[str, bytes, dict[str, str]]:
    headers = {
        subjects.HEADER_FIRST_SEQ: str(lines[0].seq),
        subjects.HEADER_LAST_SEQ: str(lines[-1].seq),
        subjects.HEADER_ROWS: str(sum(isinstance(x, RowLine) for x in lines)),
        subjects.HEADER_PIPELINE: pipeline,
        subjects.HEADER_WORKSPACE: "1",
        subjects.HEADER_PARTITION: edge,
    }
    body = join_lines([encode_line(x) for x in lines])
    return subjects.pipeline_log(1, pipeline, edge), body, headers


def append(server: NatsServer, pages: Iterable[tuple[str, bytes, dict[str, str]]]) -> None:
    async def run() -> None:
        nc = await nats.connect(
            server.url,
            user=WRITER,
            password=WRITER_PASSWORD,
            inbox_prefix=subjects.inbox_prefix(WRITER),
        )
        try:
            js = nc.jetstream()
            for subject, body, headers in pages:
                await js.publish(subject, body, headers=headers, timeout=10)
        finally:
            await nc.drain()

    asyncio.run(run())


def paged(edge: str, lines: list[Any], size: int, pipeline: str = "house") -> list[Any]:
    return [page(pipeline, edge, lines[i : i + size]) for i in range(0, len(lines), size)]


V1 = {"variable": lambda s: [float(s)]}
V2 = {"price": lambda s: [float(s) * 2], "label": lambda s: f"r{s}"}


def fill(server: NatsServer) -> None:
    """150 v1 rows per edge (one a second), then a replace: 60 v2 rows on edge-a, after
    them in time, with a gap of 7 rows lost at the edge; and another pipeline's rows."""
    a1 = rows(1, 150, T0, 1000, "v1", **V1)
    b1 = rows(1, 150, T0 + 500, 1000, "v1", **V1)
    gap = GapLine(seq=151, gap=Gap(count=7, first_seq=151, last_seq=151, reason="evicted"))
    a2 = rows(152, 60, T0 + 200_000, 1000, "v2", **V2)
    other = rows(1, 20, T0 + 300_000, 1000, "v1", **V1)
    append(
        server,
        [
            *[
                p
                for pair in zip(paged("edge-a", a1, 50), paged("edge-b", b1, 50), strict=True)
                for p in pair
            ],
            page("house", "edge-a", [gap, *a2[:30]]),
            page("house", "edge-a", list(a2[30:])),
            *paged("edge-a", other, 10, pipeline="other"),
        ],
    )


def logs(client: Client, **kwargs: Any) -> tuple[Any, list[str]]:
    pipeline = client.build_pipeline("house")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = pipeline.logs(**kwargs)
    return got, [str(w.message) for w in caught]


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_logs_read_back(nats_server: NatsServer, client: Client) -> None:
    fill(nats_server)

    df, said = logs(client)
    assert isinstance(df, pd.DataFrame) and len(df) == 100
    assert str(df["time"].dtype) == "datetime64[ms, UTC]"
    assert df["time"].is_monotonic_decreasing
    assert list(df.columns) == [
        "time",
        "in.tensor",
        "out.variable",
        "out.price",
        "out.label",
        "anomaly.count",
    ] or set(df.columns) == {
        "time",
        "in.tensor",
        "out.variable",
        "out.price",
        "out.label",
        "anomaly.count",
    }
    newest = df.iloc[0]
    assert newest["out.label"] == "r211" and newest["time"] == pd.Timestamp(
        T0 + 259_000, unit="ms", tz="UTC"
    )
    assert df["out.variable"].isna().sum() == 60  # the v2 rows have no variable
    assert df["out.label"].isna().sum() == 40
    assert any("more logs available" in s for s in said), said
    assert any("7 rows were lost at the edge" in s for s in said), said

    window, said = logs(client, start_datetime=at(T0 + 10_000), end_datetime=at(T0 + 20_000))
    assert len(window) == 20 and not said
    assert window["time"].min() == pd.Timestamp(T0 + 10_000, unit="ms", tz="UTC")
    assert window["time"].max() == pd.Timestamp(T0 + 19_500, unit="ms", tz="UTC")

    few, said = logs(client, limit=5, start_datetime=at(T0), end_datetime=at(T0 + 20_000))
    assert len(few) == 5 and any("more logs available" in s for s in said)
    assert few["time"].iloc[0] == pd.Timestamp(T0 + 19_500, unit="ms", tz="UTC")

    b, said = logs(client, limit=1000, partition="edge-b", dataset=["time", "metadata"])
    assert len(b) == 150 and not said
    assert set(b["metadata.partition"]) == {"edge-b"}
    assert list(b.columns) == [
        "time",
        "metadata.last_model",
        "metadata.pipeline_version",
        "metadata.elapsed",
        "metadata.dropped",
        "metadata.partition",
    ]
    assert json.loads(b["metadata.last_model"].iloc[0]) == {
        "model_name": "house-model",
        "model_sha": "ab" * 32,
    }
    assert list(b["metadata.elapsed"].iloc[0]) == [1149]

    everything, said = logs(client, limit=1000, dataset=["time", "out", "metadata"], arrow=True)
    assert isinstance(everything, pa.Table) and everything.num_rows == 360
    assert set(everything.column("metadata.pipeline_version").to_pylist()) == {"v1", "v2"}

    with pytest.raises(InvalidRequestError, match="Please provide both start datetime and end"):
        client.build_pipeline("house").logs(start_datetime=at(T0))
    assert len(logs(client, partition="nobody")[0]) == 0
    assert len(client.build_pipeline("never-logged").logs()) == 0
    violations = [
        line
        for line in (nats_server.base_dir / "nats-server.log").read_text().splitlines()
        if "Violation" in line and f'"{nats_server.sdk_user}"' in line
    ]
    assert not violations


def test_logs_show_and_tail(nats_server: NatsServer, client: Client) -> None:
    fill(nats_server)
    s = nats_server.settings()
    conn = ["--nats-url", s.url, "--user", s.user or "", "--password", s.password or ""]
    shown = subprocess.run(
        [*EDGEPUB, "logs", "show", "house", "--limit", "3", "--json", *conn],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=60,
        check=True,
    )
    objs = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [o["out.label"] for o in objs] == ["r211", "r210", "r209"]
    assert objs[0]["metadata.partition"] == "edge-a"

    tail = subprocess.Popen(
        [*EDGEPUB, "logs", "tail", "house", "--partition", "edge-b", "--json", *conn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environ(),
    )
    lines: queue.Queue[str] = queue.Queue()
    ready = threading.Event()

    def pump(stream: Any, on_line: Any) -> None:
        for line in stream:
            on_line(line)

    threading.Thread(target=pump, args=(tail.stdout, lines.put), daemon=True).start()
    threading.Thread(
        target=pump,
        args=(tail.stderr, lambda line: "following" in line and ready.set()),
        daemon=True,
    ).start()
    try:
        assert ready.wait(30), "logs tail did not start following"
        fresh = rows(151, 40, T0 + 400_000, 10, "v2", **V2)
        append(nats_server, [*paged("edge-b", fresh[:20], 10), *paged("edge-a", fresh, 40)])
        append(nats_server, paged("edge-b", fresh[20:], 10))
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 40 and time.monotonic() < deadline:
            try:
                got.append(json.loads(lines.get(timeout=1)))
            except queue.Empty:
                continue
        assert [o["seq"] for o in got] == list(range(151, 191))
        assert {o["partition"] for o in got} == {"edge-b"}
        assert got[0]["out"] == {"price": [302.0], "label": "r151"}
    finally:
        tail.kill()
        tail.wait(10)


# A window read in its own process: peak RSS growth (VmHWM after the read less VmRSS before
# it, connected and warm) and the rows it returned, as JSON on stdout.
READER = """
import json, sys, time, warnings
from datetime import UTC, datetime
from pathlib import Path
from edgepub import Client

def kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

url, user, password, start_ms, end_ms = sys.argv[1:]
with Client(url, user, password) as client, warnings.catch_warnings(record=True) as said:
    pipeline = client.build_pipeline("house")
    pipeline.logs(partition="nobody")  # connected and warm, having read nothing
    said.clear()
    Path("/proc/self/clear_refs").write_text("5")
    before, started = kb("VmRSS"), time.monotonic()
    got = pipeline.logs(start_datetime=datetime.fromtimestamp(int(start_ms) / 1000, UTC),
                        end_datetime=datetime.fromtimestamp(int(end_ms) / 1000, UTC), arrow=True)
    print(json.dumps({"rows": got.num_rows, "peak_mb": (kb("VmHWM") - before) / 1024,
                      "s": time.monotonic() - started,
                      "table_mb": got.nbytes / 2**20, "warnings": [str(w.message) for w in said],
                      "first": got.column("in.tensor")[got.num_rows - 1][0].as_py()}))
"""
PAGE_ROWS = 5_000  # ~1.4 MB pages: 1 M rows in 200 appends
LINE = (
    '{"seq":%d,"time":%d,"pipeline":"house","pipeline_version":"v1",'
    '"in":{"tensor":[%d.0,2.0,3.0,4.0]},"out":{"variable":[%d.0]},"elapsed_ns":[1000],'
    '"models":[["house-model","v1","' + "ab" * 32 + '"]],"v":1}'
)
ROWS_PER_MS = 10
# What a window read may grow RSS by: a fixed part (the page in hand, the consumer's
# buffer, Arrow's first use in the process: ~30 MB measured) plus a multiple of the table
# it returns (the rows held as Arrow columns, and the final newest-first sort's copy).
FIXED_MB = 45
PER_TABLE_MB = 4


def fill_fast(server: NatsServer, first: int, n: int, t0: int) -> None:
    """Rows ``first..first+n-1`` of edge-a, ROWS_PER_MS to a millisecond from ``t0``, in
    pages as the collector appends them, formatted from one template (fast)."""

    def pages() -> Iterator[tuple[str, bytes, dict[str, str]]]:
        for a in range(first, first + n, PAGE_ROWS):
            seqs = range(a, min(a + PAGE_ROWS, first + n))
            body = "\n".join([LINE % (s, t0 + s // ROWS_PER_MS, s, s) for s in seqs])
            headers = {
                subjects.HEADER_FIRST_SEQ: str(seqs[0]),
                subjects.HEADER_LAST_SEQ: str(seqs[-1]),
                subjects.HEADER_ROWS: str(len(seqs)),
                subjects.HEADER_PIPELINE: "house",
                subjects.HEADER_WORKSPACE: "1",
                subjects.HEADER_PARTITION: "edge-a",
            }
            yield subjects.pipeline_log(1, "house", "edge-a"), body.encode(), headers

    append(server, pages())


def read_in_a_process(server: NatsServer, t0: int, first: int, last: int) -> dict[str, Any]:
    """Rows ``first..last-1`` (a window of their times) read by ``pipeline.logs`` in a
    process of its own."""
    s = server.settings()
    start, end = (str(t0 + x // ROWS_PER_MS) for x in (first, last))
    out = subprocess.run(
        [sys.executable, "-c", READER, s.url, s.user or "", s.password or "", start, end],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"window of {got['rows']} rows: peak RSS growth {got['peak_mb']:.1f} MB "
          f"(table {got['table_mb']:.1f} MB), read in {got['s']:.1f} s")  # fmt: skip
    assert got["rows"] == last - first and got["first"] == float(first)
    assert got["warnings"] == []
    assert got["peak_mb"] < FIXED_MB + PER_TABLE_MB * got["table_mb"], got
    return got


def test_memory_grows_with_the_window_not_with_the_stream(
    nats_server: NatsServer, client: Client
) -> None:
    """A 10 k-row window of a 100 k-row log, then of a 1 M-row log (~280 MB of NDJSON),
    then windows of 100 k and 1 M rows of it. Every page was appended
    after its rows (within LATE_SLACK_MS), so every read streams through every page from
    its window's start to the end of the log: what it holds is its window as Arrow
    columns, the page it is reading and the consumer's bounded buffer."""
    t0 = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    line = LINE % (7, t0, 7, 7)
    assert decode_line(line.encode()) == rows(7, 1, t0, 0, "v1", **V1)[0]
    fill_fast(nats_server, 0, 100_000, t0)
    small = read_in_a_process(nats_server, t0, 10_000, 20_000)
    fill_fast(nats_server, 100_000, 900_000, t0)
    larger_log = read_in_a_process(nats_server, t0, 10_000, 20_000)
    assert larger_log["peak_mb"] < small["peak_mb"] + 15  # ten times the log: about the same
    read_in_a_process(nats_server, t0, 500_000, 600_000)
    read_in_a_process(nats_server, t0, 0, 1_000_000)
