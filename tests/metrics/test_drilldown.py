"""``velocity deals``: the deals behind every lever are exactly the deals the report counts.

Two kinds of check. On a small store built here, the lists are compared with
sets worked out by hand from the definition (``shared/DESIGN.md``), and V and L
with plain Python over the deal rows. On the demo data, the public data set and
that store, the counts and sums of the lists (N, won, lost, the amount sum over
its count, the mean cycle, the left-out counts) equal the report's levers for
every scope, on SQLite and PostgreSQL. Rewrite the golden files with
``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from sales_velocity.kernel.errors import ConfigError
from sales_velocity.metrics.drilldown import (
    LEVERS,
    REASONS,
    DealLine,
    Lever,
    deal_lines,
    drill_down,
    resolve_scope,
)
from sales_velocity.metrics.drilldown_report import COLUMNS, DealsFormat, render_deals
from sales_velocity.metrics.leftovers import left_out
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import Levers, compute_velocity, velocity_of
from sales_velocity.sync.store import make_engine, stages_table
from tests.metrics.test_report import check_golden
from tests.metrics.test_velocity_rows import deal, insert_deals, insert_owner, insert_pipeline
from tests.metrics.test_window import MAVEN_CONFIG, boundary_deals, public_figure
from tests.ops.test_exit_codes import assert_one_line, seed_config
from tests.ops.test_exit_codes import velocity as exit_code_velocity
from tests.test_cli import FIXTURES, NOW, store_env, velocity

OSLO = ZoneInfo("Europe/Oslo")
T = dt.date(2026, 11, 25)
SETTINGS = MetricsSettings(timezone="Europe/Oslo", currency="NOK", window_days=30,
                           rates={"USD": Decimal("10.5")})


def local(day: str, hour: int = 0, minute: int = 0) -> dt.datetime:
    """A wall-clock time in Oslo (``YYYY-MM-DD``) as aware UTC."""
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, hour, minute, tzinfo=OSLO).astimezone(dt.UTC)


def crafted() -> list[dict[str, Any]]:
    """Deals with every case of the levers (T = 2026-11-25, W = 30: the window is 10-27 .. 11-25)."""
    rows = [
        deal("w1", status="won", created=local("2026-09-01"), closed=local("2026-11-10", 10), amount=120000,
             pipeline="p1", owner="o1"),
        deal("w2", status="won", created=local("2026-10-01"), closed=local("2026-11-20"), amount=1000,
             currency="USD", pipeline="p1", owner="o2"),
        deal("w3", status="won", created=local("2026-10-15"), closed=local("2026-11-01"), pipeline="p2",
             owner="o1"),  # no amount
        deal("w4", status="won", created=local("2026-08-01"), closed=local("2026-11-05"), amount=500,
             currency="SEK", pipeline="p2", owner="o3"),  # no rate
        deal("w5", status="won", created=None, closed=local("2026-11-25", 23, 30), amount=2000,
             pipeline="p1", owner="o1"),  # no creation date
        deal("w6", status="won", created=local("2026-11-15"), closed=local("2026-11-14"), amount=3000,
             pipeline="p2", owner="o2", whole_days=True),  # closed before created: 0 days
        deal("w7", status="won", created=local("2026-10-20"), closed=None, updated=local("2026-11-12", 9),
             amount=4000, pipeline="p1", owner="o1"),  # dated by its last update
        deal("won-T+1", status="won", created=local("2026-11-01"), closed=local("2026-11-26"), amount=9,
             pipeline="p1", owner="o1"),  # out of the window; open at T
        deal("l1", status="lost", closed=local("2026-11-03"), pipeline="p1", owner="o1"),
        deal("l2", status="lost", closed=None, pipeline="p2", owner="o2"),  # no close date, no update
        deal("l3", status="lost", closed=local("2026-10-26", 23, 59), pipeline="p1", owner="o1"),  # before
        deal("o1", created=local("2026-11-01"), amount=50000, pipeline="p1", owner="o1"),
        deal("o2", created=None, pipeline="p2", owner="o3"),
        deal("o3", created=local("2026-11-01"), archived=True, pipeline="p1", owner="o1"),
        deal("o4", status="deleted", deleted_at=local("2026-11-30"), pipeline="p2", owner="o2"),
        deal("o5", status="deleted", deleted_at=None, pipeline="p2", owner="o2"),
        deal("o6", created=local("2026-11-26"), pipeline="p1", owner="o1"),  # created on T+1
    ]
    titles = {"w1": 'Fjord AS, "pilot"', "o1": "Trøndelag Sjømat AS – Analytics licence expansion, phase 2",
              "w2": "Line\nbreak"}
    for row in rows:
        row["title"] = titles.get(row["external_id"], row["title"])
        row["stage_id"] = {"won": "s-won", "lost": "s-lost"}.get(row["status"], "s-open")
    return rows


# By hand from the definition:
WON = ["w3", "w4", "w1", "w7", "w6", "w2", "w5"]  # by close time
LOST = ["l1"]
OPEN = {"won-T+1", "o1", "o2", "o4"}
CYCLE = {"w1", "w2", "w3", "w4", "w6", "w7"}
EXCLUDED = [("w3", "no_amount"), ("w4", "no_rate"), ("w5", "no_created"), ("l2", "no_close_date"),
            ("w7", "dated_by_update")]


def seed_crafted(engine: sa.Engine) -> list[dict[str, Any]]:
    """The crafted deals and their catalog (o3 has no owner row: labelled by its id)."""
    rows = crafted()
    insert_deals(engine, rows)
    insert_pipeline(engine, "p1", "New Business")
    insert_pipeline(engine, "p2", "Renewals")
    insert_owner(engine, "o1", "Kari Nordmann", "kari@example.com")
    insert_owner(engine, "o2", None, "ola@example.com")
    with engine.begin() as conn:
        conn.execute(stages_table.insert(), [
            {"source": "crm", "pipeline_id": p, "external_id": s, "name": name, "display_order": 0}
            for p in ("p1", "p2")
            for s, name in (("s-open", "Proposal"), ("s-won", "Won"), ("s-lost", "Lost"))
        ])
    return rows


def lines_of(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date, scope: str = "all",
             window: int | None = None) -> dict[str, list[DealLine]]:
    """The lines of every lever of a scope, by lever."""
    drill = drill_down(settings, as_of, window, resolve_scope(engine, scope))
    by: dict[str, list[DealLine]] = defaultdict(list)
    for line in deal_lines(engine, settings, drill):
        by[line.lever].append(line)
    return by


def assert_agrees_with_report(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date,
                              window: int | None = None) -> int:
    """For every scope of the report the lists' counts and sums are its levers; returns the scopes checked."""
    report = compute_velocity(engine, settings, as_of, window)
    left = left_out(engine, report)
    for s in report.scopes:
        by = lines_of(engine, settings, as_of, "all" if s.scope == "all" else f"{s.scope}:{s.key}", window)
        open_, won, lost, cycle, excluded = (by[k] for k in ("open", "won", "lost", "cycle", "excluded"))
        where = f"{s.scope} {s.key}"
        counts = (len(open_), len(won), len(lost))
        assert counts == (s.levers.opportunities, s.levers.won, s.levers.lost), where
        amounts = [line.amount for line in won if line.amount is not None]
        value = sum(amounts, Decimal(0)) / len(amounts) if amounts else None
        assert value == s.levers.avg_deal_value, where
        assert {line.external_id for line in cycle} <= {line.external_id for line in won}
        days = (Decimal(sum(line.cycle_seconds or 0 for line in cycle)) / (86400 * len(cycle))
                if cycle else None)
        assert days == s.levers.cycle_days, where
        reasons = Counter(line.reason for line in excluded)
        unused = (reasons["no_amount"], reasons["no_rate"])
        assert unused == (s.excluded_no_amount, s.excluded_currency), where
        unusable = {line.external_id for line in won if line.amount is None}
        assert unusable == {line.external_id for line in excluded if line.reason in ("no_amount", "no_rate")}
        if s.scope == "all":
            assert (reasons["no_close_date"], reasons["dated_by_update"]) == (
                left.no_close_date, left.dated_by_update)
        closed = len(won) + len(lost)
        rebuilt = Levers(len(open_), len(won), len(lost), Decimal(len(won)) / closed if closed else None,
                         value, days)
        assert velocity_of(rebuilt, window_days=report.window_days).value == s.velocity.value, where
    return len(report.scopes)


