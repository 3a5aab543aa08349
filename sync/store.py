"""The local SQL store: SQLAlchemy 2.0 models, engine and session factory.

Every CRM-side table is keyed by ``(source, external_id)`` (stages by
``(source, pipeline_id, external_id)``, since CSV exports reuse stage names across
pipelines). Deals are never deleted: a deal gone from the CRM gets
``status='deleted'`` and ``deleted_at``.

Two column types keep the store exact and time-zone safe on every backend:

* ``Money``: ``NUMERIC(20, 4)`` where the database has a decimal type, and a
  scaled integer (units of 1/10,000) on SQLite, whose ``NUMERIC`` is a float.
  Sums stay exact in SQL on both; Python always sees ``Decimal``.
* ``UTCDateTime``: aware UTC in, aware UTC out (SQLite stores naive UTC text).

The schema is created by Alembic (``sync/migrations``); ``upgrade`` runs it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    Date,
    DateTime,
    Dialect,
    Engine,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    event,
    false,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator, TypeEngine

from sales_velocity.kernel.errors import StoreError, StoreNotInitialisedError

__all__ = [
    "STORE_ERRORS",
    "Base",
    "DealChange",
    "DealRow",
    "DealStageEvent",
    "Money",
    "OutboxMessage",
    "OwnerRow",
    "PipelineRow",
    "ReminderState",
    "SourceField",
    "SourceRow",
    "StageRow",
    "SyncLease",
    "SyncReject",
    "SyncRun",
    "SyncState",
    "UTCDateTime",
    "VelocitySnapshot",
    "check_schema",
    "create_private",
    "deal_changes_table",
    "deals_table",
    "ensure_schema",
    "lean_sync_connection",
    "leases_table",
    "make_engine",
    "make_session_factory",
    "outbox_table",
    "owners_table",
    "pipelines_table",
    "reading_only",
    "reminder_state_table",
    "schema_revision",
    "snapshots_table",
    "source_fields_table",
    "sources_table",
    "stage_events_table",
    "stages_table",
    "store_error",
    "sync_rejects_table",
    "sync_runs_table",
    "sync_state_table",
    "upgrade",
]

MONEY_SCALE = Decimal("10000")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Money(TypeDecorator[Decimal]):
    """Exact money: ``NUMERIC(20,4)``, or integer 1/10,000 units on SQLite."""

    impl = Numeric(20, 4)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """Use a scaled integer on SQLite, a real decimal elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, 4, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        """Decimal to the stored form."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return int((Decimal(value) * MONEY_SCALE).to_integral_value())
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """Stored form back to Decimal (sums included)."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-4)  # exact; SUM() stays an integer
        return Decimal(value)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is aware UTC on the way in and on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        """Reject naive datetimes; store UTC (naive on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use aware UTC")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        """Return aware UTC."""
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text from an expression
            value = dt.datetime.fromisoformat(value)
        moment: dt.datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class SourceRow(Base):
    """A configured source (a CRM account or a CSV feed)."""

    __tablename__ = "sources"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    catalog_synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    """When pipelines, stages and owners were last fetched (see ``sync.catalog``)."""


class PipelineRow(Base):
    """A pipeline of a source."""

    __tablename__ = "pipelines"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    display_order: Mapped[int] = mapped_column(Integer, default=0)


class StageRow(Base):
    """A stage of a pipeline, with won/lost flags and the CRM's rotting days."""

    __tablename__ = "stages"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    pipeline_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    display_order: Mapped[int] = mapped_column(Integer, default=0)
    probability: Mapped[Decimal | None] = mapped_column(Numeric(6, 4))
    is_won: Mapped[bool] = mapped_column(Boolean, default=False)
    is_lost: Mapped[bool] = mapped_column(Boolean, default=False)
    rotting_days: Mapped[int | None] = mapped_column(Integer)


class OwnerRow(Base):
    """A deal owner; ``email`` is where reminders go."""

    __tablename__ = "owners"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(300))
    email: Mapped[str | None] = mapped_column(String(320))


