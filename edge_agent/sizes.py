"""Storage sizes as the seed writes them: ``<number><Ki|Mi|Gi|Ti>`` (Kubernetes binary units)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

UNITS: dict[str, int] = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti)")
EXPECTED = "a size like 512Mi or 1Gi: a number followed by one of Ki, Mi, Gi, Ti"


class SizeError(ValueError):
    """A size string that is not ``<number><unit>``; the message says what is expected."""


def parse_size(text: str) -> int:
    """``"1.5Gi"`` -> 1610612736 bytes (rounded down to a whole byte).

    Only the binary units the seed lists are accepted; ``1G``, ``1gi`` or ``1 Gi`` are
    refused rather than guessed at.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise SizeError(EXPECTED)
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # the regex admits only digits, so this is defensive
        raise SizeError(EXPECTED) from None
    return int(number * UNITS[match["unit"]])


def format_size(size: int) -> str:
    """The largest unit that divides ``size`` exactly (``format_size(parse_size(s))`` is stable)."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if size >= UNITS[unit] and size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]}{unit}"
    return f"{size}B"
