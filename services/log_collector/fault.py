"""A test-only fault seam: the process dies right after its N-th append, before any of the
batch's pages is acked (``EDGEPUB_FAULT_EXIT_AFTER_APPENDS=N``; 0, the default, is off).

The fault matrix's "collector killed after append, before ack" cell: the batch is in the
pipeline log, its pages are still unacked on the durable consumer and come back to another
collector, which must find them in Ops and append nothing twice. A SIGKILL from outside
lands in that gap only by chance; this exits there every time. Read once at start (the
settings); when off the collector holds no seam at all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import structlog

log = structlog.get_logger("edgepub.log_collector")

EXIT_CODE = 137  # what a shell reports for a SIGKILLed process


def exit_after_appends(n: int) -> Callable[[], None] | None:
    """None when ``n`` is 0 (off); else a call to make after each append returned, which
    exits the process (``os._exit``: no cleanup, no ack, as a kill) at the ``n``-th."""
    if n <= 0:
        return None
    done = 0

    def appended() -> None:
        nonlocal done
        done += 1
        if done < n:
            return
        log.warning(
            "fault_exit",
            appends=done,
            exit_code=EXIT_CODE,
            setting="EDGEPUB_FAULT_EXIT_AFTER_APPENDS",
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)

    return appended
