"""The sync engine on both backends, driven by a scripted in-memory connector."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

import sales_velocity.sync.engine as engine_module
from sales_velocity.connectors.base import (
    Checkpoint,
    Deal,
    Owner,
    Pipeline,
    SourceSettings,
    Stage,
    StageVisit,
    StreamItem,
)
from sales_velocity.kernel.errors import RetriableAPIError
from sales_velocity.sync.engine import read_cursor, sync_source
from sales_velocity.sync.store import (
    DealRow,
    DealStageEvent,
    OwnerRow,
    StageRow,
    SyncReject,
    SyncRun,
    reading_only,
)

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def deal(external_id: str, **kw: object) -> Deal:
    """A deal of source 'fake' with sensible defaults."""
    defaults: dict[str, object] = {
        "title": f"Deal {external_id}",
        "amount": Decimal("1000.50"),
        "currency": "NOK",
        "pipeline": "p1",
        "stage": "s1",
        "owner": "u1",
        "created_at": T0 - dt.timedelta(days=10),
        "updated_at": T0,
    }
    defaults.update(kw)
    return Deal(source="fake", external_id=external_id, **defaults)  # type: ignore[arg-type]


@dataclass
class ScriptedConnector:
    """A connector whose stream is a list; it remembers the cursors it was asked for."""

    items: list[StreamItem]
    name: str = "fake"
    kind: str = "fake"
    fail_after: int | None = None
    asked: list[str | None] = field(default_factory=list)
    catalog_calls: int = 0
    owner_ids: tuple[str, ...] = ("u1",)

    @property
    def settings(self) -> SourceSettings:
        """A plain source table: the name and kind, enabled."""
        return SourceSettings(name=self.name, kind=self.kind)

    def pipelines(self) -> Iterable[Pipeline]:
        """One pipeline with a rotting stage and a won stage."""
        self.catalog_calls += 1
        stages = (
            Stage("s1", "p1", "Qualified", 0),
            Stage("s2", "p1", "Proposal", 1, rotting_days=7),
            Stage("won", "p1", "Won", 2, is_won=True),
        )
        return [Pipeline("p1", "New Business", 0, stages)]

    def owners(self) -> Iterable[Owner]:
        """One owner."""
        return [Owner(o, f"Owner {o}", f"{o}@example.com") for o in self.owner_ids]

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """Replay the script, failing at ``fail_after`` when set."""
        self.asked.append(since)
        for n, item in enumerate(self.items):
            if self.fail_after is not None and n == self.fail_after:
                raise RetriableAPIError("fake: server error (HTTP 502)", status=502)
            yield item

    def check(self) -> str:
        """Always fine."""
        return "fake ok"


class StreamConnector(ScriptedConnector):
    """A scripted connector whose stream comes from a generator function (it may probe the store)."""

    def __init__(self, stream: Callable[[], Iterator[StreamItem]]) -> None:
        super().__init__([])
        self.stream = stream

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """The generator's items."""
        self.asked.append(since)
        yield from self.stream()


