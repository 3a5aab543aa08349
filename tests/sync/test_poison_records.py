"""One record the store cannot hold is rejected alone (issue 14, item 5), on SQLite and PostgreSQL.

Poison values go in through the fake HubSpot and Pipedrive servers and a CSV
file; the store's own refusal (a value no connector foresaw) is caught by the
engine, which bisects the batch to the bad row.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sales_velocity.connectors.base import Checkpoint, Deal, StreamItem
from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedSettings
from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sales_velocity.connectors.validate import problems_of
from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot, make_connector
from sales_velocity.kernel.testing.fake_pipedrive import FakePipedrive, FakeTime
from sales_velocity.sync.engine import sync_source
from sales_velocity.sync.store import deals_table, sync_rejects_table
from tests.sync.test_engine import T0, ScriptedConnector, deal

NUL_TITLE = "Big\x00deal"
SURROGATE_TITLE = "Deal \ud83d broken emoji"


def stored(engine: sa.Engine, source: str) -> dict[str, Any]:
    """External id -> (title, amount) of the source's stored deals."""
    d = deals_table
    with engine.connect() as conn:
        rows = conn.execute(sa.select(d.c.external_id, d.c.title, d.c.amount).where(d.c.source == source))
        return {r.external_id: (r.title, r.amount) for r in rows}


def rejects(engine: sa.Engine, source: str) -> dict[str, str]:
    """Location -> reason of the source's stored rejects."""
    r = sync_rejects_table
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.location, r.c.reason).where(r.c.source == source))
        return {row.location: row.reason for row in rows}


class TestValidator:
    def test_the_limits_are_those_of_both_stores(self) -> None:
        """9.22e14 and 1e30 are refused, up to 10^14 is kept; NaN, NUL, lone surrogates refused."""
        def reasons(**kw: object) -> list[str]:
            return problems_of(deal("1", **kw))

        assert reasons(amount=Decimal("99999999999999.9999")) == []
        assert reasons(amount=Decimal("-99999999999999")) == []
        assert "larger than the store can hold" in reasons(amount=Decimal("1e14"))[0]
        assert "larger than the store can hold" in reasons(amount=Decimal("9.22e14"))[0]
        assert "larger than the store can hold" in reasons(amount=Decimal("1e30"))[0]
        assert "not a finite number" in reasons(amount=Decimal("NaN"))[0]
        assert "not a finite number" in reasons(amount=Decimal("-Infinity"))[0]
        assert reasons(title=NUL_TITLE) == ["title holds a NUL character (at character 4)"]
        assert reasons(owner="\udcff") == [
            "owner holds a byte that is not valid text in the file's encoding (at character 1)"]
        assert "lone surrogate U+D83D" in reasons(next_step=SURROGATE_TITLE)[0]
        assert "raw.props.name holds a lone surrogate" in reasons(raw={"props": {"name": "\ud800"}})[0]
        assert reasons(stage="s" * 201) == ["stage is longer than 200 characters (201)"]
        assert reasons(title="Ærlig talt 😀", raw={"a": ["ok", 1, None]}) == []