class TestByHand:
    def test_each_lever_lists_the_deals_of_the_definition(self, store: sa.Engine) -> None:
        """Won, lost, open, cycle and left out hold exactly the deals worked out by hand, in order."""
        rows = seed_crafted(store)
        by = lines_of(store, SETTINGS, T)
        assert [line.external_id for line in by["won"]] == WON
        assert [line.external_id for line in by["lost"]] == LOST
        assert {line.external_id for line in by["open"]} == OPEN
        assert {line.external_id for line in by["cycle"]} == CYCLE
        assert [(line.external_id, line.reason) for line in by["excluded"]] == EXCLUDED
        # V and L from the rows, in plain Python: USD at 10.5; a close before the creation is 0 days
        amounts: dict[str, Decimal] = {"w1": Decimal(120000), "w2": 1000 * Decimal("10.5"),
                                       "w5": Decimal(2000), "w6": Decimal(3000), "w7": Decimal(4000)}
        assert {line.external_id: line.amount for line in by["won"] if line.amount is not None} == amounts
        source = {r["external_id"]: r for r in rows}
        seconds = {}
        for ident in CYCLE:
            row = source[ident]
            closed = row["closed_at"] or row["updated_at"]
            seconds[ident] = max(int((closed - row["created_at"]).total_seconds()), 0)
        assert {line.external_id: line.cycle_seconds for line in by["cycle"]} == seconds
        everything = compute_velocity(store, SETTINGS, T).scopes[0]
        assert everything.levers.avg_deal_value == sum(amounts.values()) / 5
        assert everything.levers.cycle_days == Decimal(sum(seconds.values())) / (86400 * 6)

    def test_a_line_names_owner_pipeline_and_stage(self, store: sa.Engine) -> None:
        """Names come from the catalog; an owner without a row shows its id; the original amount is kept."""
        seed_crafted(store)
        by = lines_of(store, SETTINGS, T)
        w2 = next(line for line in by["won"] if line.external_id == "w2")
        assert (w2.owner, w2.pipeline, w2.stage, w2.currency, w2.original_amount, w2.amount) == (
            "ola@example.com", "New Business", "Won", "USD", Decimal(1000), Decimal(10500))
        w4 = next(line for line in by["won"] if line.external_id == "w4")
        assert (w4.owner, w4.currency, w4.original_amount, w4.amount) == ("o3", "SEK", Decimal(500), None)
        assert (w4.created_at, w4.closed_at) == (local("2026-08-01"), local("2026-11-05"))

    def test_a_scope_lists_only_its_deals(self, store: sa.Engine) -> None:
        """owner:Kari Nordmann and pipeline:crm/p2 list their own deals only."""
        seed_crafted(store)
        kari = lines_of(store, SETTINGS, T, "owner:Kari Nordmann")
        assert [line.external_id for line in kari["won"]] == ["w3", "w1", "w7", "w5"]
        assert {line.external_id for line in kari["open"]} == {"won-T+1", "o1"}
        renewals = lines_of(store, SETTINGS, T, "pipeline:crm/p2")
        assert [(line.external_id, line.reason) for line in renewals["excluded"]] == [
            ("w3", "no_amount"), ("w4", "no_rate"), ("l2", "no_close_date")]
        nobody = lines_of(store, SETTINGS, T, "owner:crm/o3")  # no owner row: found through the deals
        assert {line.external_id for line in nobody["open"]} == {"o2"}

    @pytest.mark.parametrize("as_of", [dt.date(2026, 3, 29), dt.date(2026, 10, 25)], ids=["spring", "fall"])
    def test_window_boundaries_across_a_dst_change(self, store: sa.Engine, as_of: dt.date) -> None:
        """The deals on each edge of the window (tests.metrics.test_window) fall where the definition says."""
        insert_deals(store, boundary_deals(as_of))
        settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK", window_days=10)
        by = lines_of(store, settings, as_of)
        assert {line.external_id for line in by["won"]} == {"won-first-day", "won-on-T"}
        assert {line.external_id for line in by["lost"]} == {
            "lost-on-T", "lost-23:59:59-on-T", "lost-midnight-first-day"}
        assert {line.external_id for line in by["open"]} == {
            "won-on-T+1", "open-created-on-T", "lost-midnight-T+1", "open-created-23:59:59-on-T",
            "deleted-midnight-T+1", "open"}
        assert all(line.cycle_seconds == 7 * 86400 for line in by["cycle"])

    def test_unknown_scope_is_a_clear_error(self, store: sa.Engine) -> None:
        """A key that matches nothing names it; a bad kind says what to use."""
        seed_crafted(store)
        with pytest.raises(ConfigError, match="no owner 'nobody' in the store"):
            resolve_scope(store, "owner:nobody")
        with pytest.raises(ConfigError, match="use all, pipeline:KEY or owner:KEY"):
            resolve_scope(store, "team:x")


