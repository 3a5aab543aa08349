"""The sync engine: pull -> upsert -> stage history -> checkpoint, for one source.

``sync_source`` drives one connector:

1. records a ``sync_runs`` row (status ``running``);
2. refreshes the source's pipelines, stages and owners when they are due
   (``sync.catalog``: first sync, ``full``, too old, or a deal refers to an
   unknown one);
3. streams ``connector.batches(since)`` where the connector offers it (Arrow
   tables, as the CSV feed does), else ``connector.deals(since)`` (``since`` = the
   stored cursor, or ``None`` for a full pull), and writes deals batch by batch
   (``_Writer.write_batch``, the per-batch write function): records are turned
   into an Arrow batch (``sync.batch``), unchanged deals (same content hash) are
   left alone, the rest go through a staging table and a few set-based
   statements (``sync.staging``), so a re-sync of unchanged data writes nothing;
4. adds a ``deal_stage_events`` row for every stage a deal enters (the CRM's own
   dates where it provides them, else as observed), and a ``deal_changes`` row
   for every tracked field that changed (stored row vs staged row, dated as
   ``sync.changes`` dates them);
5. at each ``Checkpoint`` writes the pending deals *and* the cursor in one
   transaction, so a crash re-pulls from the last committed checkpoint and never
   skips. A checkpoint is held back (never written before its deals) while fewer
   than ``batch_size`` deals are buffered and no commit is due, and commits when
   ``COMMIT_EVERY`` deals or ``COMMIT_INTERVAL_S`` seconds have gone by since the
   last commit (pages from a rate-limited CRM commit one by one; a fast feed is
   written in large batches), and when the connector fails, everything up to its
   last checkpoint is committed;
6. after a ``complete`` checkpoint, marks the source's deals that the pull did not
   contain as ``deleted`` (never deleting rows).

A ``RemoteError`` (or any other exception) ends the pull with status
``failed``; what was committed before stays. A store error (the server restarted,
the connection was killed, the disk is full) fails the source the same way, and
the run's row is closed on a fresh connection (``pool_pre_ping`` reconnects once).
One source failing never raises out of ``sync_source`` once its run row is
written: the caller decides what the run's exit code is.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import sqlalchemy as sa
import structlog

from sales_velocity.connectors.base import Checkpoint, ColumnarConnector, Connector, Deal, Rejected
from sales_velocity.kernel.errors import RemoteError
from sales_velocity.sync.batch import deals_to_batch, is_batch, returning_memory_pool
from sales_velocity.sync.catalog import KnownCatalog, catalog_due, dialect_insert, load_known, refresh_catalog
from sales_velocity.sync.changes import changes_from_select
from sales_velocity.sync.deadline import bounded
from sales_velocity.sync.fields import FieldTracker, declared_fields, declares_fields, record_fields
from sales_velocity.sync.rows import RowEncoder
from sales_velocity.sync.staging import Stager
from sales_velocity.sync.store import (
    STORE_ERRORS,
    deals_table,
    lean_sync_connection,
    store_error,
    sync_rejects_table,
    sync_runs_table,
    sync_state_table,
)

__all__ = ["SyncResult", "read_cursor", "sync_source"]

log = structlog.get_logger(__name__)

Clock = Callable[[], dt.datetime]
SyncStatus = Literal["ok", "failed", "skipped"]

DEFAULT_BATCH_SIZE = 10_000
COMMIT_EVERY = 10_000
"""Deals written since the last commit after which a checkpoint commits."""
COMMIT_INTERVAL_S = 1.0
"""Seconds since the last commit after which a checkpoint commits."""
DEFAULT_CATALOG_MAX_AGE = dt.timedelta(hours=6)
MAX_LOGGED_REJECTS = 20
STORE_DATA_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.DataError, sa.exc.IntegrityError, OverflowError, UnicodeError,
)
"""What a store raises for a value it cannot hold: the batch is bisected to find the row."""

_seen_meta = sa.MetaData()
seen_t = sa.Table(
    "sync_seen_ids",
    _seen_meta,
    sa.Column("external_id", sa.String(200), primary_key=True),
    prefixes=["TEMPORARY"],
)


@dataclass
class SyncResult:
    """What one sync of one source did."""

    source: str
    status: SyncStatus = "ok"
    full: bool = False
    seen: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0
    error: str | None = None
    duration_s: float = 0.0
    run_id: str = ""
    rejects: list[Rejected] = field(default_factory=list, repr=False)
    """The first rejected records (at most ``MAX_LOGGED_REJECTS``), for people."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_cursor(conn: sa.Connection, source: str) -> str | None:
    """Return the stored cursor of ``source`` (``None`` before its first sync)."""
    state = sync_state_table
    return conn.execute(sa.select(state.c.cursor).where(state.c.source == source)).scalar()


