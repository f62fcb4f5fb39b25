"""Names users choose (models, pipelines): DNS-safe, as Wallaroo requires."""

from __future__ import annotations

import re

from .errors import InvalidNameError

# fullmatch, never match(...$): "$" also matches before a trailing newline.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_LEN = 63


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is DNS-safe, else raise InvalidNameError saying how to fix it."""
    if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name) or len(name) > MAX_LEN:
        raise InvalidNameError(
            f"{kind} name {name!r} is not DNS-safe: use 1-{MAX_LEN} lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'house-price-rf')"
        )
    return name
