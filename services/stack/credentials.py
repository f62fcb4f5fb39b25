"""The embedded stack's credentials on disk: generated on the first start, reused after.

Written 0600 and atomically, like ``stack.json`` (``edgepub.shared.stack_file``, which the
SDK reads too).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from edgepub.shared.errors import ConfigError
from edgepub.shared.stack_file import write_private

from .config import StackCredentials, completed, generate_credentials

CREDENTIALS_FILE = "credentials.json"


def load_or_create_credentials(directory: Path, *, sdk_user: str = "admin") -> StackCredentials:
    """The stack's credentials: generated on the first start, the same ones afterwards."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CREDENTIALS_FILE
    if path.exists():
        try:
            creds = msgspec.json.decode(path.read_bytes(), type=StackCredentials)
        except msgspec.ValidationError as exc:
            raise ConfigError(
                f"{path} is not a valid credentials file ({exc}); "
                "move it away to generate new credentials"
            ) from exc
        if creds.sdk_user in creds.nats_users:
            if not creds.complete:  # a file from before edges: add their keys, keep the rest
                creds = completed(creds)
                write_private(path, msgspec.json.format(msgspec.json.encode(creds)))
            return creds
    creds = generate_credentials(sdk_user)
    write_private(path, msgspec.json.format(msgspec.json.encode(creds)))
    return creds
