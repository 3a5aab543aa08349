"""The connector contract: records, the ``Connector`` protocol and the error tree.

A connector reads one CRM and yields plain, immutable records. It never writes to
the store; the sync engine (``sync.engine``) does that. Everything a connector
hands over is defined here, so a package outside this repository can add a CRM
by depending on this module alone and registering an entry point in the group
``sales_velocity.connectors`` (see ``connectors.load_connector``).

The stream a connector returns from ``deals(since)`` carries three kinds of item:

* ``Deal``: one deal, with every datetime time-zone aware and in UTC;
* ``Rejected``: a record that could not be read (where, why); the rest go on;
* ``Checkpoint``: "everything up to here is covered by this cursor". The engine
  commits the cursor in the same transaction as the deals before it, so a crash
  re-pulls from the last checkpoint and never skips. ``complete=True`` on a
  checkpoint means the pull so far held *every* live deal of the source (a full
  export or a full sweep); deals the store has that were not in it are gone.

Errors are grouped by what the caller should do about them::

    VelocityError
    ├── ConfigError                 fix the configuration (every problem, with its key path)
    ├── ConnectorError              something went wrong talking to a CRM
    │   ├── RetriableAPIError       try again later (429, 5xx, timeouts)
    │   │   └── RateLimitError      the CRM said "slow down" (carries retry_after)
    │   ├── FatalAPIError           fail this source for this run; the others go on
    │   │   ├── AuthError           token rejected or missing a scope
    │   │   └── BudgetExhaustedError  the daily API budget is spent; resume next run
    │   └── SkippableRecordError    skip one record, keep the rest (where, reason)
    └── StoreError                  the local store is unusable (raised by ``sync``)

No error message ever contains a token: connectors build messages from status
codes, ids and field names, never from request headers or URLs with credentials.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = [
    "AuthError",
    "BudgetExhaustedError",
    "Checkpoint",
    "ConfigError",
    "ConfigProblem",
    "Connector",
    "ConnectorError",
    "ConnectorFactory",
    "Deal",
    "DealStatus",
    "FatalAPIError",
    "Owner",
    "Pipeline",
    "RateLimitError",
    "Rejected",
    "RetriableAPIError",
    "SkippableRecordError",
    "SourceSettings",
    "Stage",
    "StageVisit",
    "StoreError",
    "StreamItem",
    "TimeZoneName",
    "VelocityError",
]

DealStatus = Literal["open", "won", "lost", "deleted"]
"""Where a deal stands. ``deleted`` deals are kept in the store, never removed."""

DEAL_STATUSES: tuple[DealStatus, ...] = ("open", "won", "lost", "deleted")
_DATETIME_FIELDS = ("created_at", "closed_at", "stage_entered_at", "next_activity_at",
                    "last_activity_at", "updated_at")
_UTC = dt.UTC
_ZERO = dt.timedelta(0)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a pipeline, as the CRM defines it.

    ``is_won``/``is_lost`` come from the CRM's stage metadata (never from the
    label). ``rotting_days`` is the CRM's own "stuck after N days" setting
    (Pipedrive's rotting days) when it has one.
    """

    external_id: str
    pipeline: str
    name: str
    order: int = 0
    probability: Decimal | None = None
    is_won: bool = False
    is_lost: bool = False
    rotting_days: int | None = None


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A sales pipeline and its ordered stages."""

    external_id: str
    name: str
    order: int = 0
    stages: tuple[Stage, ...] = ()


@dataclass(frozen=True, slots=True)
class Owner:
    """A deal owner (a seller); ``email`` is where their reminders go."""

    external_id: str
    name: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class StageVisit:
    """A CRM-provided record that a deal entered ``stage`` at ``entered_at`` (UTC)."""

    stage: str
    entered_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Deal:
    """One deal, as read from a CRM. Immutable; every datetime is aware UTC.

    ``pipeline``, ``stage`` and ``owner`` are the CRM's external ids (the CSV
    feed uses the names themselves as ids). ``amount`` is in ``currency``
    (``None`` means the source's base currency). ``whole_days`` says that
    ``created_at``/``closed_at`` came as dates without a time, so cycle lengths
    are counted in whole days. ``stage_history`` holds CRM-provided stage entry
    dates where the CRM has them; otherwise the engine records changes as it
    observes them.
    """

    source: str
    external_id: str
    title: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    pipeline: str | None = None
    stage: str | None = None
    status: DealStatus = "open"
    archived: bool = False
    owner: str | None = None
    created_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    expected_close_date: dt.date | None = None
    stage_entered_at: dt.datetime | None = None
    next_step: str | None = None
    next_activity_at: dt.datetime | None = None
    last_activity_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    link: str | None = None
    whole_days: bool = False
    stage_history: tuple[StageVisit, ...] = ()
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.status not in DEAL_STATUSES:
            raise ValueError(f"status must be one of {DEAL_STATUSES}, got {self.status!r}")
        for name in _DATETIME_FIELDS:
            value = getattr(self, name)
            if value is None or value.tzinfo is _UTC:  # the common case, checked cheaply
                continue
            if value.tzinfo is None or value.utcoffset() != _ZERO:
                raise ValueError(f"{name} must be an aware UTC datetime, got {value!r}")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record the connector could not read; it is reported and skipped.

    ``where`` locates it for a person ("line 17", "deal 9575524881"),
    ``reason`` says what is wrong with it.
    """

    where: str
    reason: str
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything yielded so far is covered by ``cursor``; safe to make it durable.

    ``complete=True`` means the pull up to here contained every live deal of the
    source, so deals missing from it are marked deleted.
    """

    cursor: str | None
    complete: bool = False


StreamItem = Deal | Rejected | Checkpoint
"""One item of a connector's deal stream."""


# --------------------------------------------------------------------------- settings


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Oslo)") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
"""A settings field holding an IANA time zone name, checked when the config is read."""


