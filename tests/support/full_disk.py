"""A full disk for one real process, without mounts or seams: RLIMIT_FSIZE set on it from
outside (``prlimit``). A write at or past the limit's offset fails with EFBIG (CPython
ignores SIGXFSZ), one that straddles it is cut short; SQLite reports the first as
``disk I/O error`` (SQLITE_IOERR_WRITE) and the second as ``database or disk is full``
(SQLITE_FULL), as it does on a disk that has no room left.

The limit holds for every file the process writes, its stdout too when that is a file
(the agent's log in tests): ``FullDisk.fill`` puts it above what that file may grow to
meanwhile, so the agent keeps logging while its inference log cannot be written.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

Limits = tuple[int, int]


class FullDisk:
    """``fill(at_bytes)`` makes process ``pid``'s disk full at that offset of every file;
    ``free()`` gives it back the limits it had."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before: Limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        self.limit: int | None = None

    def fill(self, at_bytes: int) -> None:
        self.limit = at_bytes
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (at_bytes, self.before[1]))

    def free(self) -> None:
        self.limit = None
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, self.before)


def sizes(*paths: Path) -> dict[str, int]:
    """The size of each file that exists (an SQLite file, its -wal and -shm, a log)."""
    out = {}
    for path in paths:
        try:
            out[path.name] = os.stat(path).st_size
        except FileNotFoundError:
            continue
    return out
