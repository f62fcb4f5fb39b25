#!/usr/bin/env bash
# The README's first command: set up this machine, then run the end-to-end demo on the
# embedded stack (a local JetStream server and OCI registry started for you).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/edgepub demo "$@"