class _Writer:
    """Buffers one source's stream items and writes them batch by batch."""

    def __init__(
        self, conn: sa.Connection, source: str, run_pk: int, now: Clock, batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.conn = conn
        self.source = source
        self.run_pk = run_pk
        self.now = now
        self.batch_size = batch_size
        self.progress = progress
        self.deals: dict[str, Deal] = {}
        self.rejects: list[Rejected] = []
        self.rejected_ids: list[str] = []
        self.result = SyncResult(source=source)
        self.track_seen = False
        self.known: KnownCatalog | None = None
        """Set when the catalog was not refreshed: deals referring to new ids refresh it."""
        self.encoder = RowEncoder(conn.dialect.name)
        self.stager = Stager(conn, source, run_pk)
        self.fields: FieldTracker | None = None
        """Set for connectors that do not declare their fields: the sync observes them."""
        self.uncommitted = 0
        self.committed_at = time.monotonic()
        self.pending: Checkpoint | None = None
        """A checkpoint held back until more deals are buffered (see ``checkpoint``)."""
        self.covered: dict[str, Deal] = {}
        """The buffered deals the held-back checkpoint covers."""
        self.defer = False

    def bind_run(self, run_pk: int) -> None:
        """Tie what this writer writes (rejects, field changes) to the run row ``run_pk``."""
        self.run_pk = self.stager.run_pk = run_pk

    def commit(self) -> None:
        """Commit what is written (deals, and the cursor of the last checkpoint)."""
        self.conn.commit()
        self.uncommitted = 0
        self.committed_at = time.monotonic()
        if self.progress is not None:  # after the commit: the hook may write through another connection
            self.progress(self.result.seen)

    def commit_due(self, pending: int = 0) -> bool:
        """Whether enough work (``pending`` deals not yet written included) or time has passed."""
        return (self.uncommitted + pending >= COMMIT_EVERY
                or time.monotonic() - self.committed_at >= COMMIT_INTERVAL_S)

    def add(self, item: Deal | Rejected | pa.Table | pa.RecordBatch) -> None:
        """Take one stream item: a deal (buffered), a rejected record, or a columnar batch."""
        if isinstance(item, Rejected):
            self.rejects.append(item)
            if item.external_id:  # still in the source, just unreadable: not a deletion
                self.rejected_ids.append(item.external_id)
            self.result.rejected += 1
            if len(self.result.rejects) < MAX_LOGGED_REJECTS:
                self.result.rejects.append(item)
                log.warning("sync.rejected", where=item.where, reason=item.reason)
            return
        if is_batch(item):
            table = item if isinstance(item, pa.Table) else pa.Table.from_batches([item])
            self.flush()  # the deals before it first: a later version wins
            if len(table):
                self.result.seen += len(table)
                self.uncommitted += len(table)
                self._write_isolated(table)
                if self.commit_due():
                    self.commit()
            return
        if not isinstance(item, Deal):
            raise TypeError(f"not a stream item: {type(item).__name__}")
        if self.fields is not None:
            self.fields.see(item)
        if item.external_id in self.deals:  # a later version in the same batch wins
            self.result.seen -= 1
        self.deals[item.external_id] = item
        self.result.seen += 1
        if len(self.deals) >= self.batch_size:
            self.flush()
            if self.commit_due():
                self.commit()

    def flush(self) -> None:
        """Write buffered deals (as one batch) and rejects (the caller commits)."""
        if self.rejects:
            self.conn.execute(
                sync_rejects_table.insert(),
                [
                    {"sync_run_id": self.run_pk, "source": self.source, "location": r.where,
                     "reason": r.reason, "external_id": r.external_id}
                    for r in self.rejects
                ],
            )
            self.rejects = []
        if self.track_seen and self.rejected_ids:
            self.conn.exec_driver_sql(self.encoder.insert_seen_sql,
                                      [(key,) for key in self.rejected_ids])
            self.rejected_ids = []
        if not self.deals or self.defer:
            return
        batch = list(self.deals.values())
        self.deals = {}
        self.uncommitted += len(batch)
        self._write_isolated(batch)
        if self.rejects or self.rejected_ids:
            self.flush()  # write the rejects of the rows the store refused

    def write_batch(self, table: pa.Table) -> None:
        """Write one batch of deals set-based (``sync.staging``); the caller commits.

        New and changed deals are upserted, unchanged ones left alone; stage
        events and field changes are added; the ids are noted for delete detection.
        """
        now = self.now()
        counts, refs = self.stager.write(table, now, self.encoder.timestamp(now),
                                         refs=self.known is not None and not self.known.stale)
        if self.track_seen:
            self.stager.mark_seen()
        self.result.inserted += counts.inserted
        self.result.updated += counts.updated
        self.result.unchanged += counts.unchanged
        if self.known is not None:
            for pipeline, stage, owner in zip(*(refs[c].to_pylist() for c in refs.column_names),
                                              strict=True):
                self.known.check_ids(pipeline, stage, owner)

    def _write_isolated(self, part: pa.Table | list[Deal]) -> None:
        """Write a batch (a table, or buffered deals) in a savepoint; on a data error, bisect it.

        A batch the store refuses is halved, recursively, down to the single rows it
        refuses, which become ``Rejected`` with the store's reason (written by the
        next ``flush``, never inside a savepoint that may roll back). Connectors
        validate records first (``connectors.validate``); this is the net for what
        they could not foresee.
        """
        result = self.result
        counts = (result.inserted, result.updated, result.unchanged)
        try:
            with self.conn.begin_nested():
                self.write_batch(part if isinstance(part, pa.Table) else deals_to_batch(part))
            return
        except STORE_DATA_ERRORS as exc:
            error = exc
        result.inserted, result.updated, result.unchanged = counts
        if len(part) == 1:
            key = str(part["external_id"][0].as_py()) if isinstance(part, pa.Table) else part[0].external_id
            reason = str(getattr(error, "orig", None) or error).splitlines()[0][:300]
            log.warning("sync.row_refused", external_id=key, error=reason)
            result.seen -= 1
            self.add(Rejected(f"deal {key}", f"the store refused it: {reason}", key))
            return
        half = len(part) // 2
        self._write_isolated(part[:half])
        self._write_isolated(part[half:])

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write what is buffered and the cursor in one transaction; commit it when due.

        While fewer than ``batch_size`` deals are buffered and no commit is due, a
        checkpoint is held back (with a note of the deals it covers) and written
        with a later one, so a fast feed is written in large batches; the cursor is
        never written before the deals it covers.
        """
        self.pending = checkpoint
        self.defer = (not checkpoint.complete and checkpoint.failure is None
                      and len(self.deals) < self.batch_size and not self.commit_due(len(self.deals)))
        if self.defer:
            self.covered = dict(self.deals)
        try:
            self.flush()
        finally:
            deferred, self.defer = self.defer, False
        if deferred:
            return
        self._write_checkpoint(checkpoint)
        if checkpoint.complete or self.commit_due():
            self.commit()

    def _write_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.pending, self.covered = None, {}
        if checkpoint.failure is not None:  # read to the end, but not good: a failed sync
            self.result.status, self.result.error = "failed", checkpoint.failure
        if checkpoint.complete and self.track_seen:
            self.result.deleted += self._mark_missing_deleted()
        state = sync_state_table
        stmt = dialect_insert(self.conn, state).values(
            source=self.source, cursor=checkpoint.cursor, updated_at=self.now()
        )
        self.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[state.c.source],
                set_={"cursor": stmt.excluded.cursor, "updated_at": stmt.excluded.updated_at},
            )
        )

    def finish(self) -> None:
        """At the end of the stream: write every buffered deal and a held-back checkpoint."""
        self.flush()
        if self.pending is not None:
            self._write_checkpoint(self.pending)

    def keep_covered(self) -> None:
        """After a connector failure: write a held-back checkpoint with the deals it covers."""
        if self.pending is None:
            return
        self.deals = self.covered
        self.flush()
        self._write_checkpoint(self.pending)

    def _mark_missing_deleted(self) -> int:
        now = self.now()
        missing = sa.and_(
            deals_table.c.source == self.source,
            deals_table.c.status != "deleted",
            ~sa.exists().where(seen_t.c.external_id == deals_table.c.external_id),
        )
        d = deals_table.c
        self.conn.execute(changes_from_select(
            deals_table, d.source, d.external_id, "status", d.status, sa.literal("deleted", sa.String()),
            changed_at=now, where=missing, run_pk=self.run_pk,
        ))
        result = self.conn.execute(
            deals_table.update()
            .where(missing)
            .values(status="deleted", deleted_at=now, synced_at=now, content_hash="deleted")
        )
        return int(result.rowcount or 0)


def _keep_written(conn: sa.Connection, writing: bool, writer: _Writer) -> None:
    """After a failed pull: commit what the writer wrote, unless the writer itself failed.

    When the connector fails, the open transaction holds only whole writes (deals
    and the cursor of the last checkpoint), so it is kept, with a held-back
    checkpoint and the deals it covers; when a write failed, the transaction may
    be broken and is rolled back to the last commit.
    """
    if writing:
        _rollback_quietly(conn)
        return
    try:
        writer.keep_covered()
        conn.commit()
    except STORE_ERRORS:  # the store went away too: what was not committed is pulled again next time
        _rollback_quietly(conn)


def _rollback_quietly(conn: sa.Connection) -> None:
    """Roll back after a store error; a connection the server dropped is invalidated instead."""
    try:
        conn.rollback()
    except STORE_ERRORS:
        conn.invalidate()


def _finish(conn: sa.Connection, writer: _Writer, connector: Connector, kind: str, clock: Clock) -> None:
    """After a pull that ended well: the deals after the last checkpoint, a stale catalog, the fields."""
    writer.finish()  # deals after the last checkpoint have no durable cursor: keep them anyway
    conn.commit()
    if writer.known is not None and writer.known.stale:
        refresh_catalog(conn, connector, kind, clock())
        conn.commit()
    record_fields(conn, writer.source, seen=writer.fields.seen if writer.fields else frozenset(),
                  declared=declared_fields(connector), now=clock())
    conn.commit()


def _close_run(engine: sa.Engine, conn: sa.Connection, run_pk: int, result: SyncResult, clock: Clock,
               *, drop_seen: bool, stager: Stager | None = None) -> None:
    """Write how the run ended; after a store error, once more on a fresh connection (``pool_pre_ping``).

    When even that fails the row stays ``running`` and ``velocity status`` shows it
    ``interrupted`` once this process is gone; the error is in ``result``.
    """
    runs = sync_runs_table
    values = {"finished_at": clock(), "status": result.status, "seen": result.seen,
              "inserted": result.inserted, "updated": result.updated, "unchanged": result.unchanged,
              "deleted": result.deleted, "rejected": result.rejected, "error": result.error}
    try:
        if drop_seen:
            seen_t.drop(conn, checkfirst=True)
            if stager is not None:
                stager.drop()
            conn.commit()
        conn.execute(runs.update().where(runs.c.id == run_pk).values(**values))
        conn.commit()
        return
    except STORE_ERRORS as exc:  # everything before was committed: the outcome stands as it is
        _rollback_quietly(conn)
        log.warning("sync.close_retried", error=str(store_error(exc)))
    try:
        with engine.begin() as fresh:
            fresh.execute(runs.update().where(runs.c.id == run_pk).values(**values))
    except STORE_ERRORS as exc:
        error = store_error(exc)
        log.error("sync.run_not_closed", run_pk=run_pk, error=str(error))
        result.status = "failed"
        result.error = f"{result.error}; {error}" if result.error else f"not recorded: {error}"


def sync_source(
    engine: sa.Engine,
    connector: Connector,
    *,
    full: bool = False,
    run_id: str | None = None,
    now: Clock | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    redact: Callable[[str], str] | None = None,
    catalog_max_age: dt.timedelta | None = DEFAULT_CATALOG_MAX_AGE,
    deadline_s: float | None = None,
) -> SyncResult:
    """Sync one source into the store; never raises for a source failure.

    Args:
        engine: the store.
        connector: the source to pull.
        full: ignore the stored cursor and pull everything (deletes are detected
            when the connector marks the pull complete).
        run_id: the run this sync belongs to (one is made up when omitted).
        now: the clock (aware UTC); tests pin it.
        batch_size: deals written per statement batch.
        progress: called with the number of deals seen after each commit (at least
            every ``COMMIT_INTERVAL_S`` while pages arrive), when no write
            transaction is open, so it may renew a lease in the same SQLite file.
        redact: masks secrets in error text before it is stored or logged.
        catalog_max_age: refresh pipelines, stages and owners when older than this
            (``None``: every sync); also on a full sync, on the first sync, and when
            a deal refers to one the store does not know.
        deadline_s: the sync fails once it has run this long (``sync.deadline``),
            keeping what it wrote up to the last checkpoint; ``None``: no deadline.

    Returns:
        The counts and the outcome; ``status`` is ``failed`` with ``error`` set
        when the pull broke off. Everything up to the last checkpoint is kept.
    """
    clock = now or _utcnow
    run_id = run_id or uuid.uuid4().hex[:12]
    source = connector.name
    kind = connector.kind
    started = time.perf_counter()
    started_mono = time.monotonic()
    with structlog.contextvars.bound_contextvars(source=source, run_id=run_id):
        returning_memory_pool()  # batches come and go: freed buffers back to the system
        with engine.connect() as conn, lean_sync_connection(conn):
            # everything slow to set up comes before the run row: from its commit on, a signal
            # (SIGTERM from Docker or Kubernetes) lands inside the try below and closes the run
            writer = _Writer(conn, source, 0, clock, batch_size, progress)
            if not declares_fields(connector):
                writer.fields = FieldTracker()
            result = writer.result
            result.run_id, result.full = run_id, full
            writing = True  # a failure while the catalog is written rolls it back
            interrupted = False
            run_pk = int(conn.execute(  # type: ignore[index]
                sync_runs_table.insert().values(
                    run_id=run_id, source=source, full=full, started_at=clock(), status="running",
                    host=socket.gethostname()[:255], pid=os.getpid(),
                )
            ).inserted_primary_key[0])
            writer.bind_run(run_pk)
            try:
                conn.commit()
                due = full or catalog_due(conn, source, clock(), catalog_max_age)
                conn.commit()  # end the read before the network: no lock held while the CRM answers
                if due:
                    refresh_catalog(conn, connector, kind, clock())
                    conn.commit()
                else:
                    writer.known = load_known(conn, source)
                since = None if full else read_cursor(conn, source)
                seen_t.create(conn, checkfirst=True)
                conn.execute(seen_t.delete())
                writer.stager.create()
                writer.track_seen = True
                conn.commit()
                writing = False  # from here on, an exception outside the writer is the connector's
                # Arrow tables where the connector offers them
                stream = (connector.batches(since) if isinstance(connector, ColumnarConnector)
                          else connector.deals(since))
                for item in bounded(stream, source=source, seconds=deadline_s, started=started_mono):
                    writing = True
                    if isinstance(item, Checkpoint):
                        writer.checkpoint(item)
                    else:
                        writer.add(item)
                    writing = False
            except KeyboardInterrupt:  # SIGINT or SIGTERM: close the run as failed, then stop
                _keep_written(conn, writing, writer)
                result.status, result.error = "failed", "interrupted (SIGINT/SIGTERM)"
                interrupted = True
            except RemoteError as exc:
                _keep_written(conn, writing, writer)
                result.status, result.error = "failed", str(exc)
            except STORE_ERRORS as exc:  # the store went away (restart, killed connection, disk full)
                _rollback_quietly(conn)
                result.status, result.error = "failed", str(store_error(exc))
                log.error("sync.store_failed", error=result.error)
            except Exception as exc:  # a bug must not stop other sources
                _keep_written(conn, writing, writer)
                result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("sync.crashed")
            else:
                try:
                    _finish(conn, writer, connector, kind, clock)
                except STORE_ERRORS as exc:
                    _rollback_quietly(conn)
                    result.status, result.error = "failed", str(store_error(exc))
                    log.error("sync.store_failed", error=result.error)
            if result.error is not None and redact is not None:
                result.error = redact(result.error)
            result.duration_s = round(time.perf_counter() - started, 3)
            _close_run(engine, conn, run_pk, result, clock, drop_seen=writer.track_seen,
                       stager=writer.stager)
        if interrupted:
            log.warning("sync.interrupted", source=source, run_id=run_id, seen=result.seen)
            raise KeyboardInterrupt
        log.info(
            "sync.summary", source=source, run_id=run_id, status=result.status, full=full, seen=result.seen,
            inserted=result.inserted, updated=result.updated, unchanged=result.unchanged,
            deleted=result.deleted, rejected=result.rejected, duration_s=result.duration_s,
            error=result.error,
        )
    return result

