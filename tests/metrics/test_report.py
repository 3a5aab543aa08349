"""``velocity report`` output in table, JSON and CSV, pinned by golden files.

Rewrite the golden files with ``UPDATE_GOLDEN=1 .venv/bin/pytest tests/metrics/test_report.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from sales_velocity.metrics.freshness import Freshness, SourceFreshness
from sales_velocity.metrics.leftovers import LeftOut
from sales_velocity.metrics.report import FIELDS, render_report
from sales_velocity.metrics.velocity import Levers, ScopeVelocity, Velocity, VelocityReport

D = Decimal
GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"


def report() -> VelocityReport:
    """A report with every case a reader meets: defined, zero, undefined, exclusions, odd labels."""
    seed = Levers(100, 20, 80, D("0.2"), D(50000), D(90))
    return VelocityReport(
        as_of=dt.date(2026, 11, 26),
        window_days=90,
        currency="NOK",
        timezone="Europe/Oslo",
        scopes=(
            ScopeVelocity("all", "", "All pipelines",
                          Levers(112, 23, 84, D(23) / D(107), D("45123.456"), D("62.3456")),
                          Velocity(D("18817.28")), excluded_no_amount=2, excluded_currency=1),
            ScopeVelocity("pipeline", "hubspot/default", "New business", seed, Velocity(D("11111.11"))),
            ScopeVelocity("pipeline", "pipedrive/7", "Fornyelser – Nord",
                          Levers(12, 0, 4, D(0), None, None),
                          Velocity(None, "no won deal in the last 90 days")),
            ScopeVelocity("owner", "hubspot/41", "Nordmann, Kari",
                          Levers(0, 3, 1, D("0.75"), D("1999.995"), D("3.5")), Velocity(D("0.00"))),
            ScopeVelocity("owner", "pipedrive/9", "ola@example.com",
                          Levers(5, 1, 0, D(1), None, D(10)),
                          Velocity(None, "won deals have no amount"), excluded_no_amount=1),
        ),
    )


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with the golden file ``name`` (or rewrite it with UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


class TestGolden:
    @pytest.mark.parametrize(("fmt", "name"), [("table", "report_table.txt"), ("json", "report_json.json"),
                                               ("csv", "report_csv.csv")])
    def test_formats(self, fmt: str, name: str) -> None:
        """Each format renders the reference report exactly as its golden file."""
        check_golden(name, render_report(report(), fmt))  # type: ignore[arg-type]


class TestMachineFormats:
    def test_json_values(self) -> None:
        """JSON has the report header and exact decimal strings, null where undefined."""
        doc = json.loads(render_report(report(), "json"))
        assert (doc["as_of"], doc["window_days"], doc["currency"], doc["timezone"]) == (
            "2026-11-26", 90, "NOK", "Europe/Oslo")
        seed = doc["scopes"][1]
        assert (seed["win_rate"], seed["avg_deal_value"], seed["cycle_days"], seed["velocity_per_day"]) == (
            "0.2000", "50000.00", "90.0", "11111.11")
        undefined = doc["scopes"][2]
        assert undefined["velocity_per_day"] is None
        assert undefined["undefined_reason"] == "no won deal in the last 90 days"
        assert doc["scopes"][3]["avg_deal_value"] == "2000.00"  # 1999.995 rounds half up
        assert doc["scopes"][3]["velocity_per_day"] == "0.00"

    def test_csv_round_trips(self) -> None:
        """CSV has one header and one row per scope; labels with commas survive quoting."""
        rows = list(csv.DictReader(io.StringIO(render_report(report(), "csv"))))
        assert len(rows) == 5
        assert tuple(rows[0]) == FIELDS
        assert rows[3]["label"] == "Nordmann, Kari"
        assert rows[2]["velocity_per_day"] == ""

    def test_unknown_format(self) -> None:
        """An unknown format is a clear error."""
        with pytest.raises(ValueError, match="unknown report format 'xml'"):
            render_report(report(), "xml")  # type: ignore[arg-type]


class TestTable:
    def test_empty_sections_and_no_footnote(self) -> None:
        """Without pipelines or owners the sections say so, and nothing excluded means no footnote."""
        only_all = VelocityReport(dt.date(2026, 1, 5), 1, "EUR", "UTC", (
            ScopeVelocity("all", "", "All pipelines", Levers(0, 0, 0, None, None, None),
                          Velocity(None, "no won deal in the last day")),))
        text = render_report(only_all, "table")
        assert text.splitlines()[0] == "Sales velocity as of 2026-01-05 (last 1 day, UTC, EUR)"
        assert text.count("(none)") == 2
        assert "undefined (no won deal in the last day)" in text
        assert "*" not in text

    def test_columns_line_up(self) -> None:
        """Every defined velocity ends in the same column, whatever the label length."""
        lines = [ln for ln in render_report(report(), "table").splitlines() if ln.endswith("/day")]
        assert len(lines) == 3
        assert len({len(ln) for ln in lines}) == 1


class TestTrust:
    def test_table_with_freshness_and_what_was_left_out(self) -> None:
        """The table gives each source's last good sync, warns of bad ones, footnotes left-out deals."""
        now = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
        hour, two_days = dt.timedelta(hours=1), dt.timedelta(days=2)
        freshness = Freshness((
            SourceFreshness("hubspot", now - hour, now - hour, False, False),
            SourceFreshness("pipedrive", now - two_days, now, True, True, "HTTP 503 after 5 tries"),
            SourceFreshness("csv", None, None, False, True),
        ), 26, now)
        left = LeftOut(no_amount=2, no_rate=1, no_close_date=3, dated_by_update=4)
        text = render_report(report(), "table", freshness=freshness, left_out=left)
        check_golden("report_table_trust.txt", text)
        doc = json.loads(render_report(report(), "json", freshness=freshness, left_out=left))
        assert [s["source"] for s in doc["sources"] if s["failed"]] == ["pipedrive"]
        assert doc["left_out"]["closed_without_close_date"] == 3
