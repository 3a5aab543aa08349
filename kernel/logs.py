"""One structlog pipeline for the whole application, with secrets masked.

JSON lines when the stream is not a terminal (containers, cron mail), a readable
console on one. ``SecretRedactor`` runs after exceptions are formatted, so a
token never reaches a log line, a traceback or a message printed for people.

On a terminal people read the commands' own summaries, so developer events
(``info``) are shown only when asked for (``--log-level info``); off a terminal
the default level is ``info``. Colour follows the terminal (``NO_COLOR`` and
``TERM=dumb`` turn it off). Tracebacks never carry frame locals: one local can
hold a page of owner names or a token.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import structlog
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoggingSettings", "SecretRedactor", "colour_supported", "configure_logging"]


class LoggingSettings(BaseModel):
    """The ``[logging]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str | None = Field(default=None, pattern="^(debug|info|warning|error)$",
                              description="default: warning on a terminal, info otherwise")
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


def colour_supported(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is a terminal that shows colour (``NO_COLOR``/``TERM=dumb`` say no)."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    return bool(env.get("FORCE_COLOR")) or stream.isatty()


def configure_logging(settings: LoggingSettings | None = None, secrets: Sequence[str] = (),
                      stream: TextIO | None = None) -> SecretRedactor:
    """One structlog pipeline: console on a terminal, JSON lines elsewhere; secrets masked."""
    settings = settings or LoggingSettings()
    stream = stream or sys.stderr
    redactor = SecretRedactor(secrets)
    tty = stream.isatty()
    level = settings.level or ("warning" if tty else "info")
    as_json = settings.format == "json" or (settings.format == "auto" and not tty)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        processors += [structlog.processors.ExceptionRenderer(no_locals), redactor,
                       structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.processors.format_exc_info, redactor,
                       structlog.dev.ConsoleRenderer(colors=colour_supported(stream),
                                                     exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return redactor