class DealRow(Base):
    """A deal as last seen in its CRM. ``content_hash`` detects real changes."""

    __tablename__ = "deals"
    # No secondary indexes: metrics read deals in one grouped scan, and each index
    # cost more on every upsert than any query gained (migration 0003).

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[Decimal | None] = mapped_column(Money())
    currency: Mapped[str | None] = mapped_column(String(3))
    pipeline_id: Mapped[str | None] = mapped_column(String(200))
    stage_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10))
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    owner_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    expected_close_date: Mapped[dt.date | None] = mapped_column(Date)
    stage_entered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    next_step: Mapped[str | None] = mapped_column(Text)
    next_activity_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_activity_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    link: Mapped[str | None] = mapped_column(Text)
    whole_days: Mapped[bool] = mapped_column(Boolean, default=False)
    raw: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    synced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class DealStageEvent(Base):
    """A deal entered a stage at ``entered_at`` (from the CRM, or as observed)."""

    __tablename__ = "deal_stage_events"
    __table_args__ = (
        Index(
            "ux_stage_events",
            "source", "external_id", "stage_id", "entered_at",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(String(200))
    pipeline_id: Mapped[str | None] = mapped_column(String(200))
    stage_id: Mapped[str] = mapped_column(String(200))
    entered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    observed: Mapped[bool] = mapped_column(Boolean, default=False)
    """True when the time is when we saw the change, not a CRM-provided date."""


class DealChange(Base):
    """A tracked field of a deal changed from ``old`` to ``new`` (see ``sync.changes``).

    ``field`` is a deals column: ``stage_id``, ``status``, ``archived``, ``amount``,
    ``currency``, ``expected_close_date``, ``owner_id`` or ``pipeline_id``. Its
    values are in the typed pair of columns that fits it: ``old_amount``/``new_amount``
    (money), ``old_date``/``new_date`` (the close date), else ``old_value``/``new_value``
    (text; ``archived`` as ``true``/``false``). ``changed_at`` is the CRM's time
    where it has one (stage entry, close time), else when the sync saw the change
    (``observed``).
    """

    __tablename__ = "deal_changes"
    __table_args__ = (
        Index("ix_deal_changes_deal", "source", "external_id", "changed_at"),
        Index("ix_deal_changes_changed_at", "changed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(String(200))
    field: Mapped[str] = mapped_column(String(30))
    old_value: Mapped[str | None] = mapped_column(String(200))
    new_value: Mapped[str | None] = mapped_column(String(200))
    old_amount: Mapped[Decimal | None] = mapped_column(Money())
    new_amount: Mapped[Decimal | None] = mapped_column(Money())
    old_date: Mapped[dt.date | None] = mapped_column(Date)
    new_date: Mapped[dt.date | None] = mapped_column(Date)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    observed: Mapped[bool] = mapped_column(Boolean, default=True)
    """True when ``changed_at`` is when the sync saw the change, not a CRM-provided time."""
    sync_run_id: Mapped[int | None] = mapped_column(Integer)


class SyncState(Base):
    """The durable cursor of a source, committed with the deals it covers."""

    __tablename__ = "sync_state"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SourceField(Base):
    """Whether a source provides one canonical deal field (see ``sync.fields``).

    ``provided`` is false when the source never gave the field a value (and did
    not declare it): the field is *unknown* there, not empty. ``declared`` says
    the connector stated it (a CSV header, a CRM's property list) rather than
    the sync having observed a value.
    """

    __tablename__ = "source_fields"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    field: Mapped[str] = mapped_column(String(40), primary_key=True)
    provided: Mapped[bool] = mapped_column(Boolean, default=False)
    declared: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SyncRun(Base):
    """One sync of one source: when, how it ended, what it counted."""

    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_source", "source", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(100))
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20))  # running | ok | failed | interrupted
    seen: Mapped[int] = mapped_column(Integer, default=0)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    """Where the sync runs: a ``running`` row whose process is gone is marked ``interrupted``."""


class SyncReject(Base):
    """A record a sync could not read: where and why (e.g. a CSV line)."""

    __tablename__ = "sync_rejects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sync_run_id: Mapped[int] = mapped_column(Integer, index=True)
    source: Mapped[str] = mapped_column(String(100))
    location: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(200))


class SyncLease(Base):
    """A named lease (``sync:<source>``, ``daily``) with an expiry, for SQLite locking."""

    __tablename__ = "sync_leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    renewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    """The holder's last heartbeat; a lease not renewed within its TTL is taken over."""


class VelocitySnapshot(Base):
    """Velocity and its levers for one scope on one as-of date.

    ``scope`` is ``all``, ``pipeline`` or ``owner``; ``key`` is the stable id
    (``<source>/<external id>``, empty for ``all``) and ``label`` what people read.
    ``velocity`` is ``NULL`` exactly when it is undefined, ``undefined_reason`` says why.
    ``rebuilt`` marks a snapshot reconstructed from deal dates after its day.
    """

    __tablename__ = "velocity_snapshots"

    as_of: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    window_days: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(10), primary_key=True)
    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    label: Mapped[str] = mapped_column(String(400))
    currency: Mapped[str] = mapped_column(String(3))
    opportunities: Mapped[int] = mapped_column(Integer)
    won: Mapped[int] = mapped_column(Integer)
    lost: Mapped[int] = mapped_column(Integer)
    win_rate: Mapped[Decimal | None] = mapped_column(Numeric(12, 10))
    avg_deal_value: Mapped[Decimal | None] = mapped_column(Money())
    cycle_days: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    velocity: Mapped[Decimal | None] = mapped_column(Money())
    undefined_reason: Mapped[str | None] = mapped_column(Text)
    excluded_no_amount: Mapped[int] = mapped_column(Integer, default=0)
    excluded_currency: Mapped[int] = mapped_column(Integer, default=0)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    rebuilt: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """True when rebuilt later from deal dates (first run, ``--since``, back-fill), not taken on the day."""