class TestHubSpot:
    def test_poison_deals_are_rejected_and_the_rest_kept(self, store: sa.Engine) -> None:
        """A 1e30 or 9.3e14 amount, a NUL or a lone surrogate rejects its deal alone; the sync is ok."""
        portal = FakeHubSpot()
        good = portal.add_deals(40)
        huge = portal.add_deals(1, amount="1e30")[0]
        overflow = portal.add_deals(1, amount="930000000000000")[0]
        nul = portal.add_deals(1, dealname=NUL_TITLE)[0]
        surrogate = portal.add_deals(1, hs_next_step=SURROGATE_TITLE)[0]
        portal.clock.advance(3600)
        with portal.serve():
            for _run in range(2):  # every run: the poison never fails the source
                result = sync_source(store, make_connector(portal), now=portal.clock.now, full=True)
                assert result.status == "ok", result.error
                assert result.rejected == 4
                portal.clock.advance(3600)
        assert set(stored(store, "hubspot")) == set(good)
        found = rejects(store, "hubspot")
        assert "amount 1.000000E+30 is larger than the store can hold" in found[f"deal {huge}"]
        assert "amount 9.300000E+14 is larger" in found[f"deal {overflow}"]
        assert found[f"deal {nul}"].startswith("title holds a NUL character")
        assert "next_step holds a lone surrogate U+D83D" in found[f"deal {surrogate}"]
        with store.connect() as conn:  # rejected deals are not marked deleted: they are still in the CRM
            statuses = {r.status for r in conn.execute(sa.select(deals_table.c.status))}
        assert statuses <= {"open", "won", "lost"}

    def test_a_deleted_deal_with_a_poison_value_is_still_recorded_deleted(self, store: sa.Engine) -> None:
        """Archiving a deal whose title holds a NUL: the store learns it is deleted, the title left empty."""
        portal = FakeHubSpot()
        keep = portal.add_deals(5)
        gone = portal.add_deals(1, dealname=NUL_TITLE, amount="1e30")[0]
        with portal.serve():
            first = sync_source(store, make_connector(portal), now=portal.clock.now)
            assert first.rejected == 1
            portal.archive([gone])
            portal.clock.advance(3600)
            second = sync_source(store, make_connector(portal), now=portal.clock.now)
        assert second.status == "ok", second.error
        d = deals_table
        with store.connect() as conn:
            row = conn.execute(sa.select(d.c.status, d.c.title, d.c.amount).where(
                d.c.external_id == gone)).one()
        assert tuple(row) == ("deleted", None, None)
        assert set(stored(store, "hubspot")) == {*keep, gone}


class TestPipedrive:
    def test_poison_deals_are_rejected_and_the_rest_kept(self, store: sa.Engine) -> None:
        """A 9.3e14 value, a NUL or a lone surrogate title rejects its deal alone; the sync is ok."""
        fake = FakePipedrive()
        good = [str(fake.add_deal(title=f"Deal {n}", value=100 * n)["id"]) for n in range(1, 31)]
        overflow = fake.add_deal(value=930_000_000_000_000)["id"]
        nul = fake.add_deal(title=NUL_TITLE)["id"]
        surrogate = fake.add_deal(title=SURROGATE_TITLE)["id"]
        fake.advance(60)
        clock = FakeTime()
        with fake.serve() as url:
            settings = PipedriveSettings.model_validate({
                "name": "pipedrive", "kind": "pipedrive", "api_token": fake.token,
                "company_domain": "acme", "base_url": url, "fetch_activities": False})
            connector = PipedriveConnector(settings, sleep=clock.sleep, clock=clock.clock,
                                           now=lambda: fake.now)
            result = sync_source(store, connector, now=lambda: fake.now)
        assert result.status == "ok", result.error
        assert result.rejected == 3
        assert set(stored(store, "pipedrive")) == set(good)
        found = rejects(store, "pipedrive")
        assert "is not a storable amount" in found[f"deal {overflow}"]
        assert "title holds a NUL character" in found[f"deal {nul}"]
        assert "title holds a lone surrogate U+D83D" in found[f"deal {surrogate}"]


class TestCsv:
    def test_bad_rows_are_rejected_with_their_line(self, store: sa.Engine, tmp_path: Path) -> None:
        """Invalid UTF-8 in owner or stage, a NUL in a title, an amount past int64 units: line and reason."""
        rows = [b"id,title,amount,stage,owner"]
        rows += [f"{n},Deal {n},{n}00,Qualified,Kari".encode() for n in range(1, 11)]
        rows += [b"11,Bad owner,100,Qualified,K\xe5ri",  # latin-1 in a UTF-8 file
                 b"12,Bad stage,100,Qualifi\xe9d,Kari",
                 b"13,Nul\x00title,100,Qualified,Kari",
                 b"14,Too big,950000000000000,Qualified,Kari"]
        path = tmp_path / "deals.csv"
        path.write_bytes(b"\n".join(rows) + b"\n")
        connector = CsvFeedConnector(CsvFeedSettings(name="csv", path=path, currency="NOK"))
        result = sync_source(store, connector, now=lambda: T0)
        assert result.status == "ok", result.error
        assert set(stored(store, "csv")) == {str(n) for n in range(1, 11)}
        assert rejects(store, "csv") == {
            "line 12": 'owner is not valid UTF-8; save the file as UTF-8, or set its encoding '
                       '(Excel on Windows: encoding = "cp1252")',
            "line 13": 'stage is not valid UTF-8; save the file as UTF-8, or set its encoding '
                       '(Excel on Windows: encoding = "cp1252")',
            "line 14": "title holds a NUL character (at character 4)",
            "line 15": 'amount "950000000000000" is too large (the store holds at most '
                       '99,999,999,999,999.9999)',
        }


