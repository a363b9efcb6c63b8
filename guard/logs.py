"""structlog set up once: console for people, JSON for machines, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from guard.secrets import redact

_SECRET_KEYS = frozenset({"password", "api_key", "apikey", "token", "secret", "authorization"})


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop secret-named fields and scrub passwords out of every string value."""
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    """Whatever sys.stderr is now: tests and embedding programs swap it out."""
    return structlog.PrintLogger(sys.stderr)


def configure(log_format: str = "console", verbose: int = 0) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


get_logger = structlog.get_logger
