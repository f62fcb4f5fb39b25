"""The file ``edgepub up`` writes for ``Client()`` to find it: ``stack.json``.

It is the one contract between the embedded stack (services/stack) and the SDK, so it lives
here, where both may import it. ``edgepub up`` writes it once NATS and the registry are
ready and removes it on the way out. It holds secrets and is written 0600, atomically
(write a temp file, rename), so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from .errors import ConfigError

STACK_FILE = "stack.json"


class StackInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running embedded stack is and how to log in: read by ``Client()``."""

    nats_url: str
    registry: str  # host:port
    registry_repository: str = "edgepub"
    registry_username: str | None = None
    registry_password: str | None = None
    registry_insecure: bool = False
    sdk_user: str | None  # None only on an external NATS without credentials
    sdk_password: str | None
    data_dir: str
    pid: int
    opscenter_host: str | None = None  # where edges connect (OPSCENTER_HOST in bundles)
    dashboard_url: str | None = None  # the fleet dashboard (log in as the SDK user)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$EDGEPUB_HOME``, else ``~/.edgepub``."""
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("EDGEPUB_HOME")
    return Path(home).expanduser() if home else Path.home() / ".edgepub"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case the file already existed with other bits
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_stack_info(directory: Path, info: StackInfo) -> Path:
    path = directory / STACK_FILE
    write_private(path, msgspec.json.format(msgspec.json.encode(info)))
    return path


def remove_stack_info(directory: Path, *, pid: int) -> None:
    """Remove ``stack.json`` if it is still the one process ``pid`` wrote."""
    path = directory / STACK_FILE
    try:
        info = msgspec.json.decode(path.read_bytes(), type=StackInfo)
    except (FileNotFoundError, msgspec.DecodeError):
        return
    if info.pid == pid:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_stack_info(directory: str | os.PathLike[str] | None = None) -> StackInfo:
    """The running embedded stack's endpoints and SDK credentials, or a ConfigError."""
    path = data_dir(directory) / STACK_FILE
    hint = (
        "start one with `edgepub up`, or give Client() the NATS URL and credentials "
        "(or set EDGEPUB_NATS_URL, EDGEPUB_NATS_USER, EDGEPUB_NATS_PASSWORD)"
    )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no embedded stack is running ({path} does not exist); {hint}") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied; {hint}") from None
    try:
        info = msgspec.json.decode(raw, type=StackInfo)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path} is not a valid stack file ({exc}); {hint}") from exc
    if not _alive(info.pid):
        raise ConfigError(
            f"the embedded stack in {path.parent} is not running (process {info.pid} is gone); "
            + hint
        )
    return info