class SourceSettings(BaseModel):
    """Settings every source has; each connector extends this with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    enabled: bool = True


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Connector(Protocol):
    """What the sync engine needs from a CRM connector.

    ``deals(since)`` streams deals changed at or after the cursor ``since``
    (``None``: everything), page by page, ending with a ``Checkpoint`` whose
    cursor the engine stores for the next run.
    """

    name: str

    def pipelines(self) -> Iterable[Pipeline]:
        """Return the source's pipelines with their stages."""
        ...

    def owners(self) -> Iterable[Owner]:
        """Return the source's deal owners (with e-mail where the CRM has it)."""
        ...

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """Stream deals changed since the cursor ``since`` (``None``: a full pull)."""
        ...

    def check(self) -> str:
        """Make one cheap read-only call; return a short description of what answered."""
        ...


class ConnectorFactory(Protocol):
    """An entry point's target: a class built from its own validated settings."""

    settings_model: ClassVar[type[SourceSettings]]

    def __call__(self, settings: Any) -> Connector:
        """Build a connector from settings of type ``settings_model``."""
        ...


# --------------------------------------------------------------------------- errors


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


class ConnectorError(VelocityError):
    """Something went wrong while reading a CRM."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class RetriableAPIError(ConnectorError):
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


class FatalAPIError(ConnectorError):
    """A failure retrying will not fix; this source fails for this run."""

    def __init__(self, message: str, *, status: int | None = None, source: str | None = None):
        super().__init__(message, source=source)
        self.status = status


class AuthError(FatalAPIError):
    """The CRM rejected the token, or the token lacks a needed scope."""


class BudgetExhaustedError(FatalAPIError):
    """The CRM's daily request budget is spent; the next run resumes from the cursor."""


class SkippableRecordError(ConnectorError):
    """One record is unreadable; report it (``where``, ``reason``) and go on."""

    def __init__(self, where: str, reason: str, *, source: str | None = None) -> None:
        super().__init__(f"{where}: {reason}", source=source)
        self.where = where
        self.reason = reason


class StoreError(VelocityError):
    """The local store cannot be used (unreachable, wrong schema version)."""
