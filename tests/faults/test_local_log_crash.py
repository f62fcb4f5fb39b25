"""The local log after SIGKILL at random moments: a child appends in a loop and is killed
N times (seeded; the seed is printed); after each kill the log opens with no manual step,
holds exactly the rows the child saw committed (or also the batch it was writing), and
its seqs are strictly increasing and never reused across restarts."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgepub.edge_agent.local_log import SqliteLog
from edgepub.shared.log_lines import GapLine, decode_line

KILLS = 8
CHILD = r"""
import asyncio, os, random, sys
from pathlib import Path
import numpy as np
from edgepub.edge_agent.inference_log import InferenceEvent, ModelUsed
from edgepub.edge_agent.local_log import SqliteLog

path, seed, report = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)

def event(n):
    x = np.full((n, 18), 0.5, dtype="float32")
    return InferenceEvent(time=1, pipeline=rng.choice(["p1", "p2"]), pipeline_version="v",
        records=n, inputs={"x": x}, outputs={"y": x[:, :1]}, elapsed_ns=[1],
        model_versions=(ModelUsed("m", "1", "ab" * 32),), partition="e")

async def main():
    log = await SqliteLog.open(path, bound_bytes=1 << 30)
    os.write(report, b"open %d\n" % log.last_seq)
    while True:
        batch = [event(rng.randint(1, 50)) for _ in range(rng.randint(1, 20))]
        os.write(report, b"writing %d\n" % sum(e.records for e in batch))
        await log.write(batch)
        os.write(report, b"committed %d %d\n" % (log.last_seq, log.write_failures))

asyncio.run(main())
"""


def outcome(report: Path) -> tuple[int, int]:
    """Rows the child saw committed, and rows of the batch it was writing when killed."""
    committed = pending = 0
    for line in report.read_text().splitlines():
        word, *nums = line.split()
        if word == "writing":
            pending = int(nums[0])
        elif word == "committed":
            assert nums[1] == "0", "a write failed"
            committed += pending
            pending = 0
    return committed, pending


async def drain_log(path: Path) -> tuple[int, list[int], int]:
    """Open as the agent would, read every line after the watermark, ack them all."""
    log = await SqliteLog.open(path, bound_bytes=1 << 30)
    assert log.corrupt_files == 0 and log.write_failures == 0
    rows, seqs, after = 0, [], log.watermark
    while (page := await log.read_page(after, 1000, 1 << 20)) is not None:
        for raw in page.lines():
            line = decode_line(raw)
            if isinstance(line, GapLine) and (line.gap.reason, line.gap.count) == ("reset", 0):
                continue  # a fresh file's first line
            assert not isinstance(line, GapLine)
            seqs.append(line.seq)
            rows += 1
        after = page.last_seq
    await log.ack(after)
    watermark = log.watermark
    await log.close()
    return rows, seqs, watermark


def test_sigkill_at_random_moments_loses_no_committed_row_and_reuses_no_seq(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("EDGEPUB_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    path = tmp_path / "logs" / "inference.db"
    every_seq: list[int] = []
    for kill in range(KILLS):
        report = tmp_path / f"report-{kill}"
        fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(seed + kill), str(fd)], pass_fds=(fd,)
        )
        os.close(fd)
        deadline = time.monotonic() + 30
        while "committed" not in report.read_text():  # it got going: kill it at random
            assert child.poll() is None and time.monotonic() < deadline, report.read_text()
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        committed, pending = outcome(report)
        rows, seqs, watermark = asyncio.run(drain_log(path))
        assert committed <= rows <= committed + pending, (seed, kill, committed, pending, rows)
        assert rows in (committed, committed + pending)
        assert seqs == sorted(set(seqs)), f"seed={seed}: seqs not strictly increasing"
        assert not every_seq or not seqs or seqs[0] > every_seq[-1], f"seed={seed}: seq reused"
        assert watermark == (seqs[-1] if seqs else watermark)
        every_seq.extend(seqs)
    assert len(every_seq) == len(set(every_seq)) and every_seq
