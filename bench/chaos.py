"""Chaos run: seeded random faults on every kind of process for 30 minutes (quick: 2),
while real edge agents log through cuttable links into a three-node cluster with the
services scaled out and pipelines are published (``tests/support/chaos.py`` says what
each fault is). At the end every row must be accounted for.

    .venv/bin/python bench/chaos.py [--quick] [--seconds S] [--seed N]

The seed and the fault schedule are printed to stderr so a failure can be replayed; the
last line is one JSON object: ``faults_injected``, ``rows_sent``, ``rows_at_ops``,
``gap_rows``, ``duplicates``, ``order_violations``, ``publishes`` (each one's end), the
seed and ``ok``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.chaos import run
from support.servers import RegistryServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 minutes of faults")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    seconds = args.seconds or (120.0 if args.quick else 1800.0)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"chaos seed {seed}, {seconds:g}s of faults", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="edgepub-chaos-") as tmp:
        registry = RegistryServer(Path(tmp) / "registry").start()
        try:
            result = run(Path(tmp), registry, seed=seed, duration_s=seconds)
        finally:
            registry.kill()
    schedule = result.pop("schedule")
    for fault in schedule:
        print(json.dumps(fault), file=sys.stderr)
    ended = all(p in ("Published", "Error") for p in result["publishes"])
    exact = result["rows_at_ops"] + result["gap_rows"] == result["rows_sent"]
    result["publishes"] = {p: result["publishes"].count(p) for p in set(result["publishes"])}
    result["errors"] = len(result["errors"])
    result["ok"] = ended and exact
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
