"""structlog set-up: JSON in production, console on a TTY, secrets never in a line.

Redaction works two ways: values under secret-looking keys are masked, and any value
registered with ``register_secret`` is masked wherever it appears inside another string
(an error message quoting a URL with a password, say).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from datetime import date, datetime
from typing import Any

import structlog

MASK = "***"
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "credential",
    "edge_bundle",
    "edgebundle",
    "api_key",
)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(part in low for part in _SECRET_KEY_PARTS)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: MASK if _is_secret_key(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret keys and registered secret values."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = MASK
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _json_default(value: Any) -> Any:
    """What JSON cannot hold as is: times as ISO 8601 (readable and sortable), else repr."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return repr(value)


def configure(*, fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(default=_json_default)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def configure_unless_configured(default_level: str = "warning") -> None:
    """For code used as a library (the SDK): an application's own structlog setup wins;
    otherwise log redacted, at EDGEPUB_LOG_LEVEL (default: warnings and errors only), so a
    notebook shows what needs attention and no secret, not every retry."""
    if structlog.is_configured():
        return
    level = os.environ.get("EDGEPUB_LOG_LEVEL", default_level).lower()
    if level not in {"debug", "info", "warning", "error"}:
        level = default_level
    configure(fmt=os.environ.get("EDGEPUB_LOG_FORMAT", "auto"), level=level)