class TestAgreesWithReport:
    def test_crafted_store_every_scope(self, store: sa.Engine) -> None:
        """Every scope of the crafted store, two windows: the lists add up to the report's levers."""
        seed_crafted(store)
        assert assert_agrees_with_report(store, SETTINGS, T) == 1 + 2 + 3
        assert assert_agrees_with_report(store, SETTINGS, T, window=7) >= 1

    def test_demo_every_scope(self, tmp_path: Path, db_url: str) -> None:
        """The bundled demo, synced by the CLI: every scope agrees with the report, 90 and 30 days."""
        config = tmp_path / "velocity.toml"
        config.write_text('timezone = "Europe/Oslo"\ncurrency = "NOK"\n'
                          '[[sources]]\nname = "demo"\nkind = "demo"\n', encoding="utf-8")
        assert velocity(["--config", str(config), "sync"], env=store_env(db_url))[0] == 0
        engine = make_engine(db_url)
        try:
            settings = MetricsSettings(timezone="Europe/Oslo", currency="NOK")
            today = NOW.astimezone(OSLO).date()
            assert assert_agrees_with_report(engine, settings, today) == 1 + 2 + 5
            assert assert_agrees_with_report(engine, settings, today, window=30) == 1 + 2 + 5
        finally:
            engine.dispose()

    def test_public_data_set_every_scope(self, tmp_path: Path, db_url: str) -> None:
        """The public data set (T = 2017-12-31): every scope agrees, and "all" matches the CSV by hand."""
        shutil.copy(FIXTURES / "maven_sales_pipeline.csv", tmp_path / "maven.csv")
        config = tmp_path / "velocity.toml"
        config.write_text(MAVEN_CONFIG, encoding="utf-8")
        env = store_env(db_url)
        assert velocity(["--config", str(config), "sync"], env=env)[0] == 0
        as_of = dt.date(2017, 12, 31)
        engine = make_engine(db_url)
        try:
            settings = MetricsSettings(timezone="UTC", currency="USD")
            assert assert_agrees_with_report(engine, settings, as_of) > 30  # all + every sales agent
            by = lines_of(engine, settings, as_of)
        finally:
            engine.dispose()
        expected = public_figure(tmp_path / "maven.csv", as_of, 90)
        assert (len(by["open"]), len(by["won"]), len(by["lost"])) == (
            expected["open"], expected["won"], expected["lost"])
        code, out = velocity(["--config", str(config), "deals", "--as-of", "2017-12-31", "--format", "json"],
                             env=env)
        assert code == 0
        document = json.loads(out)
        code, out = velocity(["--config", str(config), "report", "--as-of", "2017-12-31", "--format", "json"],
                             env=env)
        everything = json.loads(out)["scopes"][0]
        totals = document["totals"]
        assert (totals["open"]["deals"], totals["won"]["deals"], totals["lost"]["deals"]) == (
            everything["opportunities"], everything["won"], everything["lost"])
        assert totals["won"]["avg_deal_value"] == everything["avg_deal_value"]
        assert len(document["deals"]) == sum(t["deals"] for t in totals.values())