def count_in(conn: sa.Connection, table: sa.FromClause) -> int:
    """Rows of ``table`` as ``conn`` sees them."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def clock(at: dt.datetime = T0):
    """A pinned clock."""
    return lambda: at


def deals_in(store: sa.Engine) -> dict[str, sa.Row[Any]]:
    """All deal rows by external id."""
    with store.connect() as conn:
        return {r.external_id: r for r in conn.execute(sa.select(DealRow.__table__))}


def count(store: sa.Engine, table: sa.FromClause) -> int:
    """Rows in a table."""
    with store.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


class TestSync:
    def test_first_sync_inserts_deals_catalog_and_cursor(self, store: sa.Engine) -> None:
        """A first sync stores deals with exact money and aware datetimes, the catalog and the cursor."""
        conn_ = ScriptedConnector([deal("1"), deal("2", amount=None), Checkpoint("c1")])
        result = sync_source(store, conn_, now=clock())
        assert (result.status, result.seen, result.inserted, result.updated) == ("ok", 2, 2, 0)
        rows = deals_in(store)
        assert rows["1"].amount == Decimal("1000.50")
        assert rows["2"].amount is None
        assert rows["1"].created_at == T0 - dt.timedelta(days=10)
        assert rows["1"].created_at.tzinfo is not None
        assert count(store, StageRow.__table__) == 3
        assert count(store, OwnerRow.__table__) == 1
        with store.connect() as conn:
            assert read_cursor(conn, "fake") == "c1"
            rotting = conn.execute(
                sa.select(StageRow.__table__.c.rotting_days).where(StageRow.__table__.c.external_id == "s2")
            ).scalar()
        assert rotting == 7

    def test_second_identical_sync_changes_nothing(self, store: sa.Engine) -> None:
        """Running the same sync twice writes nothing the second time."""
        items: list[StreamItem] = [deal("1"), deal("2"), Checkpoint("c1", complete=True)]
        sync_source(store, ScriptedConnector(items), now=clock())
        before = deals_in(store)
        again = sync_source(store, ScriptedConnector(items), now=clock(T0 + dt.timedelta(hours=1)))
        assert (again.inserted, again.updated, again.unchanged, again.deleted) == (0, 0, 2, 0)
        assert deals_in(store) == before
        assert count(store, DealStageEvent.__table__) == 2

    def test_incremental_sync_passes_the_stored_cursor(self, store: sa.Engine) -> None:
        """The second sync asks the connector for changes since the stored cursor; --full asks for all."""
        first = ScriptedConnector([deal("1"), Checkpoint("c1")])
        sync_source(store, first, now=clock())
        second = ScriptedConnector([Checkpoint("c2")])
        sync_source(store, second, now=clock())
        full = ScriptedConnector([Checkpoint("c3")])
        sync_source(store, full, full=True, now=clock())
        assert (first.asked, second.asked, full.asked) == ([None], ["c1"], [None])

    def test_updates_record_observed_stage_changes(self, store: sa.Engine) -> None:
        """A stage change without a CRM date adds an observed stage event at sync time."""
        sync_source(store, ScriptedConnector([deal("1"), Checkpoint("c1")]), now=clock())
        later = T0 + dt.timedelta(days=2)
        result = sync_source(
            store, ScriptedConnector([deal("1", stage="s2"), Checkpoint("c2")]), now=clock(later)
        )
        assert result.updated == 1
        with store.connect() as conn:
            events = conn.execute(
                sa.select(DealStageEvent.__table__).order_by(DealStageEvent.__table__.c.entered_at)
            ).all()
        assert [(e.stage_id, e.entered_at, e.observed) for e in events] == [
            ("s1", T0 - dt.timedelta(days=10), True),
            ("s2", later, True),
        ]

    def test_crm_stage_history_is_stored_once(self, store: sa.Engine) -> None:
        """CRM-provided stage entry dates become events, and re-syncing does not duplicate them."""
        history = (StageVisit("s1", T0 - dt.timedelta(days=9)), StageVisit("s2", T0 - dt.timedelta(days=3)))
        d = deal("1", stage="s2", stage_history=history)
        sync_source(store, ScriptedConnector([d, Checkpoint("c1")]), now=clock())
        d2 = replace(d, title="renamed", stage_history=(*history, StageVisit("won", T0)))
        sync_source(store, ScriptedConnector([d2, Checkpoint("c2")]), now=clock())
        with store.connect() as conn:
            stages = conn.execute(sa.select(DealStageEvent.__table__.c.stage_id)).scalars().all()
        assert sorted(stages) == ["s1", "s2", "won"]

    def test_complete_pull_marks_missing_deals_deleted(self, store: sa.Engine) -> None:
        """Deals absent from a complete pull become status=deleted with deleted_at; rows stay."""
        sync_source(store, ScriptedConnector([deal("1"), deal("2"), Checkpoint("a", complete=True)]),
                    now=clock())
        later = T0 + dt.timedelta(days=1)
        result = sync_source(store, ScriptedConnector([deal("1"), Checkpoint("b", complete=True)]),
                             now=clock(later))
        rows = deals_in(store)
        assert result.deleted == 1
        assert (rows["2"].status, rows["2"].deleted_at) == ("deleted", later)
        assert rows["1"].status == "open"

    def test_incomplete_pull_deletes_nothing(self, store: sa.Engine) -> None:
        """An incremental pull (not complete) never marks absent deals deleted."""
        sync_source(store, ScriptedConnector([deal("1"), deal("2"), Checkpoint("a", complete=True)]),
                    now=clock())
        sync_source(store, ScriptedConnector([deal("1", title="x"), Checkpoint("b")]), now=clock())
        assert {r.status for r in deals_in(store).values()} == {"open"}

    def test_deleted_status_from_crm_keeps_first_deletion_time(self, store: sa.Engine) -> None:
        """A deal the CRM reports deleted keeps the time it was first seen deleted."""
        sync_source(store, ScriptedConnector([deal("1", status="deleted"), Checkpoint("a")]), now=clock())
        sync_source(store, ScriptedConnector([deal("1", status="deleted", title="x"), Checkpoint("b")]),
                    now=clock(T0 + dt.timedelta(days=5)))
        assert deals_in(store)["1"].deleted_at == T0


class TestCatalog:
    def test_catalog_is_fetched_once_then_only_when_stale(self, store: sa.Engine) -> None:
        """The catalog is fetched on the first sync, skipped while fresh, refetched when old or --full."""
        first = ScriptedConnector([deal("1"), Checkpoint("a")])
        sync_source(store, first, now=clock())
        fresh = ScriptedConnector([Checkpoint("b")])
        sync_source(store, fresh, now=clock(T0 + dt.timedelta(hours=1)))
        old = ScriptedConnector([Checkpoint("c")])
        sync_source(store, old, now=clock(T0 + dt.timedelta(hours=7)))
        full = ScriptedConnector([Checkpoint("d")])
        sync_source(store, full, full=True, now=clock(T0 + dt.timedelta(hours=8)))
        assert [c.catalog_calls for c in (first, fresh, old, full)] == [1, 0, 1, 1]

    def test_a_deal_with_an_unknown_owner_refreshes_the_catalog(self, store: sa.Engine) -> None:
        """A deal referring to an owner the store does not know triggers a catalog refresh."""
        sync_source(store, ScriptedConnector([deal("1"), Checkpoint("a")]), now=clock())
        newcomer = ScriptedConnector([deal("2", owner="u2"), Checkpoint("b")], owner_ids=("u1", "u2"))
        sync_source(store, newcomer, now=clock(T0 + dt.timedelta(minutes=30)))
        assert newcomer.catalog_calls == 1
        with store.connect() as conn:
            owners = conn.execute(sa.select(OwnerRow.__table__.c.external_id)).scalars().all()
        assert sorted(owners) == ["u1", "u2"]


class TestFaults:
    def test_failure_keeps_checkpointed_work_and_cursor(self, store: sa.Engine) -> None:
        """A connector error mid-stream fails the source but keeps deals and cursor up to the checkpoint."""
        items: list[StreamItem] = [deal("1"), Checkpoint("c1"), deal("2"), Checkpoint("c2")]
        with capture_logs() as logs:
            result = sync_source(store, ScriptedConnector(items, fail_after=3), now=clock())
        assert result.status == "failed"
        assert "502" in (result.error or "")
        assert set(deals_in(store)) == {"1"}
        with store.connect() as conn:
            assert read_cursor(conn, "fake") == "c1"
            run = conn.execute(sa.select(SyncRun.__table__)).one()
        assert (run.status, run.error) == ("failed", result.error)
        summary = [e for e in logs if e["event"] == "sync.summary"]
        assert [(e["status"], e["source"]) for e in summary] == [("failed", "fake")]

    def test_crash_then_rerun_converges(self, store: sa.Engine) -> None:
        """After a crash, the next run resumes from the last checkpoint and ends complete."""
        items: list[StreamItem] = [deal("1"), Checkpoint("c1"), deal("2"), deal("3"), Checkpoint("c2")]
        sync_source(store, ScriptedConnector(items, fail_after=3), now=clock())
        rerun = ScriptedConnector(items[2:])
        sync_source(store, rerun, now=clock())
        assert rerun.asked == ["c1"]
        assert set(deals_in(store)) == {"1", "2", "3"}

    def test_rejected_records_are_stored_and_counted(self, store: sa.Engine) -> None:
        """Rejected records are counted, kept in sync_rejects with where and why, and the rest load."""
        from sales_velocity.connectors.base import Rejected

        items: list[StreamItem] = [deal("1"), Rejected("line 3", "amount 'x' is not a number"),
                                   Checkpoint("c")]
        result = sync_source(store, ScriptedConnector(items), now=clock())
        assert (result.status, result.inserted, result.rejected) == ("ok", 1, 1)
        with store.connect() as conn:
            reject = conn.execute(sa.select(SyncReject.__table__)).one()
        assert (reject.location, reject.reason) == ("line 3", "amount 'x' is not a number")

    def test_rejected_deal_with_an_id_is_not_deleted(self, store: sa.Engine) -> None:
        """A deal whose record is unreadable this time is still in the source: not marked deleted."""
        from sales_velocity.connectors.base import Rejected

        sync_source(store, ScriptedConnector([deal("1"), deal("2"), Checkpoint("a", complete=True)]),
                    now=clock())
        items: list[StreamItem] = [deal("1"), Rejected("line 3", "bad amount", external_id="2"),
                                   Checkpoint("b", complete=True)]
        result = sync_source(store, ScriptedConnector(items), now=clock())
        assert result.deleted == 0
        assert deals_in(store)["2"].status == "open"

    def test_batches_commit_across_many_deals(self, store: sa.Engine) -> None:
        """Streams longer than a batch are written in several batches with the right counts."""
        items: list[StreamItem] = [deal(str(n)) for n in range(25)]
        items.append(Checkpoint("end", complete=True))
        result = sync_source(store, ScriptedConnector(items), now=clock(), batch_size=10)
        assert (result.seen, result.inserted) == (25, 25)
        assert count(store, DealRow.__table__) == 25


class TestCommits:
    def test_a_checkpoint_commits_once_enough_deals_are_written(
        self, store: sa.Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Checkpoints commit only when COMMIT_EVERY deals are pending; another connection sees just those."""
        monkeypatch.setattr(engine_module, "COMMIT_EVERY", 2)
        monkeypatch.setattr(engine_module, "COMMIT_INTERVAL_S", 3600.0)
        seen_by_others: list[tuple[str | None, int]] = []

        def probe() -> Iterator[StreamItem]:
            for n, cursor in enumerate(("c1", "c2", "c3", "c4"), start=1):
                yield deal(str(n))
                yield Checkpoint(cursor)
                with reading_only(), store.connect() as other:  # a second connection: committed data only
                    seen_by_others.append((read_cursor(other, "fake"),
                                           count_in(other, DealRow.__table__)))

        sync_source(store, StreamConnector(probe), now=clock())
        assert seen_by_others == [(None, 0), ("c2", 2), ("c2", 2), ("c4", 4)]

    def test_a_checkpoint_commits_once_enough_time_has_passed(
        self, store: sa.Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a zero commit interval every checkpoint commits, as pages from a slow CRM do."""
        monkeypatch.setattr(engine_module, "COMMIT_INTERVAL_S", 0.0)
        seen_by_others: list[str | None] = []

        def probe() -> Iterator[StreamItem]:
            for n, cursor in enumerate(("c1", "c2"), start=1):
                yield deal(str(n))
                yield Checkpoint(cursor)
                with reading_only(), store.connect() as other:
                    seen_by_others.append(read_cursor(other, "fake"))

        sync_source(store, StreamConnector(probe), now=clock())
        assert seen_by_others == ["c1", "c2"]

    def test_a_connector_failure_commits_the_uncommitted_checkpoints(
        self, store: sa.Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Checkpoints not yet committed when the connector fails are kept, with their cursor."""
        monkeypatch.setattr(engine_module, "COMMIT_EVERY", 1000)
        monkeypatch.setattr(engine_module, "COMMIT_INTERVAL_S", 3600.0)
        items: list[StreamItem] = [deal("1"), Checkpoint("c1"), deal("2"), Checkpoint("c2"), deal("3"),
                                   Checkpoint("c3")]
        result = sync_source(store, ScriptedConnector(items, fail_after=5), now=clock())
        assert result.status == "failed"
        assert set(deals_in(store)) == {"1", "2"}
        with store.connect() as conn:
            assert read_cursor(conn, "fake") == "c2"

    def test_a_store_failure_rolls_back_to_the_last_commit(
        self, store: sa.Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When a write fails, the open transaction is dropped: the store keeps the last commit."""
        monkeypatch.setattr(engine_module, "COMMIT_EVERY", 2)
        monkeypatch.setattr(engine_module, "COMMIT_INTERVAL_S", 3600.0)
        real_flush = engine_module._Writer.flush
        calls = {"n": 0}

        def failing_flush(self: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 3:  # the checkpoint c3 writes deal 3, then the store breaks
                real_flush(self)
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
            real_flush(self)

        monkeypatch.setattr(engine_module._Writer, "flush", failing_flush)
        items: list[StreamItem] = [deal("1"), Checkpoint("c1"), deal("2"), Checkpoint("c2"),
                                   deal("3"), Checkpoint("c3")]
        with capture_logs():
            result = sync_source(store, ScriptedConnector(items), now=clock())
        assert result.status == "failed"
        assert "disk I/O error" in (result.error or "")
        assert set(deals_in(store)) == {"1", "2"}
        with store.connect() as conn:
            assert read_cursor(conn, "fake") == "c2"