class _Unchecked(ScriptedConnector):
    """A plugin connector that hands over deals without validating them."""


class TestEngineBisects:
    def test_a_row_the_store_refuses_is_found_and_rejected_alone(self, store: sa.Engine) -> None:
        """A batch with a row the store cannot hold: that row is rejected with the store's reason."""
        deals: list[StreamItem] = [deal(str(n)) for n in range(1, 38)]
        deals.insert(23, deal("bad", amount=Decimal("1e17")))  # past NUMERIC(20,4) and int64 units
        if store.dialect.name == "postgresql":
            deals.insert(5, deal("nul", title=NUL_TITLE))  # PostgreSQL text cannot hold NUL
        items = [*deals, Checkpoint("c1", complete=True)]
        result = sync_source(store, _Unchecked(items), now=lambda: T0, batch_size=16)
        assert result.status == "ok", result.error
        assert set(stored(store, "fake")) == {str(n) for n in range(1, 38)}
        assert (result.seen, result.inserted) == (37, 37)
        found = rejects(store, "fake")
        assert found["deal bad"].startswith("the store refused it: ")
        assert set(found) == ({"deal bad", "deal nul"} if store.dialect.name == "postgresql"
                              else {"deal bad"})
        # the next run with the poison fixed converges, and nothing was marked deleted
        fixed = [d if not isinstance(d, Deal) or d.external_id != "bad" else deal("bad")
                 for d in items]
        again = sync_source(store, _Unchecked(fixed), now=lambda: T0 + dt.timedelta(hours=1),
                            batch_size=16)
        assert again.status == "ok"
        assert "bad" in stored(store, "fake")

    def test_several_refused_rows_in_one_batch_are_all_rejected(self, store: sa.Engine) -> None:
        """Three bad rows in one batch of 40 (two side by side): all rejected, the 37 others written."""
        items: list[StreamItem] = [deal(str(n)) for n in range(40)]
        bad = (3, 4, 30)
        for n in bad:
            items[n] = deal(f"bad{n}", amount=Decimal("-1e18"))
        items.append(Checkpoint("c1", complete=True))
        result = sync_source(store, _Unchecked(items), now=lambda: T0, batch_size=40)
        assert result.status == "ok", result.error
        assert set(stored(store, "fake")) == {str(n) for n in range(40) if n not in bad}
        assert set(rejects(store, "fake")) == {f"deal bad{n}" for n in bad}
        assert (result.rejected, result.seen, result.inserted) == (3, 37, 37)


def _refuse_external_id(engine: sa.Engine, external_id: str) -> None:
    """Make the store itself refuse to insert one deal (a trigger no connector can foresee)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON deals "
                f"WHEN NEW.external_id = '{external_id}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END")
        else:
            conn.exec_driver_sql(
                "ALTER TABLE deals ADD CONSTRAINT refuse_one "
                f"CHECK (external_id <> '{external_id}') NOT VALID")


class TestColumnarBatchBisects:
    def test_a_row_the_store_refuses_in_a_csv_block_is_rejected_alone(
        self, store: sa.Engine, tmp_path: Path
    ) -> None:
        """A CSV block (one Arrow batch) with a row the store refuses: only that row is rejected."""
        path = tmp_path / "deals.csv"
        path.write_text("id,title,amount,stage,owner\n"
                        + "".join(f"{n},Deal {n},{n}00,Qualified,Kari\n" for n in range(1, 41)),
                        encoding="utf-8")
        _refuse_external_id(store, "17")
        connector = CsvFeedConnector(CsvFeedSettings(name="csv", path=path, currency="NOK"))
        result = sync_source(store, connector, now=lambda: T0)
        assert result.status == "ok", result.error
        assert set(stored(store, "csv")) == {str(n) for n in range(1, 41)} - {"17"}
        assert (result.seen, result.inserted, result.rejected) == (39, 39, 1)
        found = rejects(store, "csv")
        assert list(found) == ["deal 17"]
        assert found["deal 17"].startswith("the store refused it: ")
        # the refused deal is still in the file: a complete pull must not mark anything deleted
        with store.connect() as conn:
            statuses = set(conn.execute(sa.select(deals_table.c.status)).scalars())
        assert "deleted" not in statuses