# --------------------------------------------------------------------------- output


def rendered(engine: sa.Engine, fmt: DealsFormat, scope: str = "all",
             levers: Sequence[Lever] = LEVERS) -> str:
    """The listing of the crafted store in one format."""
    drill = drill_down(SETTINGS, T, None, resolve_scope(engine, scope), levers)
    return "".join(render_deals(drill, deal_lines(engine, SETTINGS, drill), fmt))


class TestOutput:
    def test_table_golden(self, sqlite_store: sa.Engine) -> None:
        """The table: one section per lever with its totals, local dates, cut titles, the reasons."""
        seed_crafted(sqlite_store)
        check_golden("deals_table.txt", rendered(sqlite_store, "table"))

    def test_table_of_one_owner_golden(self, sqlite_store: sa.Engine) -> None:
        """One lever of one scope: the title names the scope, only that section is printed."""
        seed_crafted(sqlite_store)
        check_golden("deals_table_owner_won.txt",
                     rendered(sqlite_store, "table", "owner:Kari Nordmann", ("won",)))

    def test_csv_golden_and_quoting(self, sqlite_store: sa.Engine) -> None:
        """CSV: a header, then one line per deal; commas, quotes and line breaks are quoted and read back."""
        seed_crafted(sqlite_store)
        text = rendered(sqlite_store, "csv")
        check_golden("deals_csv.csv", text)
        assert text.splitlines()[0] == ",".join(COLUMNS)
        assert '"Fjord AS, ""pilot"""' in text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(WON) + len(LOST) + len(OPEN) + len(CYCLE) + len(EXCLUDED)
        titles = {r["id"]: r["title"] for r in rows}
        assert titles["w1"] == 'Fjord AS, "pilot"'
        assert titles["w2"] == "Line\nbreak"
        assert next(r for r in rows if r["id"] == "w4" and r["lever"] == "won")["amount"] == ""

    def test_json_contract(self, store: sa.Engine) -> None:
        """JSON: the head, one object per line with exactly the CSV columns, exact decimals, and totals."""
        seed_crafted(store)
        document = json.loads(rendered(store, "json"))
        assert list(document) == ["as_of", "window_days", "window", "currency", "timezone", "scope", "levers",
                                  "deals", "totals"]
        assert (document["as_of"], document["window_days"]) == ("2026-11-25", 30)
        assert document["window"] == {"start": "2026-10-26T23:00:00+00:00",
                                      "end": "2026-11-25T23:00:00+00:00"}
        assert document["scope"] == {"kind": "all", "key": "", "label": "All pipelines"}
        assert document["levers"] == ["open", "won", "lost", "cycle", "excluded"]
        for record in document["deals"]:
            assert list(record) == list(COLUMNS)
            for key in ("amount", "original_amount"):
                assert record[key] is None or isinstance(record[key], str)
            for key in ("created_at", "closed_at"):
                if record[key] is not None:
                    assert dt.datetime.fromisoformat(record[key]).utcoffset() == dt.timedelta(0)
            assert (record["reason"] is None) == (record["lever"] != "excluded")
            if record["reason"]:
                assert record["reason_text"] == REASONS[record["reason"]]
        w2 = next(r for r in document["deals"] if r["id"] == "w2" and r["lever"] == "won")
        assert (w2["amount"], w2["original_amount"], w2["currency"]) == ("10500", "1000", "USD")
        seconds = [r["cycle_seconds"] for r in document["deals"] if r["lever"] == "cycle"]
        value = (sum((Decimal(r["amount"]) for r in document["deals"] if r["lever"] == "won" and r["amount"]),
                     Decimal(0)) / 5).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        assert document["totals"] == {
            "open": {"deals": 4},
            "won": {"deals": 7, "amount_deals": 5, "amount_sum": "139500", "avg_deal_value": str(value)},
            "lost": {"deals": 1},
            "cycle": {"deals": 6, "cycle_seconds": sum(seconds),
                      "cycle_days": str((Decimal(sum(seconds)) / (86400 * 6)).quantize(
                          Decimal("0.01"), rounding=ROUND_HALF_UP))},
            "excluded": {"deals": 5, "reasons": {"no_amount": 1, "no_rate": 1, "no_created": 1,
                                                  "no_close_date": 1, "dated_by_update": 1}},
        }

    def test_empty_store_lists_nothing(self, store: sa.Engine) -> None:
        """No deals: valid JSON with empty lists and zero totals; a table with '0 deals' per lever."""
        document = json.loads(rendered(store, "json"))
        assert document["deals"] == []
        assert document["totals"]["won"] == {"deals": 0, "amount_deals": 0, "amount_sum": "0",
                                             "avg_deal_value": None}
        assert rendered(store, "table").count("  0 deals\n") == 5


