"""structlog set-up: JSON off a terminal, console on one; secrets masked, phone numbers shortened.

Nothing is configured at import; entrypoints call ``configure_logging`` once.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["SecretMasker", "configure_logging", "format_age", "shorten_phone"]

_PHONE_KEYS = frozenset({"to", "recipient", "wa_id", "from_", "customer"})
_SECRET_KEY = re.compile(r"token|secret|password|api_key|authorization", re.IGNORECASE)


def format_age(seconds: float) -> str:
    """A duration as an operator reads it in a table: 45s, 12m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def shorten_phone(number: str) -> str:
    """``+16505551234`` -> ``+1650…34``: enough to tell numbers apart, not to dial one."""
    return number if len(number) <= 7 else f"{number[:5]}…{number[-2:]}"


class SecretMasker:
    """Masks secret-looking keys and any known secret value wherever it appears in an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        """Mask one event in place (a structlog processor)."""
        for key, value in list(event_dict.items()):
            if _SECRET_KEY.search(key):
                event_dict[key] = "***"
            elif key in _PHONE_KEYS and isinstance(value, str):
                event_dict[key] = shorten_phone(value)
            else:
                event_dict[key] = self._scrub(value)
        return event_dict


def configure_logging(
    *,
    log_format: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog and route stdlib logging (arq, uvicorn) through the same masker."""
    masker = SecretMasker(secrets)
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        masker,
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request line at INFO; the outcome line per job says more.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # arq logs each job's arguments at INFO, and ours hold recipients and message text,
    # which the masker cannot find inside a formatted string. waq's own lines replace them.
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
