"""One structlog pipeline for the whole application, with secrets masked.

JSON lines when the stream is not a terminal (containers, cron mail), a readable
console on one. ``SecretRedactor`` runs after exceptions are formatted, so a
token never reaches a log line, a traceback or a message printed for people.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import structlog
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoggingSettings", "SecretRedactor", "configure_logging"]


class LoggingSettings(BaseModel):
    """The ``[logging]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    format: str = Field(default="auto", pattern="^(auto|json|console)$",
                        description="auto: console on a terminal, JSON lines otherwise")


class SecretRedactor:
    """A structlog processor that masks known secret values anywhere in an event.

    It runs after exceptions are formatted, so tracebacks are covered too.
    """

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret replaced by ``***``."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        """Mask secrets in every value of the event."""
        if not self.secrets:
            return event
        return {key: self._scrub(value) for key, value in event.items()}

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.redact(str(value))


def configure_logging(settings: LoggingSettings | None = None, secrets: Sequence[str] = (),
                      stream: TextIO | None = None) -> SecretRedactor:
    """One structlog pipeline: console on a terminal, JSON lines elsewhere; secrets masked."""
    settings = settings or LoggingSettings()
    stream = stream or sys.stderr
    redactor = SecretRedactor(secrets)
    as_json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors += [structlog.processors.dict_tracebacks, redactor,
                       structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.processors.format_exc_info, redactor,
                       structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return redactor
