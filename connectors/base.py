"""The connector contract: records, settings and the ``Connector`` protocol.

A connector reads one CRM and yields plain, immutable records. It never writes to
the store; the sync engine (``sales_velocity.sync.engine``) does that. Everything a
connector hands over is defined here, so a package outside this repository can add
a CRM by depending on this module (and the error tree in
``sales_velocity.kernel.errors``) and registering an entry point in the group
``sales_velocity.connectors`` (see ``sales_velocity.connectors.build_connector``).
Its tests can hold it to the same contract as ours with
``sales_velocity.kernel.testing.contract``.

The stream a connector returns from ``deals(since)`` carries three kinds of item:

* ``Deal``: one deal, with every datetime time-zone aware and in UTC;
* ``Rejected``: a record that could not be read (where, why); the rest go on;
* ``Checkpoint``: "everything up to here is covered by this cursor". The engine
  commits the cursor in the same transaction as the deals before it, so a crash
  re-pulls from the last checkpoint and never skips. ``complete=True`` on a
  checkpoint means the pull so far held *every* live deal of the source (a full
  export or a full sweep); deals the store has that were not in it are gone.

Besides the contract a connector may offer capabilities, each a small protocol
that callers test for with ``isinstance``: ``ColumnarConnector`` (``batches``:
deals as Arrow tables), ``ClockedConnector`` (``use_clock``: "today" from the
run's clock) and ``SizedConnector`` (``expected_deals``: for a progress bar).

A connector raises the errors of ``sales_velocity.kernel.errors``: a
``FatalAPIError`` fails its source for this run, a ``RetriableAPIError`` that
outlived its retries too; the other sources go on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Checkpoint",
    "ClockedConnector",
    "ColumnarConnector",
    "Connector",
    "ConnectorFactory",
    "Deal",
    "DealStatus",
    "HttpSourceSettings",
    "Owner",
    "Pipeline",
    "Rejected",
    "SizedConnector",
    "SourceSettings",
    "Stage",
    "StageVisit",
    "StreamItem",
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
    source, so deals missing from it are marked deleted. ``failure`` (on the last
    checkpoint, with ``complete=False``) says why a pull that was read to its end
    still counts as a failed sync, e.g. a file whose rows were nearly all rejected:
    what was read is kept, the sync is ``failed`` with this as its error.
    """

    cursor: str | None
    complete: bool = False
    failure: str | None = None


StreamItem = Deal | Rejected | Checkpoint
"""One item of a connector's deal stream."""


# --------------------------------------------------------------------------- settings


class SourceSettings(BaseModel):
    """Settings every source has; each connector extends this with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    enabled: bool = True


class HttpSourceSettings(SourceSettings):
    """Settings of a source read over HTTP: how long one request may take, and how much it may read."""

    request_deadline_seconds: float = Field(
        default=120.0, gt=0, le=3600,
        description="Total time one request may take (connect, headers and body), however the "
        "server trickles its answer; past it the request fails and is not retried.",
    )
    max_response_mib: float = Field(
        default=64, gt=0, le=4096, description="The largest response body read, in MiB.",
    )

    @property
    def max_response_bytes(self) -> int:
        """``max_response_mib`` in bytes."""
        return int(self.max_response_mib * 1024 * 1024)


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Connector(Protocol):
    """What the sync engine needs from a CRM connector.

    ``deals(since)`` streams deals changed at or after the cursor ``since``
    (``None``: everything), page by page, ending with a ``Checkpoint`` whose
    cursor the engine stores for the next run.
    """

    name: str
    kind: str

    @property
    def settings(self) -> SourceSettings:
        """The validated ``[[sources]]`` table the connector was built from."""
        ...

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


# What a connector may offer besides the contract; callers test for it with ``isinstance``.


@runtime_checkable
class ColumnarConnector(Protocol):
    """A connector that can hand most deals over as Arrow tables (the CSV feed).

    ``batches(since)`` is ``deals(since)`` with runs of deals as one
    ``pyarrow.Table`` each, in the columns of ``sales_velocity.sync.batch``: the
    same deals, rejects and checkpoints. The sync engine pulls through it when
    a connector has it.
    """

    def batches(self, since: str | None) -> Iterator[StreamItem | pa.Table]:
        """Stream as ``deals(since)`` does, deals mostly as Arrow tables."""
        ...


@runtime_checkable
class ClockedConnector(Protocol):
    """A connector whose records depend on "today" (the demo feed's date shift)."""

    def use_clock(self, now: Callable[[], dt.datetime]) -> None:
        """Take "now" from ``now`` (the scheduler hands over its run's clock before a pull)."""
        ...


@runtime_checkable
class SizedConnector(Protocol):
    """A connector that can tell about how many deals a pull will read (for a progress bar)."""

    def expected_deals(self) -> int | None:
        """About how many deals a pull reads; ``None`` when it cannot tell."""
        ...


class ConnectorFactory(Protocol):
    """An entry point's target: a class built from its own validated settings."""

    settings_model: ClassVar[type[SourceSettings]]

    def __call__(self, settings: Any) -> Connector:
        """Build a connector from settings of type ``settings_model``."""
        ...
