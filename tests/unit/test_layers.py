"""The import contracts (pyproject.toml, checked by lint-imports in the test command) name
the SDK's modules one by one, because the SDK is the root of the `edgepub` package: keep
that list equal to what sdk/ holds, so a new SDK module is held to the contracts too."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def test_the_sdk_contract_names_every_sdk_module() -> None:
    on_disk = {f"edgepub.{p.stem}" for p in (ROOT / "sdk").glob("*.py") if p.stem != "__init__"}
    contracts = _contracts()
    sdk = contracts["the SDK reaches services only over the bus"]
    assert set(sdk["source_modules"]) == on_disk  # type: ignore[arg-type]
    shared = contracts["shared imports no service, no agent and no SDK"]
    assert on_disk <= set(shared["forbidden_modules"])  # type: ignore[arg-type]
