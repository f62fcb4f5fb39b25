"""The SDK, used as a library with no logging of its own set up, logs warnings and errors
only, redacted; an application's own structlog setup is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import structlog
from edgepub.shared import logs
{setup}
logs.register_secret("s3cret-value")
logs.configure_unless_configured()
log = structlog.get_logger("edgepub.sdk")
log.debug("request_unanswered", verb="publish.publish.create")
log.warning("nats_error", error="auth s3cret-value refused")
"""


def _run(setup: str = "", **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPUB_")}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(setup=setup)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def test_by_default_only_warnings_and_no_secret() -> None:
    out = _run()
    assert "request_unanswered" not in out
    assert "nats_error" in out and "s3cret-value" not in out


def test_the_level_can_be_raised() -> None:
    assert "request_unanswered" in _run(EDGEPUB_LOG_LEVEL="debug")


def test_an_applications_own_setup_wins() -> None:
    setup = "structlog.configure(processors=[structlog.processors.KeyValueRenderer()])"
    out = _run(setup)
    assert "event='request_unanswered'" in out  # its level, its renderer