class OutboxMessage(Base):
    """A message to deliver through one channel; delivered at most once.

    ``dedupe_key`` (e.g. ``digest:2026-11-26``) is unique per channel, so a rerun
    never queues the same message twice; ``status`` moves
    ``pending -> sending -> sent`` (or ``failed`` and back to ``pending``).
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ux_outbox_dedupe", "channel", "dedupe_key", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))  # digest | reminders
    dedupe_key: Mapped[str] = mapped_column(String(400))
    recipient: Mapped[str | None] = mapped_column(String(400))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    """Which run moved the row to ``sending``, and when (``host:pid:run``)."""


class ReminderState(Base):
    """When a ``(deal, rule)`` reminder was last sent, and whether it still holds."""

    __tablename__ = "reminder_state"
    __table_args__ = (
        ForeignKeyConstraint(
            ["source", "external_id"], ["deals.source", "deals.external_id"],
            name="fk_reminder_deal",
        ),
    )

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    rule: Mapped[str] = mapped_column(String(40), primary_key=True)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


# --------------------------------------------------------------------------- engine

STORE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError, sa_exc.PendingRollbackError, StoreError)
"""What a store that went away (server restarted, connection killed, disk full) raises."""


def store_error(error: BaseException) -> StoreError:
    """A one-line ``StoreError`` for a driver error: its class and first line, never the SQL or values.

    SQLAlchemy's own message carries the statement and its parameters (deal
    titles, e-mail addresses); people and ``sync_runs.error`` get only this.
    """
    if isinstance(error, StoreError):
        return error
    cause: BaseException = error  # the first driver error: a failed rollback raises on top of it
    link: BaseException | None = error
    while link is not None:
        if isinstance(link, sa_exc.DBAPIError):
            cause = link
        link = link.__context__
    orig = getattr(cause, "orig", None) or cause
    text = (str(orig).strip().splitlines() or [""])[0]
    return StoreError(f"store error: {type(orig).__name__}: {text}".rstrip(": "))



def make_engine(url: str, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys.

    ``postgresql://`` URLs are routed to psycopg 3. ``read_only`` (``status``,
    ``report``, ``export``): a SQLite file is opened with ``mode=ro`` and nothing
    is ever written, not even the journal mode, so a read-only file, directory
    or mount can be read; where SQLite cannot even keep its shared-memory index
    beside it (a read-only directory), the file is read as ``immutable``.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
    kwargs.setdefault("pool_pre_ping", True)  # one reconnect after a server restart
    engine = create_engine(url, **kwargs)
    if engine.dialect.name != "sqlite":
        return engine
    path = _sqlite_file(engine)
    if read_only and path is not None:
        engine.dispose()
        engine = create_engine(url, creator=lambda: _connect_read_only(path), **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect_read_only)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        return engine
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_file(engine: Engine) -> Path | None:
    """The SQLite database file of ``engine`` (``None`` for memory and ``file:`` URI databases)."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _connect_read_only(path: Path) -> Any:
    """``mode=ro``; ``immutable`` where SQLite cannot create its ``-shm`` file (a read-only directory)."""
    import sqlite3
    from urllib.parse import quote

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
    # Nobody can write beside the file, so nobody is writing it: read it as it is.
    return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30, check_same_thread=False)


def _sqlite_on_connect_read_only(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def create_private(engine: Engine) -> None:
    """Before SQLite creates a store: its directories 0700 and its file 0600 (WAL and SHM follow the file).

    Only what does not exist yet is created; an existing file keeps its mode.
    """
    path = _sqlite_file(engine) if engine.dialect.name == "sqlite" else None
    if path is None or path.exists():
        return
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700)
    previous = os.umask(0o077)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # another process created it first
        pass
    finally:
        os.umask(previous)


_deferred_reads: ContextVar[bool] = ContextVar("velocity_deferred_reads", default=False)


@contextmanager
def reading_only() -> Iterator[None]:
    """SQLite transactions begun inside this block are plain (deferred) read transactions.

    Outside it every SQLite transaction begins ``IMMEDIATE``: it takes the write
    lock up front, so a second writer waits for it (``busy_timeout``) instead of
    failing with "database is locked" when its snapshot went stale in WAL mode.
    Readers that never write (the concurrent metric scans, ``status``, ``report``,
    ``export``) run here, side by side, and work on a read-only file.
    """
    token = _deferred_reads.set(True)
    try:
        yield
    finally:
        _deferred_reads.reset(token)


