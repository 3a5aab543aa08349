"""`velocity export`: stage history in the CSV (an export feeds back in), formula-safe cells."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa

from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedSettings
from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.testing.contract import check_stream
from sales_velocity.scheduler import main
from sales_velocity.sync.export import EXPORT_COLUMNS, neutralise_formula, write_export
from sales_velocity.sync.store import deals_table, make_engine, stage_events_table

NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)


def velocity(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in-process with the pinned clock; (exit code, stdout)."""
    out = io.StringIO()
    code = main(args, env=env, out=out, now=lambda: NOW)
    return code, out.getvalue()


def stored(url: str) -> tuple[dict[str, tuple[Any, ...]], set[tuple[str, str, dt.datetime]]]:
    """Each deal's key fields, and every stage event as (deal, stage, entered_at)."""
    engine = make_engine(url)
    d, e = deals_table, stage_events_table
    try:
        with engine.connect() as conn:
            deals = {r.external_id: (r.title, r.amount, r.currency, r.status, r.stage_id, r.owner_id,
                                     r.created_at, r.closed_at, r.expected_close_date)
                     for r in conn.execute(sa.select(d))}
            events = {(r.external_id, r.stage_id, r.entered_at)
                      for r in conn.execute(sa.select(e.c.external_id, e.c.stage_id, e.c.entered_at))}
    finally:
        engine.dispose()
    return deals, events


class TestRoundTrip:
    def test_export_feeds_back_in_with_its_stage_history(self, tmp_path: Path, db_url: str) -> None:
        """Demo -> store -> `export --format csv` -> a csv source -> a new store: same deals and history."""
        first = tmp_path / "first.toml"
        first.write_text('timezone = "Europe/Oslo"\ncurrency = "NOK"\n'
                         '[[sources]]\nname = "demo"\nkind = "demo"\n', encoding="utf-8")
        env = {"VELOCITY_DATABASE_URL": db_url}
        assert velocity(["--config", str(first), "sync"], env)[0] == 0
        code, exported = velocity(["--config", str(first), "export", "--format", "csv"], env)
        assert code == 0
        header = next(csv.reader(io.StringIO(exported)))
        assert header == list(EXPORT_COLUMNS)
        assert header[-1] == "stage_history"
        (tmp_path / "export.csv").write_text(exported, encoding="utf-8")
        second = tmp_path / "second.toml"
        second.write_text('timezone = "Europe/Oslo"\ncurrency = "NOK"\n[store]\nurl = "sqlite:///again.db"\n'
                          '[[sources]]\nname = "demo"\nkind = "csv"\npath = "export.csv"\n', encoding="utf-8")
        code, out = velocity(["--config", str(second), "sync"], {})
        assert code == 0, out
        assert "demo: ok: 400 seen, 400 new, 0 changed, 0 unchanged, 0 deleted, 0 rejected" in out
        deals_a, events_a = stored(db_url)
        deals_b, events_b = stored(f"sqlite:///{tmp_path / 'again.db'}")
        assert deals_b == deals_a
        assert len(events_a) > 400  # every demo deal went through at least one stage
        assert events_b == events_a

    def test_json_lines_carry_the_history_as_a_list(self, tmp_path: Path) -> None:
        """For machines, stage_history is a list of {stage, entered_at}."""
        config = tmp_path / "v.toml"
        config.write_text('[store]\nurl = "sqlite:///v.db"\n[[sources]]\nname = "demo"\nkind = "demo"\n',
                          encoding="utf-8")
        assert velocity(["--config", str(config), "sync"], {})[0] == 0
        code, out = velocity(["--config", str(config), "export", "--format", "json"], {})
        assert code == 0
        first = json.loads(out.splitlines()[0])
        assert first["stage_history"]
        assert set(first["stage_history"][0]) == {"stage", "entered_at"}
        entered = dt.datetime.fromisoformat(first["stage_history"][0]["entered_at"])
        assert entered.utcoffset() == dt.timedelta(0)


def row(title: str, **extra: Any) -> dict[str, Any]:
    """An export row as ``export_rows`` yields it."""
    base: dict[str, Any] = dict.fromkeys(EXPORT_COLUMNS)
    base.update(source="s", id=title[:8] or "x", title=title, amount=Decimal("-1500"), currency="NOK",
                pipeline="P", stage="S", status="open", archived=False, stage_history=[])
    base.update(extra)
    return base


class TestFormulaCells:
    TITLES: ClassVar[list[str]] = [
        "=HYPERLINK(\"http://x\")", "+47 22 33 44 55", "-5 % rabatt", "@SUM(A1:A9)", "\tTab first",
        "\rCR first", "A=B is fine", "'quoted already"]

    def test_neutralise_formula(self) -> None:
        """A text beginning with = + - @ tab or CR gets a leading apostrophe; others are left alone."""
        assert [neutralise_formula(t) for t in self.TITLES] == [
            "'=HYPERLINK(\"http://x\")", "'+47 22 33 44 55", "'-5 % rabatt", "'@SUM(A1:A9)", "'\tTab first",
            "'\rCR first", "A=B is fine", "'quoted already"]

    def test_csv_cells_are_text_in_a_spreadsheet_and_numbers_stay_numbers(self) -> None:
        """Every formula-like text cell is guarded; a negative amount is written as a number."""
        out = io.StringIO()
        write_export([row(t, owner="=cmd|' /C calc'!A0", stage_history=[("=Stage", NOW)])
                      for t in self.TITLES], "csv", out)
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert [r["title"] for r in rows] == [neutralise_formula(t) for t in self.TITLES]
        assert {r["owner"] for r in rows} == {"'=cmd|' /C calc'!A0"}
        assert {r["stage_history"] for r in rows} == {"'=Stage@2026-11-26T09:00:00+00:00"}
        assert {r["amount"] for r in rows} == {"-1500.00"}
        for r in rows:  # nothing a spreadsheet would evaluate
            assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r"))
                           for k, v in r.items() if k != "amount")

    def test_the_feed_reads_the_guarded_cells_back_as_they_were(self, tmp_path: Path) -> None:
        """An exported guard is dropped on the way back in: the titles come back unchanged."""
        titles = ["=1+1", "+47 22 33 44 55", "-5 % rabatt", "@home", "A=B is fine"]
        out = io.StringIO()
        write_export([row(t, id=f"D-{i}") for i, t in enumerate(titles)], "csv", out)
        path = tmp_path / "export.csv"
        path.write_text(out.getvalue(), encoding="utf-8")
        model = validate_settings(CsvFeedSettings, {"name": "s", "kind": "csv", "path": str(path)}, "s")
        deals, rejects, _ = check_stream(CsvFeedConnector(model).deals(None), "s")
        assert rejects == []
        assert [d.title for d in deals] == titles
        assert {d.amount for d in deals} == {Decimal("-1500.00")}
