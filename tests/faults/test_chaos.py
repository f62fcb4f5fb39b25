"""Chaos, quick (in CI): a minute of seeded random faults on every kind of process while
real agents log and pipelines are published; then sent = rows at Ops + rows counted in gap
records, no duplicates, per-edge order, every publish ended. The seed is printed (and
``EDGEPUB_CHAOS_SEED`` replays it); the schedule is printed when the test fails."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from support.chaos import run
from support.servers import RegistryServer

pytestmark = pytest.mark.timeout(600)


def test_chaos_every_row_once_every_publish_ended(tmp_path: Path, registry: RegistryServer) -> None:
    seed = int(os.environ.get("EDGEPUB_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed {seed} (EDGEPUB_CHAOS_SEED={seed} replays it)")
    duration = float(os.environ.get("EDGEPUB_CHAOS_S", "45"))
    result = run(tmp_path, registry, seed=seed, duration_s=duration)
    print(json.dumps(result))
    assert result["faults_injected"] >= 10, result["schedule"]
    assert result["rows_sent"] > 0
    assert result["rows_at_ops"] + result["gap_rows"] == result["rows_sent"], result["schedule"]
    assert result["publishes"], "no publish was attempted"
    assert all(p in ("Published", "Error") for p in result["publishes"]), result["publishes"]