def _sqlite_begin(conn: Connection) -> None:
    if _deferred_reads.get() or conn.get_execution_options().get("velocity_read_only"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # The driver's own transaction handling is off; SQLAlchemy's "begin" event emits BEGIN.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache: indexes of a million deals
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


SYNC_CACHE_KIB = 16384
"""SQLite page cache (KiB) of the connection a sync writes through (the store's default is 64 MiB)."""


@contextmanager
def lean_sync_connection(conn: Connection) -> Iterator[None]:
    """On SQLite, for a sync: TEMP tables in a temporary file and a 16 MiB page cache; then as before.

    A sync keeps every id it saw and its staging rows in TEMP tables; at a
    million deals those take tens of MB in memory, where a file costs the OS's
    page cache, not the process; so do the pages a big cache would hold (the
    sync reads the deals' indexes in key order, a batch at a time). Changing
    ``temp_store`` deletes the connection's TEMP objects (SQLite does so), so it
    comes before they are made and after they are used. Elsewhere: nothing.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    raw: Any = conn.connection.dbapi_connection  # the driver's own: no transaction begun
    cache = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute("PRAGMA temp_store=FILE")
    raw.execute(f"PRAGMA cache_size=-{SYNC_CACHE_KIB}")
    try:
        yield
    finally:
        raw.execute("PRAGMA temp_store=MEMORY")
        raw.execute(f"PRAGMA cache_size={int(cache)}")


def make_session_factory(engine: Engine) -> sessionmaker[Any]:
    """A session factory that keeps loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


MIGRATION_LOCK_KEY = 0x76656C6F63697479  # "velocity": serialises migrations on PostgreSQL


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (creates it on an empty database).

    On PostgreSQL an advisory lock serialises concurrent upgrades, so several
    containers starting at once against a new database do not race.
    """
    from alembic import command
    from sqlalchemy import func, select

    if engine.dialect.name != "postgresql":
        create_private(engine)
        command.upgrade(_alembic_config(engine), revision)
        return
    with engine.connect() as conn:
        conn.execute(select(func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
        conn.commit()
        try:
            command.upgrade(_alembic_config(engine), revision)
        finally:
            conn.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))
            conn.commit()


def schema_revision(engine: Engine) -> tuple[str | None, str | None]:
    """Return ``(current, head)`` revisions of the store's schema."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def ensure_schema(engine: Engine) -> tuple[str | None, str | None] | None:
    """Create or upgrade the schema to the latest revision if it is behind.

    Returns ``(from, to)`` when it migrated, ``None`` when it was current.

    Raises:
        StoreError: the database cannot be reached (the message names it, password masked).
    """
    from sqlalchemy.exc import SQLAlchemyError

    create_private(engine)
    try:
        current, head = schema_revision(engine)
    except SQLAlchemyError as exc:
        url = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"cannot open the store {url}: {type(exc).__name__}: {exc.args[0]}") from None
    if current == head:
        return None
    upgrade(engine)
    return current, head


def check_schema(engine: Engine) -> None:
    """Raise unless the database is reachable and at the latest revision; never create anything.

    Read-only commands call this instead of ``ensure_schema``: a mistyped URL must
    not grow a fresh schema (or, on SQLite, a new file) in the wrong place.

    Raises:
        StoreNotInitialisedError: no schema there (or no SQLite file): run ``velocity init``.
        StoreError: unreachable, or at an older or unknown revision.
    """
    from sqlalchemy.exc import SQLAlchemyError

    url = engine.url.render_as_string(hide_password=True)
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:") \
            and not Path(database).exists():
        raise StoreNotInitialisedError(f"store not initialised ({url}: no such file): run `velocity init`")
    try:
        current, head = schema_revision(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the store {url}: {type(exc).__name__}: {exc.args[0]}") from None
    if current is None:
        raise StoreNotInitialisedError(f"store not initialised ({url} has no schema): run `velocity init`")
    if current != head:
        raise StoreError(
            f"the store's schema is at {current}, expected {head}; "
            "run `velocity init` to upgrade it"
        )


# --------------------------------------------------------------------------- Core tables
# Typed handles on the tables, for Core statements (bulk upserts and SQL aggregates).

def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


sources_table = _table(SourceRow)
pipelines_table = _table(PipelineRow)
stages_table = _table(StageRow)
owners_table = _table(OwnerRow)
deals_table = _table(DealRow)
stage_events_table = _table(DealStageEvent)
deal_changes_table = _table(DealChange)
sync_state_table = _table(SyncState)
sync_runs_table = _table(SyncRun)
source_fields_table = _table(SourceField)
sync_rejects_table = _table(SyncReject)
leases_table = _table(SyncLease)
snapshots_table = _table(VelocitySnapshot)
outbox_table = _table(OutboxMessage)
reminder_state_table = _table(ReminderState)
