#!/usr/bin/env bash
# The README's second command: set up this machine, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy (strict)"
.venv/bin/mypy -p edgepub
echo "==> import contracts (pyproject.toml [tool.importlinter])"
.venv/bin/lint-imports
echo "==> pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
