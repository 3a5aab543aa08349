"""The whole error tree of sales-velocity, grouped by what the caller should do.

Every error the application raises on purpose is a ``VelocityError``; the CLI
maps the branches to exit codes (``ConfigError``: 2, the others: 1)::

    VelocityError
    ├── ConfigError                 fix the configuration (every problem, with its key path)
    ├── UsageError                  the command line asks for the impossible (exit 2, one line)
    ├── StoreError                  the local store is unusable (unreachable, wrong schema)
    │   └── StoreNotInitialisedError  no schema yet: `velocity init` (read-only commands never create it)
    ├── RemoteError                 a call to another service failed (raised by ``kernel.http``)
    │   ├── RetriableAPIError       try again later (429, 5xx, timeouts, connection resets)
    │   │   └── RateLimitError      the service said "slow down" (carries retry_after)
    │   └── FatalAPIError           fail this source or call for this run; the others go on
    │       ├── AuthError           token rejected or missing a scope
    │       └── BudgetExhaustedError  the daily API budget is spent; resume next run
    ├── SkippableRecordError        skip one record, keep the rest (where, reason)
    └── DeliveryError               a message was not delivered (``channel_down``: stop using
                                    the channel for this run)

No error message ever contains a token: messages are built from status codes,
ids and field names, never from request headers or URLs with credentials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "AuthError",
    "BudgetExhaustedError",
    "ConfigError",
    "ConfigProblem",
    "DeliveryError",
    "FatalAPIError",
    "RateLimitError",
    "RemoteError",
    "RetriableAPIError",
    "SkippableRecordError",
    "StoreError",
    "StoreNotInitialisedError",
    "UsageError",
    "VelocityError",
]


class VelocityError(Exception):
    """Base of every error this application raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration, located by its key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(VelocityError):
    """The configuration is wrong. Carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"{count} configuration problem{'s' if count != 1 else ''}:\n{lines}")

    @classmethod
    def single(cls, path: str, message: str) -> ConfigError:
        """Build an error with one problem."""
        return cls([ConfigProblem(path, message)])


class StoreError(VelocityError):
    """The local store cannot be used (unreachable, wrong schema version)."""


class RemoteError(VelocityError):
    """A call to another service (a CRM's API, a CSV file's host, Slack, a webhook) failed.

    ``source`` names the configured source or channel the call was made for, where known.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class RetriableAPIError(RemoteError):
    """A transient failure (429, 5xx, timeout, connection reset): try again later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, source=source)
        self.status = status
        self.retry_after = retry_after


class RateLimitError(RetriableAPIError):
    """The CRM answered 429: slow down, wait ``retry_after`` seconds when given."""


class FatalAPIError(RemoteError):
    """A failure retrying will not fix; this source fails for this run."""

    def __init__(self, message: str, *, status: int | None = None, source: str | None = None):
        super().__init__(message, source=source)
        self.status = status


class AuthError(FatalAPIError):
    """The CRM rejected the token, or the token lacks a needed scope."""


class BudgetExhaustedError(FatalAPIError):
    """The CRM's daily request budget is spent; the next run resumes from the cursor."""


class SkippableRecordError(VelocityError):
    """One record is unreadable; report it (``where``, ``reason``) and go on."""

    def __init__(self, where: str, reason: str, *, source: str | None = None) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.source = source


class DeliveryError(VelocityError):
    """A message could not be delivered; ``channel_down`` says the channel itself is unusable now."""

    def __init__(self, message: str, *, channel_down: bool = True) -> None:
        super().__init__(message)
        self.channel_down = channel_down


class UsageError(VelocityError):
    """The command line asks for something that cannot be done (exit code 2): one line for people."""


class StoreNotInitialisedError(StoreError):
    """A read-only command found no schema in the store: ``velocity init`` (or a run) creates it."""