class TestCommand:
    def test_unknown_scope_is_one_line_exit_2(self, tmp_path: Path) -> None:
        """`velocity deals --scope owner:nobody` on a synced store: exit 2, one line naming the key."""
        path = seed_config(tmp_path)
        assert exit_code_velocity(["--config", str(path), "sync"], cwd=tmp_path).returncode == 0
        result = exit_code_velocity(["--config", str(path), "deals", "--scope", "owner:nobody"], cwd=tmp_path)
        assert_one_line(result, "scope", "no owner 'nobody' in the store")
        assert result.stdout == ""

    def test_one_lever_as_csv_through_the_cli(self, tmp_path: Path) -> None:
        """`deals --lever won --format csv` prints the header and the won deals of the seed example only."""
        path = seed_config(tmp_path)
        assert exit_code_velocity(["--config", str(path), "sync"], cwd=tmp_path).returncode == 0
        result = exit_code_velocity(["--config", str(path), "deals", "--as-of", "2026-11-26",
                                     "--lever", "won", "--format", "csv"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        report = exit_code_velocity(["--config", str(path), "report", "--as-of", "2026-11-26", "--format",
                                     "json"], cwd=tmp_path)
        everything = json.loads(report.stdout)["scopes"][0]
        assert {r["lever"] for r in rows} == {"won"}
        assert len(rows) == everything["won"] > 0
