"""The CSV feed: parsing, settings, rejects, errors, cursor, streaming, fixtures, demo, engine.

tests/fixtures/csv/seed_example.csv encodes the seed article's example. As of
2026-11-26 (time zone UTC, window 90 days) it holds 100 open deals (created
2026-05-01..2026-08-08, never closed), 10 won deals of 50 000 NOK each, created
exactly 90 days before their close dates (2026-09-01..2026-11-03), and 40 lost
deals closed 2026-09-01..2026-11-18. So N=100, V=50 000, p=10/50=0.20, L=90 and
velocity = 100 x 50 000 x 0.20 / 90 = 11 111.11 per day. Dates are plain ISO
dates, so every deal has whole_days=True.

tests/fixtures/csv/maven_sales_pipeline.csv is Maven Analytics' public sample
(8,800 opportunities). Every row is valid: Prospecting rows have no engage date
(open deals without a creation date still count as open), open rows have no close
value (no amount: a hygiene problem, not a bad row), lost rows have a close value
of 0 and 1,425 open rows have no account (no title).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sales_velocity.connectors import build_connector
from sales_velocity.connectors.base import Checkpoint, Deal, Rejected, StageVisit
from sales_velocity.connectors.csv_feed import (
    CANONICAL_COLUMNS,
    CsvFeedConnector,
    CsvFeedError,
    CsvFeedSettings,
    MissingColumnsError,
    format_rejects,
    parse_amount,
    parse_status,
)
from sales_velocity.connectors.demo import DemoConnector
from sales_velocity.connectors.demo import generate as demo
from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.errors import ConfigError, FatalAPIError
from sales_velocity.kernel.testing.contract import check_connector, check_stream
from sales_velocity.sync.engine import SyncResult, sync_source
from sales_velocity.sync.store import deals_table, sync_rejects_table

FIXTURES = Path(__file__).parents[1] / "fixtures"
CSV_DIR = FIXTURES / "csv"
GOLDEN = FIXTURES / "golden"
REPO = Path(__file__).parents[2]
UTC = dt.UTC
D = Decimal
AS_OF = dt.date(2026, 11, 26)

MAVEN_COLUMNS = {
    "id": "opportunity_id", "owner": "sales_agent", "title": "account", "stage": "deal_stage",
    "created_at": "engage_date", "closed_at": "close_date", "amount": "close_value",
}


def feed(
    path: Path | str, *, today: Callable[[], dt.date] | None = None, **settings: Any
) -> CsvFeedConnector:
    """A CSV feed on ``path``, validated the way the config loader does it."""
    raw = {"name": "csv", "kind": "csv", "path": str(path), **settings}
    model = validate_settings(CsvFeedSettings, raw, "sources[0]", {"config_dir": CSV_DIR})
    return CsvFeedConnector(model, today=today)


def demo_feed() -> CsvFeedConnector:
    """The bundled demo feed as config.example.toml configures it, on the demo's own day."""
    configured = build_connector({"name": "demo", "kind": "demo"}, "sources[0]", {"config_dir": REPO})
    assert isinstance(configured, DemoConnector)
    return DemoConnector(configured.demo_settings, today=lambda: AS_OF)


def pull(connector: CsvFeedConnector, since: str | None = None) -> tuple[
    list[Deal], list[Rejected], list[Checkpoint]
]:
    """The whole stream, checked against the connector contract."""
    return check_stream(connector.deals(since), connector.name)


def write(tmp_path: Path, text: str, name: str = "deals.csv") -> Path:
    """Write a CSV file (UTF-8) and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def by_id(deals: list[Deal]) -> dict[str, Deal]:
    """Deals keyed by external id, in stream order."""
    return {d.external_id: d for d in deals}


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/fixtures/golden/<name>; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def levers(deals: list[Deal], as_of: dt.date, zone: dt.tzinfo, window: int = 90) -> tuple[
    int, Decimal | None, Decimal | None, Decimal | None
]:
    """N, V, p, L by DESIGN.md's definition (a reference the fixtures are checked against)."""
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    start = end - dt.timedelta(days=window)
    live = [d for d in deals if d.status != "deleted"]
    n_open = sum(
        1 for d in live
        if (d.created_at is None or d.created_at < end)
        and (d.status == "open" or (d.closed_at is not None and d.closed_at >= end))
    )
    closed = [d for d in live if d.closed_at is not None and start <= d.closed_at < end]
    won = [d for d in closed if d.status == "won"]
    lost = [d for d in closed if d.status == "lost"]
    if not won:
        return n_open, None, None, None
    amounts = [d.amount for d in won if d.amount is not None]
    value = sum(amounts, D(0)) / len(amounts) if amounts else None
    days = [D((d.closed_at - d.created_at).total_seconds()) / 86400 for d in won  # type: ignore[operator]
            if d.created_at is not None]
    return n_open, value, D(len(won)) / (len(won) + len(lost)), sum(days, D(0)) / len(days)


class TestParseAmount:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("50000", D("50000")),
            ("50000.5", D("50000.5")),
            ("50 000,50", D("50000.50")),
            ("50,000.50", D("50000.50")),
            ("1.234.567,89", D("1234567.89")),
            ("1,234,567", D("1234567")),
            ("1.234.567", D("1234567")),
            ("1\u00a0234\u00a0567,89", D("1234567.89")),
            ("12\u202f500", D("12500")),
            ("50 000.500", D("50000.500")),
            ("0,125", D("0.125")),
            ("12,5", D("12.5")),
            ("1234,567", D("1234.567")),
            ("-1 500,00", D("-1500.00")),
            ("+42", D("42")),
            ("  7  ", D("7")),
        ],
    )
    def test_reads_the_forms_people_write(self, text: str, expected: Decimal) -> None:
        """Decimal points and commas, and space/NBSP/narrow-NBSP/comma/point thousands, are read right."""
        value = parse_amount(text)
        assert value == expected
        assert isinstance(value, Decimal)

    def test_empty_is_no_amount(self) -> None:
        """An empty or blank cell means the deal has no amount."""
        assert parse_amount("") is None
        assert parse_amount("   ") is None

    @pytest.mark.parametrize(
        "text",
        ["12x", "ABC 500", "kr", "$ 5 EUR", "1e5", "NaN", "-", "1,234,56", "12 34", "1,234.567,8", "50,",
         "1 234.567,5"],
    )
    def test_non_numbers_are_errors(self, text: str) -> None:
        """Anything that is not cleanly a number raises with a reason."""
        with pytest.raises(ValueError, match="is not a number"):
            parse_amount(text)

    @pytest.mark.parametrize("text", ["1,234", "1.234", "999,000"])
    def test_one_separator_before_three_digits_is_ambiguous(self, text: str) -> None:
        """1,234 could be 1234 or 1.234: rejected unless decimal_separator decides."""
        with pytest.raises(ValueError, match="ambiguous"):
            parse_amount(text)

    def test_decimal_separator_resolves_ambiguity(self) -> None:
        """With decimal_separator set, the other mark is a thousand separator."""
        assert parse_amount("1,234", ".") == D("1234")
        assert parse_amount("1,234", ",") == D("1.234")
        assert parse_amount("1.234", ",") == D("1234")
        with pytest.raises(ValueError, match="is not a number"):
            parse_amount("50 000,50", ".")

    def test_absurd_amounts_are_errors(self) -> None:
        """Amounts the store cannot hold are rejected instead of failing the sync."""
        with pytest.raises(ValueError, match="too large"):
            parse_amount("10000000000000000")


class TestParseStatus:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("open", "open"), ("WON", "won"), ("Lost", "lost"), ("deleted", "deleted"),
         ("Closed Won", "won"), ("closed-lost", "lost"), ("closed_won", "won"), ("ClosedLost", "lost")],
    )
    def test_values_and_synonyms(self, text: str, expected: str) -> None:
        """Status values are case-insensitive and accept the common CRM synonyms."""
        assert parse_status(text) == expected

    @pytest.mark.parametrize("text", ["pending", "", "won?"])
    def test_other_values_are_errors(self, text: str) -> None:
        """Anything else is an error naming the accepted values."""
        with pytest.raises(ValueError, match="expected open, won, lost or deleted"):
            parse_status(text)


class TestSettings:
    def test_relative_path_is_resolved_against_the_config_dir(self, tmp_path: Path) -> None:
        """A relative path is relative to the config file's folder; existence is not checked yet."""
        model = validate_settings(
            CsvFeedSettings, {"name": "x", "kind": "csv", "path": "data/deals.csv"}, "sources[0]",
            {"config_dir": tmp_path},
        )
        assert model.path == tmp_path / "data" / "deals.csv"
        assert not model.path.exists()

    def test_absolute_path_is_kept(self, tmp_path: Path) -> None:
        """An absolute path is used as it is."""
        model = validate_settings(
            CsvFeedSettings, {"name": "x", "kind": "csv", "path": str(tmp_path / "a.csv")}, "s",
            {"config_dir": Path("/elsewhere")},
        )
        assert model.path == tmp_path / "a.csv"

    def test_defaults(self) -> None:
        """The defaults match the documented ones (no delimiter: it is detected from the header)."""
        model = CsvFeedSettings(name="x", path=Path("a.csv"))
        assert (model.delimiter, model.timezone, model.default_pipeline, model.currency) == (
            None, "UTC", "default", None,
        )
        assert (model.encoding, model.python_encoding(), model.date_format, model.date_formats) == (
            "utf-8", "utf-8-sig", [], {},
        )
        assert model.status.won == ["Won", "Closed Won"]
        assert model.status.lost == ["Lost", "Closed Lost"]

    def test_unknown_column_names_list_the_valid_ones(self) -> None:
        """A typo in [sources.columns] is a config error that lists every valid canonical name."""
        with pytest.raises(ConfigError) as info:
            validate_settings(
                CsvFeedSettings,
                {"name": "x", "kind": "csv", "path": "a.csv", "columns": {"ammount": "Value"}},
                "sources[1]",
            )
        message = str(info.value)
        assert "sources[1].columns" in message
        assert "ammount" in message
        assert ", ".join(CANONICAL_COLUMNS) in message

    @pytest.mark.parametrize(
        ("key", "value", "needle"),
        [
            ("timezone", "Mars/Olympus", "unknown time zone"),
            ("delimiter", ";;", "one character"),
            ("currency", "kroner", "3-letter"),
            ("date_format", "%Q", "strptime"),
            ("link_template", "https://crm/{deal}", "{id}"),
            ("status", {"won": ["Done"], "lost": ["done"]}, "both won and lost"),
            ("decimal_separator", ";", "decimal_separator"),
            ("colums", {}, "unknown key"),
        ],
    )
    def test_bad_values_are_config_errors(self, key: str, value: object, needle: str) -> None:
        """Each bad setting fails at config time with its key path and a reason."""
        with pytest.raises(ConfigError) as info:
            validate_settings(
                CsvFeedSettings, {"name": "x", "kind": "csv", "path": "a.csv", key: value}, "sources[0]"
            )
        assert needle in str(info.value)
        assert f"sources[0].{key}" in str(info.value)

    def test_currency_is_upper_cased(self) -> None:
        """A lower-case default currency is accepted and stored upper-case."""
        assert CsvFeedSettings(name="x", path=Path("a.csv"), currency="nok").currency == "NOK"

    def test_registered_entry_point_builds_it(self, tmp_path: Path) -> None:
        """Kind "csv" builds this connector through the entry points, as Factory(settings)."""
        connector = build_connector(
            {"name": "demo", "kind": "csv", "path": "x.csv"}, "sources[0]", {"config_dir": tmp_path}
        )
        assert isinstance(connector, CsvFeedConnector)
        assert connector.name == "demo"
        assert connector.path == tmp_path / "x.csv"


class TestReading:
    def test_bom_and_decimal_comma(self) -> None:
        """A UTF-8 file with a BOM and CRLF lines is read; every amount form comes out right."""
        deals, rejects, _ = pull(feed("decimal_comma_bom.csv"))
        assert rejects == []
        got = by_id(deals)
        assert list(got) == ["A-1", "A-2", "A-3", "A-4", "A-5", "A-6", "A-7"]  # the BOM is not in the id
        assert {k: d.amount for k, d in got.items()} == {
            "A-1": D("50000.50"), "A-2": D("1234567.89"), "A-3": D("12500"), "A-4": D("50000.50"),
            "A-5": D("50000.5"), "A-6": D("1234.5"), "A-7": None,
        }
        assert got["A-1"].title == "Fjordkraft – årsavtale"
        assert got["A-5"].currency == "NOK"
        assert got["A-6"].currency is None
        assert got["A-5"].status == "won"
        assert got["A-6"].status == "lost"

    def test_semicolon_delimiter_and_mapped_headers(self) -> None:
        """A ';' file with its own headers reads through [sources.columns] and [sources.status]."""
        connector = feed(
            "semicolon.csv", delimiter=";",
            columns={"id": "Avtale-ID", "title": "Navn", "amount": "Beløp", "currency": "Valuta",
                     "stage": "Fase", "owner": "Selger", "created_at": "Opprettet", "closed_at": "Lukket"},
            status={"won": ["Vunnet"], "lost": ["Tapt"]},
        )
        deals, rejects, _ = pull(connector)
        assert rejects == []
        got = by_id(deals)
        assert got["N-1"].amount == D("50000.50")
        assert (got["N-1"].status, got["N-2"].status, got["N-3"].status) == ("won", "lost", "open")
        assert got["N-3"].title == "Havbris; Sjømat"
        assert got["N-3"].amount == D("7500.25")
        assert got["N-2"].owner == "Ola Hansen"

    def test_custom_date_format_with_iso_fallback(self) -> None:
        """date_format is tried first, ISO 8601 second; anything else is a bad row."""
        deals, rejects, _ = pull(feed("custom_date_format.csv", date_format="%d.%m.%Y"))
        got = by_id(deals)
        assert got["F-1"].created_at == dt.datetime(2026, 9, 1, tzinfo=UTC)
        assert got["F-1"].closed_at == dt.datetime(2026, 10, 15, tzinfo=UTC)
        assert got["F-1"].expected_close_date == dt.date(2026, 10, 10)
        assert got["F-1"].whole_days is True
        assert got["F-2"].created_at == dt.datetime(2026, 9, 2, 8, 15, tzinfo=UTC)
        assert got["F-2"].whole_days is False
        assert [(r.where, r.reason) for r in rejects] == [
            ("line 4", 'created_at "09/03/2026" is not a date '
                       "(expected %d.%m.%Y or ISO 8601 like 2026-11-26 or 2026-11-26T14:30)"),
        ]

    def test_date_format_with_a_time(self, tmp_path: Path) -> None:
        """A date_format with time directives gives datetimes (not whole days)."""
        path = write(tmp_path, "id,stage,created_at\nX-1,Open,11/26/2026 02:30 PM\n")
        deals, _, _ = pull(feed(path, date_format="%m/%d/%Y %I:%M %p"))
        assert deals[0].created_at == dt.datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
        assert deals[0].whole_days is False

    def test_time_zone_of_naive_values(self, tmp_path: Path) -> None:
        """Naive datetimes and plain dates are local to the feed's zone; offsets are honoured."""
        path = write(tmp_path, (
            "id,stage,created_at,closed_at,next_activity_at,expected_close_date\n"
            "X-1,Won,2026-07-01,2026-11-26T10:00:00,2026-11-27T09:00:00+00:00,2026-11-30T23:30:00Z\n"
        ))
        deal = pull(feed(path, timezone="Europe/Oslo"))[0][0]
        assert deal.created_at == dt.datetime(2026, 6, 30, 22, 0, tzinfo=UTC)  # midnight in Oslo (CEST)
        assert deal.closed_at == dt.datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # 10:00 CET
        assert deal.next_activity_at == dt.datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
        assert deal.expected_close_date == dt.date(2026, 12, 1)  # 00:30 in Oslo
        assert deal.whole_days is True  # created_at had no time

    def test_stage_mapping_without_status_column(self, tmp_path: Path) -> None:
        """Without a status column, stages in status.won/lost close the deal; other stages are open."""
        path = write(tmp_path, "id,stage\nX-1,Signed\nX-2,Dropped\nX-3,Demo\nX-4,won\nX-5,\n")
        deals, _, _ = pull(feed(path, status={"won": ["Signed"], "lost": ["Dropped"]}))
        assert [d.status for d in deals] == ["won", "lost", "open", "open", "open"]
        assert deals[4].stage is None

    def test_default_mapping_knows_won_and_lost_stages(self, tmp_path: Path) -> None:
        """Without [sources.status], stages named Won/Lost (any case) close the deal."""
        path = write(tmp_path, "id,stage\nX-1,won\nX-2,Closed Lost\nX-3,Demo\n")
        deals, _, _ = pull(feed(path))
        assert [d.status for d in deals] == ["won", "lost", "open"]

    def test_status_column_wins_over_stage_names(self, tmp_path: Path) -> None:
        """With a status column the status comes from it, even where the stage says otherwise."""
        path = write(tmp_path, "id,stage,status\nX-1,Won,open\nX-2,Negotiation,Closed Lost\n")
        deals, _, _ = pull(feed(path))
        assert [d.status for d in deals] == ["open", "lost"]

    def test_defaults_link_raw_and_blank_lines(self, tmp_path: Path) -> None:
        """Defaults fill missing pipeline/currency; the link is built; raw keeps the row as strings."""
        path = write(tmp_path, (
            "ID,Stage,Title,Owner,Owner_Email,Next_Step\n"
            "A/1,Demo, Big deal ,kari,kari@example.com,Call\n\n\n"
            "A-2,Demo,,,,\n"
        ))
        connector = feed(path, currency="EUR", default_pipeline="Sales",
                         link_template="https://crm.example.com/deals/{id}")
        deals, rejects, _ = pull(connector)
        assert rejects == []
        first, second = deals
        assert (first.external_id, first.pipeline, first.currency) == ("A/1", "Sales", "EUR")
        assert first.link == "https://crm.example.com/deals/A%2F1"
        assert (first.title, first.owner, first.next_step) == ("Big deal", "kari", "Call")
        assert first.raw == {"ID": "A/1", "Stage": "Demo", "Title": " Big deal ", "Owner": "kari",
                             "Owner_Email": "kari@example.com", "Next_Step": "Call"}
        assert (second.title, second.owner, second.next_step, second.amount) == (None, None, None, None)

    def test_closed_deal_without_close_date_keeps_none(self, tmp_path: Path) -> None:
        """A won deal without closed_at is kept with closed_at None (metrics decide what to do)."""
        path = write(tmp_path, "id,status,created_at\nX-1,won,2026-01-01\n")
        deal = pull(feed(path))[0][0]
        assert (deal.status, deal.closed_at) == ("won", None)

    def test_trailing_empty_fields_are_tolerated(self, tmp_path: Path) -> None:
        """Extra fields that are all empty (a trailing delimiter) do not make a bad row."""
        path = write(tmp_path, "id,stage\nX-1,Demo,,\nX-2,Demo,oops\n")
        deals, rejects, _ = pull(feed(path))
        assert [d.external_id for d in deals] == ["X-1"]
        assert [(r.where, r.reason) for r in rejects] == [("line 3", "has 3 fields, the header has 2")]


class TestStageHistory:
    def test_history_cells_become_stage_visits(self, tmp_path: Path) -> None:
        """'Stage@date; Stage@date' becomes the deal's stage history, in the feed's zone, dates as dates."""
        path = write(tmp_path, (
            "id,stage,status,stage_history\n"
            '1,Won,won,"Intro@2026-09-01T09:00; Offer@2026-09-20 ;Won@2026-10-02T15:30+02:00"\n'
            "2,Intro,open,\n"
        ))
        deals, rejects, _ = pull(feed(path, timezone="Europe/Oslo"))
        assert rejects == []
        got = by_id(deals)
        assert got["1"].stage_history == (
            StageVisit("Intro", dt.datetime(2026, 9, 1, 7, 0, tzinfo=UTC)),
            StageVisit("Offer", dt.datetime(2026, 9, 19, 22, 0, tzinfo=UTC)),  # local midnight
            StageVisit("Won", dt.datetime(2026, 10, 2, 13, 30, tzinfo=UTC)),
        )
        assert got["2"].stage_history == ()

    def test_a_bad_history_entry_rejects_the_row_with_where_and_why(self, tmp_path: Path) -> None:
        """An entry without '@' or with a bad date rejects its row, saying which entry; others load."""
        path = write(tmp_path, (
            "id,stage,stage_history\n"
            "1,Offer,Intro 2026-09-01\n"
            '2,Offer,"Intro@2026-09-01;Offer@soon"\n'
            "3,Offer,Intro@2026-09-01\n"
        ))
        deals, rejects, _ = pull(feed(path))
        assert [d.external_id for d in deals] == ["3"]
        assert [(r.where, r.reason) for r in rejects] == [
            ("line 2", 'stage_history entry "Intro 2026-09-01" is not "stage@date"'),
            ("line 3", 'stage_history entry "Offer@soon": "soon" is not a date '
                       "(expected ISO 8601 like 2026-11-26 or 2026-11-26T14:30)"),
        ]

    def test_history_stages_give_the_pipeline_its_stage_order(self, tmp_path: Path) -> None:
        """Stages named in histories come first, in the order deals went through them."""
        path = write(tmp_path, (
            "id,pipeline,stage,stage_history\n"
            '1,Sales,Offer,"Intro@2026-09-01;Demo@2026-09-05;Offer@2026-09-09"\n'
            "2,Sales,Intro,\n"
        ))
        stages = next(iter(feed(path).pipelines())).stages
        assert [s.external_id for s in stages] == ["Intro", "Demo", "Offer"]

    def test_history_reaches_where_deals_wait(self, sqlite_store: sa.Engine) -> None:
        """The bundled demo's histories give 'where deals wait' a median for its open stages."""
        from sales_velocity.metrics.settings import MetricsSettings
        from sales_velocity.metrics.stage_times import stage_wait_times

        connector = demo_feed()
        assert sync_source(sqlite_store, connector).status == "ok"
        waits = stage_wait_times(sqlite_store, MetricsSettings(timezone="Europe/Oslo", currency="NOK"),
                                 AS_OF)
        assert {(w.pipeline_name, w.stage_name) for w in waits} == {
            ("New Business", "Prospecting"), ("New Business", "Qualified"), ("New Business", "Proposal"),
            ("New Business", "Negotiation"), ("Renewals", "Qualified"), ("Renewals", "Proposal"),
            ("Renewals", "Negotiation"),
        }
        assert all(w.deals > 0 and w.median_days > 0 for w in waits)


class TestRejects:
    def test_bad_rows_are_reported_and_skipped(self) -> None:
        """Each bad row becomes one Rejected with its line and every problem; good rows are kept."""
        deals, rejects, checkpoints = pull(feed("bad_rows.csv"))
        assert [d.external_id for d in deals] == ["B-1", "B-8", "B-10"]
        assert by_id(deals)["B-1"].title == "Good deal"  # the first of the duplicates is kept
        assert by_id(deals)["B-8"].title == "A title over\ntwo lines"
        assert by_id(deals)["B-10"].status == "won"
        assert [r.where for r in rejects] == [
            "line 3", "line 4", "line 5", "line 6", "line 7", "line 8", "line 9", "line 10", "line 13",
        ]
        assert [r.external_id for r in rejects] == [
            "B-2", "B-3", "B-4", None, "B-1", "B-5", "B-6", "B-7", "B-9",
        ]
        assert checkpoints[-1].complete is False  # more bad rows than good: deletes nothing

    def test_report_lines_golden(self) -> None:
        """The human-readable report of the bad rows matches the golden file."""
        _, rejects, _ = pull(feed("bad_rows.csv"))
        assert_golden("csv_rejects.txt", format_rejects(rejects) + "\n")

    def test_report_limit(self) -> None:
        """format_rejects can stop after a few lines and say how many more there are."""
        rejects = [Rejected(f"line {n}", "bad") for n in range(2, 7)]
        assert format_rejects(rejects, limit=2) == "line 2: bad\nline 3: bad\n... and 3 more"
        assert format_rejects([]) == ""

    def test_long_values_are_shortened_in_reasons(self, tmp_path: Path) -> None:
        """A huge bad cell does not make a huge reason."""
        path = write(tmp_path, f"id,stage,amount\nX-1,Demo,{'9x' * 500}\n")
        reason = pull(feed(path))[1][0].reason
        assert len(reason) < 80
        assert reason.startswith('amount "9x9x')
        assert '..." is not a number' in reason

    def test_overlong_field_is_a_bad_row(self, tmp_path: Path) -> None:
        """A field over max_row_kib rejects that row, as a row over it; the next rows are read."""
        path = write(tmp_path, f"id,stage,title\nX-1,Demo,{'a' * 200_000}\nX-2,Demo,ok\n")
        deals, rejects, _ = pull(feed(path, max_row_kib=150))
        assert [d.external_id for d in deals] == ["X-2"]
        assert [(r.where, r.reason) for r in rejects] == [
            ("line 2", "is longer than max_row_kib = 150 (a field of more than 153,600 characters)")]

    def test_a_field_over_the_csv_modules_default_limit_is_read(self, tmp_path: Path) -> None:
        """A 200,000-character cell is within the default max_row_kib (1 MiB): read, by row and by column."""
        path = write(tmp_path, f"id,stage,title\nX-1,Demo,{'a' * 200_000}\nX-2,Demo,ok\n")
        deals, rejects, _ = pull(feed(path))
        assert ([d.external_id for d in deals], rejects) == (["X-1", "X-2"], [])
        assert deals[0].title == "a" * 200_000
        by_column = [item for item in feed(path).batches(None) if not isinstance(item, Checkpoint)]
        ids = [row for table in by_column if isinstance(table, pa.Table)
               for row in table.column("external_id").to_pylist()]
        assert ids == ["X-1", "X-2"]

    def test_row_that_is_not_utf8_is_a_bad_row(self, tmp_path: Path) -> None:
        """A row with bytes that are not UTF-8 is rejected with advice; the others are kept."""
        path = tmp_path / "latin1.csv"
        path.write_bytes(b"id,stage,title\nX-1,Demo,Caf\xe9\nX-2,Demo,Caf\xc3\xa9\n")
        deals, rejects, _ = pull(feed(path))
        assert [(d.external_id, d.title) for d in deals] == [("X-2", "Café")]
        assert [(r.where, r.reason, r.external_id) for r in rejects] == [
            ("line 2", 'title is not valid UTF-8; save the file as UTF-8, or set its encoding '
                       '(Excel on Windows: encoding = "cp1252")', "X-1"),
        ]

    def test_overlong_id_is_a_bad_row(self, tmp_path: Path) -> None:
        """Ids longer than the store keeps are rejected (and the reported id is cut to fit)."""
        path = write(tmp_path, f"id,stage\n{'x' * 201},Demo\n")
        reject = pull(feed(path))[1][0]
        assert reject.reason == "id is longer than 200 characters"
        assert reject.external_id == "x" * 200


class TestErrors:
    def test_missing_file_raises_before_any_deal(self, tmp_path: Path) -> None:
        """A missing file is a FatalAPIError naming the file, raised on the first read."""
        stream = feed(tmp_path / "nope.csv").deals(None)
        with pytest.raises(CsvFeedError) as info:
            next(stream)
        assert isinstance(info.value, FatalAPIError)
        assert str(info.value) == f"{tmp_path / 'nope.csv'}: file not found"
        assert info.value.source == "csv"

    def test_missing_file_with_a_cursor(self, tmp_path: Path) -> None:
        """The same clear error comes when a cursor is stored."""
        with pytest.raises(CsvFeedError, match="file not found"):
            next(feed(tmp_path / "nope.csv").deals("abc:def"))

    def test_missing_required_column(self) -> None:
        """No stage or status column: the error names what is missing and the headers the file has."""
        connector = feed("missing_column.csv")
        with pytest.raises(MissingColumnsError) as info:
            next(connector.deals(None))
        assert str(info.value) == (
            f"{CSV_DIR / 'missing_column.csv'}: missing column stage or status; "
            'the file\'s headers are: "id", "title", "amount"'
        )
        assert info.value.missing == ("stage or status",)
        assert info.value.headers == ("id", "title", "amount")

    def test_mapped_columns_must_exist(self) -> None:
        """A column named in [sources.columns] but absent from the file is reported, id first."""
        connector = feed("seed_example.csv", columns={"id": "Deal ID", "amount": "Value"})
        with pytest.raises(MissingColumnsError) as info:
            connector.check()
        assert info.value.missing == ('id (mapped to "Deal ID")', 'amount (mapped to "Value")')
        assert "missing columns id (mapped to \"Deal ID\"), amount (mapped to \"Value\")" in str(info.value)

    def test_wrong_delimiter_gets_a_hint(self, tmp_path: Path) -> None:
        """A ';' file read with delimiter = "," says which delimiter to set."""
        path = write(tmp_path, "id;stage\nX-1;Demo\n")
        with pytest.raises(MissingColumnsError, match='set delimiter = ";"'):
            next(feed(path, delimiter=",").deals(None))

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file is an error, not an empty pull that would delete every deal."""
        path = write(tmp_path, "")
        with pytest.raises(CsvFeedError, match="the file is empty"):
            next(feed(path).deals(None))

    def test_header_not_utf8(self, tmp_path: Path) -> None:
        """A header that is not UTF-8 fails the file with advice."""
        path = tmp_path / "h.csv"
        path.write_bytes(b"id,stage,bel\xf8p\nX-1,Demo,1\n")
        with pytest.raises(CsvFeedError, match="not valid UTF-8"):
            next(feed(path).deals(None))

    def test_directory_instead_of_file(self, tmp_path: Path) -> None:
        """A directory path is a clear error too."""
        with pytest.raises(CsvFeedError, match="is a directory"):
            next(feed(tmp_path).deals(None))


class TestCursor:
    def test_final_checkpoint_is_complete_and_carries_the_file_hash(self) -> None:
        """The pull ends with Checkpoint(complete=True) whose cursor starts with the file's sha256."""
        _, _, checkpoints = pull(feed("seed_example.csv"))
        assert len(checkpoints) == 1
        sha = hashlib.sha256((CSV_DIR / "seed_example.csv").read_bytes()).hexdigest()
        assert checkpoints[0].complete is True
        assert checkpoints[0].cursor is not None
        assert checkpoints[0].cursor.split(":")[0] == sha

    def test_unchanged_file_yields_only_a_checkpoint(self) -> None:
        """With since = the current cursor, the stream is one incomplete checkpoint and no row is read."""
        connector = feed("seed_example.csv")
        cursor = pull(connector)[2][-1].cursor
        with capture_logs() as logs:
            items = list(connector.deals(cursor))
        assert items == [Checkpoint(cursor=cursor, complete=False)]
        assert [e["event"] for e in logs] == ["csv_feed.unchanged"]

    def test_changed_file_is_read_again(self, tmp_path: Path) -> None:
        """A changed file gives a new cursor and a full, complete pull."""
        path = tmp_path / "seed.csv"
        shutil.copy(CSV_DIR / "seed_example.csv", path)
        connector = feed(path)
        cursor = pull(connector)[2][-1].cursor
        with path.open("a", encoding="utf-8") as f:
            f.write("S-151,New deal,1000,NOK,Qualified,open,Kari Nordmann,2026-11-20,\n")
        deals, _, checkpoints = pull(connector, since=cursor)
        assert len(deals) == 151
        assert checkpoints[-1].cursor != cursor
        assert checkpoints[-1].complete is True

    def test_mostly_rejected_file_is_not_complete(self, tmp_path: Path) -> None:
        """More bad rows than good ones: the checkpoint is not complete, and a warning says why."""
        path = write(tmp_path, "id,stage,created_at\nX-1,Demo,2026-01-01\nX-2,Demo,1/2/26\nX-3,Demo,1/3\n")
        with capture_logs() as logs:
            deals, rejects, checkpoints = pull(feed(path))
        assert (len(deals), len(rejects)) == (1, 2)
        assert checkpoints[-1].complete is False
        warning = next(e for e in logs if e["event"] == "csv_feed.mostly_rejected")
        assert (warning["log_level"], warning["deals"], warning["rejected"]) == ("warning", 1, 2)

    def test_header_only_file_is_not_complete(self, tmp_path: Path) -> None:
        """A header with no rows (an export cut short) deletes nothing, and a warning says why."""
        path = write(tmp_path, "id,stage,created_at\n")
        with capture_logs() as logs:
            deals, rejects, checkpoints = pull(feed(path))
        assert (deals, rejects) == ([], [])
        assert checkpoints[-1].complete is False
        assert any(e["event"] == "csv_feed.empty" for e in logs)

    def test_changed_settings_change_the_cursor(self) -> None:
        """A new mapping or zone re-reads the same file (the cursor covers the settings too)."""
        base = pull(feed("seed_example.csv"))[2][-1].cursor
        other = pull(feed("seed_example.csv", timezone="Europe/Oslo"))[2][-1].cursor
        assert base != other
        assert base is not None
        assert other is not None
        assert base.split(":")[0] == other.split(":")[0]


class TestRebase:
    def test_dates_shift_by_today_minus_the_anchor(self, tmp_path: Path) -> None:
        """Every date and datetime moves by (today - rebase_dates_from) days; whole days stay whole."""
        path = write(tmp_path, (
            "id,stage,created_at,closed_at,expected_close_date,next_activity_at\n"
            "X-1,Won,2026-09-01,2026-11-20T10:00:00,2026-11-25,2026-11-27T09:00:00Z\n"
        ))
        connector = feed(path, rebase_dates_from="2026-11-26", today=lambda: dt.date(2027, 1, 5),
                         timezone="Europe/Oslo")
        deal = pull(connector)[0][0]
        days = dt.timedelta(days=40)
        oslo = ZoneInfo("Europe/Oslo")
        assert deal.created_at == dt.datetime.combine(dt.date(2026, 9, 1) + days, dt.time(), oslo)
        assert deal.closed_at == dt.datetime(2026, 11, 20, 10, 0, tzinfo=oslo) + days
        assert deal.expected_close_date == dt.date(2026, 11, 25) + days
        assert deal.next_activity_at == dt.datetime(2026, 11, 27, 9, 0, tzinfo=UTC) + days
        assert deal.created_at.utcoffset() == dt.timedelta(0)

    def test_a_new_day_re_reads_the_demo(self, tmp_path: Path) -> None:
        """The cursor includes the shift, so the rebased demo is re-read each day."""
        today = [dt.date(2026, 11, 26)]
        connector = feed(CSV_DIR / "seed_example.csv", rebase_dates_from="2026-11-26", today=lambda: today[0])
        cursor = pull(connector)[2][-1].cursor
        assert list(connector.deals(cursor)) == [Checkpoint(cursor, complete=False)]
        today[0] = dt.date(2026, 11, 27)
        deals, _, _ = pull(connector, since=cursor)
        assert len(deals) == 150

    def test_no_rebase_without_the_setting(self) -> None:
        """Without rebase_dates_from, today does not matter."""
        deal = pull(feed("seed_example.csv", today=lambda: dt.date(2030, 1, 1)))[0][0]
        assert deal.created_at == dt.datetime(2026, 6, 3, tzinfo=UTC)


class TestCatalog:
    def test_pipelines_and_stages_seen_in_the_file(self, tmp_path: Path) -> None:
        """Pipelines and stages by first appearance, won/lost stages flagged and placed last."""
        path = write(tmp_path, (
            "id,pipeline,stage\n1,Sales,Won\n2,Sales,Demo\n3,,Intro\n4,Sales,Lost\n5,Sales,Offer\n"
            "6,Sales,Demo\n7,Renewals,Offer\n"
        ))
        pipelines = list(feed(path).pipelines())
        assert [(p.external_id, p.name, p.order) for p in pipelines] == [
            ("Sales", "Sales", 0), ("default", "default", 1), ("Renewals", "Renewals", 2),
        ]
        sales = pipelines[0]
        assert [(s.external_id, s.order, s.is_won, s.is_lost) for s in sales.stages] == [
            ("Demo", 0, False, False), ("Offer", 1, False, False), ("Won", 2, True, False),
            ("Lost", 3, False, True),
        ]
        assert all(s.pipeline == "Sales" for s in sales.stages)

    def test_owners_with_their_emails(self, tmp_path: Path) -> None:
        """Owners are the distinct owner values; the e-mail is the first one given for them."""
        path = write(tmp_path, (
            "id,stage,owner,owner_email\n1,A,kari,\n2,A,ola,ola@example.com\n3,A,kari,kari@example.com\n"
            "4,A,,nobody@example.com\n"
        ))
        owners = list(feed(path).owners())
        assert [(o.external_id, o.name, o.email) for o in owners] == [
            ("kari", "kari", "kari@example.com"), ("ola", "ola", "ola@example.com"),
        ]

    def test_check_counts_rows_and_columns(self) -> None:
        """check() reads the header and counts the data rows."""
        assert feed("seed_example.csv").check() == "seed_example.csv: 150 rows, 9 columns"

    def test_check_raises_the_clear_error(self, tmp_path: Path) -> None:
        """check() on a missing file raises the same error as a pull."""
        with pytest.raises(CsvFeedError, match="file not found"):
            feed(tmp_path / "gone.csv").check()

    def test_contract(self) -> None:
        """The connector satisfies the shared connector contract."""
        check_connector(feed("seed_example.csv"))
        check_connector(feed("maven_sales_pipeline.csv", columns=MAVEN_COLUMNS))

    def test_catalog_is_rescanned_when_the_file_changes(self, tmp_path: Path) -> None:
        """The catalog is cached per file version, not forever."""
        path = write(tmp_path, "id,stage,owner\n1,A,kari\n")
        connector = feed(path)
        assert [o.external_id for o in connector.owners()] == ["kari"]
        write(tmp_path, "id,stage,owner\n1,A,kari\n2,A,ola\n")
        os.utime(path, ns=(1, 1))
        assert [o.external_id for o in connector.owners()] == ["kari", "ola"]


class TestStreaming:
    def test_rows_are_read_lazily(self, tmp_path: Path) -> None:
        """The first deal arrives before the file is read: a row appended after it is still seen."""
        path = tmp_path / "big.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            f.write("id,title,amount,stage,created_at\n")
            f.writelines(f"X-{n},Deal number {n} with a title,{n}00,Demo,2026-01-01\n" for n in range(30_000))
        stream = feed(path).deals(None)
        first = next(stream)
        assert isinstance(first, Deal)
        assert first.external_id == "X-0"
        with path.open("a", encoding="utf-8") as f:
            f.write("LATE-1,Appended while streaming,1,Demo,2026-01-02\n")
        deals, rejects, checkpoints = check_stream(stream, "csv")
        assert len(deals) == 30_000
        assert deals[-1].external_id == "LATE-1"
        assert rejects == []
        assert checkpoints[-1].cursor is not None
        assert checkpoints[-1].cursor.split(":")[0] == hashlib.sha256(path.read_bytes()).hexdigest()

    def test_nothing_is_opened_before_iteration(self, tmp_path: Path) -> None:
        """deals() is a generator: building it touches no file."""
        stream = feed(tmp_path / "missing.csv").deals(None)
        assert hasattr(stream, "__next__")


class TestMaven:
    def test_every_row_is_accounted_for(self) -> None:
        """All 8,800 opportunities load with a column mapping; deals + rejected == data rows."""
        connector = feed("maven_sales_pipeline.csv", columns=MAVEN_COLUMNS,
                         status={"won": ["Won"], "lost": ["Lost"]})
        deals, rejects, checkpoints = pull(connector)
        with (CSV_DIR / "maven_sales_pipeline.csv").open(encoding="utf-8", newline="") as f:
            data_rows = sum(1 for _ in csv.reader(f)) - 1
        assert data_rows == 8800
        assert len(deals) + len(rejects) == data_rows
        assert rejects == []
        assert Counter(d.status for d in deals) == {"won": 4238, "lost": 2473, "open": 2089}
        assert checkpoints[-1].complete is True

    def test_quirks_are_kept_as_data(self) -> None:
        """Prospecting rows have no creation date, open rows no amount, lost rows amount 0."""
        deals, _, _ = pull(feed("maven_sales_pipeline.csv", columns=MAVEN_COLUMNS))
        prospecting = [d for d in deals if d.stage == "Prospecting"]
        assert len(prospecting) == 500
        assert all(d.created_at is None for d in prospecting)
        assert all(d.amount is None for d in deals if d.status == "open")
        assert all(d.amount == 0 for d in deals if d.status == "lost")
        assert sum(1 for d in deals if d.title is None) == 1425
        assert all(d.whole_days for d in deals if d.status != "open")
        first = deals[0]
        assert (first.external_id, first.owner, first.title, first.amount) == (
            "1C1I7A6R", "Moses Frase", "Cancity", D("1054"),
        )
        assert first.raw is not None
        assert first.raw["product"] == "GTX Plus Basic"

    def test_catalog(self) -> None:
        """One default pipeline with the four stages; 30 sales agents as owners."""
        connector = feed("maven_sales_pipeline.csv", columns=MAVEN_COLUMNS)
        (pipeline,) = connector.pipelines()
        assert [s.name for s in pipeline.stages] == ["Engaging", "Prospecting", "Won", "Lost"]
        assert len(list(connector.owners())) == 30


class TestSeedExample:
    def test_encodes_the_seed_articles_example(self) -> None:
        """As of 2026-11-26 (UTC, 90 days): N=100, V=50 000, p=0.20, L=90, velocity 11 111.11."""
        deals, rejects, _ = pull(feed("seed_example.csv"))
        assert rejects == []
        assert len(deals) == 150
        n, value, rate, cycle = levers(deals, AS_OF, UTC)
        assert (n, value, rate, cycle) == (100, D(50000), D("0.2"), D(90))
        assert value is not None
        assert rate is not None
        assert cycle is not None
        velocity = (n * value * rate / cycle).quantize(D("0.01"))
        assert velocity == D("11111.11")
        assert all(d.whole_days for d in deals)


class TestDemo:
    def test_generator_reproduces_the_bundled_file(self, tmp_path: Path) -> None:
        """The seeded generator reproduces the bundled file byte for byte."""
        out = tmp_path / "demo.csv"
        assert demo.main([str(out)]) == 0
        assert out.read_bytes() == demo.DEFAULT_OUTPUT.read_bytes()

    def test_demo_loads_as_configured_and_every_scope_has_a_velocity(self) -> None:
        """With the example config, all 400 deals load and all/each pipeline/each owner have a velocity."""
        connector = demo_feed()
        deals, rejects, _ = pull(connector)
        assert rejects == []
        assert len(deals) == 400
        oslo = ZoneInfo("Europe/Oslo")
        scopes: dict[str, list[Deal]] = {"all": deals}
        for d in deals:
            scopes.setdefault(f"pipeline {d.pipeline}", []).append(d)
            scopes.setdefault(f"owner {d.owner}", []).append(d)
        assert len(scopes) == 1 + 2 + 5
        for scope, members in scopes.items():
            n, value, rate, cycle = levers(members, AS_OF, oslo)
            assert n > 0, scope
            assert value is not None, scope
            assert rate, scope
            assert cycle, scope
        won = [d for d in deals if d.status in ("won", "lost")]
        assert 0.2 < sum(d.status == "won" for d in won) / len(won) < 0.3
        assert {p.name for p in connector.pipelines()} == {"New Business", "Renewals"}
        assert all(o.email and o.email.endswith("@example.com") for o in connector.owners())

    def test_demo_has_hygiene_problems(self) -> None:
        """Open demo deals include each kind of stalled deal the reminders look for."""
        deals, _, _ = pull(feed(demo.DEFAULT_OUTPUT, timezone="Europe/Oslo"))
        start = dt.datetime(2026, 11, 26, tzinfo=ZoneInfo("Europe/Oslo"))
        open_deals = [d for d in deals if d.status == "open"]
        problems = {
            "no_next_step": [d for d in open_deals if d.next_step is None and d.next_activity_at is None],
            "overdue": [d for d in open_deals if d.next_activity_at and d.next_activity_at < start],
            "close_passed": [d for d in open_deals
                             if d.expected_close_date and d.expected_close_date < AS_OF],
            "stuck": [d for d in open_deals
                      if d.stage_entered_at and d.stage_entered_at < start - dt.timedelta(days=45)],
            "inactive": [d for d in open_deals
                         if d.last_activity_at and d.last_activity_at < start - dt.timedelta(days=14)],
            "no_amount": [d for d in open_deals if d.amount is None],
        }
        assert all(len(found) >= 2 for found in problems.values()), {k: len(v) for k, v in problems.items()}


@pytest.fixture
def seed_copy(tmp_path: Path) -> Path:
    """A copy of the seed example that a test may edit."""
    path = tmp_path / "seed.csv"
    shutil.copy(CSV_DIR / "seed_example.csv", path)
    return path


def sync(store: sa.Engine, path: Path, **kw: Any) -> SyncResult:
    """Sync a CSV feed on ``path`` into ``store`` with a pinned clock."""
    now = dt.datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    return sync_source(store, feed(path), now=lambda: now, **kw)


def statuses(store: sa.Engine) -> dict[str, str]:
    """The stored status of every deal."""
    with store.connect() as conn:
        rows = conn.execute(sa.select(deals_table.c.external_id, deals_table.c.status))
        return {row.external_id: row.status for row in rows}


class TestEngine:

    def test_sync_resync_delete_and_missing_file(self, store: sa.Engine, seed_copy: Path) -> None:
        """Sync loads 150 deals; unchanged re-syncs change nothing; a removed row becomes deleted."""
        first = sync(store, seed_copy)
        assert (first.status, first.inserted, first.rejected, first.deleted) == ("ok", 150, 0, 0)
        assert Counter(statuses(store).values()) == {"open": 100, "lost": 40, "won": 10}

        again = sync(store, seed_copy)
        assert (again.status, again.seen, again.inserted, again.updated, again.deleted) == ("ok", 0, 0, 0, 0)
        full = sync(store, seed_copy, full=True)
        assert (full.status, full.unchanged, full.inserted, full.updated, full.deleted) == (
            "ok", 150, 0, 0, 0,
        )

        lines = seed_copy.read_text(encoding="utf-8").splitlines(keepends=True)
        seed_copy.write_text("".join(line for line in lines if not line.startswith("S-150,")),
                             encoding="utf-8")
        removed = sync(store, seed_copy)
        assert (removed.status, removed.unchanged, removed.deleted) == ("ok", 149, 1)
        assert statuses(store)["S-150"] == "deleted"

        before = statuses(store)
        seed_copy.unlink()
        missing = sync(store, seed_copy)
        assert missing.status == "failed"
        assert missing.error == f"{seed_copy}: file not found"
        assert statuses(store) == before

    def test_wrong_mapping_deletes_nothing(self, store: sa.Engine, seed_copy: Path) -> None:
        """A mapping that makes every row unreadable rejects them all, fails the sync, deletes no deal."""
        sync(store, seed_copy)
        broken = sync_source(store, feed(seed_copy, columns={"amount": "title"}))
        assert (broken.status, broken.seen, broken.rejected, broken.deleted) == ("failed", 0, 150, 0)
        assert (broken.error or "").startswith(f"{seed_copy}: every row was rejected (0 loaded)")
        assert Counter(statuses(store).values()) == {"open": 100, "lost": 40, "won": 10}

    def test_missing_column_leaves_an_empty_store_empty(self, store: sa.Engine, tmp_path: Path) -> None:
        """A file without required columns fails the source and writes no deal."""
        path = write(tmp_path, "id,title\nX-1,No stage\n")
        result = sync(store, path)
        assert result.status == "failed"
        assert "missing column stage or status" in (result.error or "")
        assert statuses(store) == {}

    def test_rejected_rows_are_stored(self, sqlite_store: sa.Engine) -> None:
        """The engine stores each bad row with its line and reason."""
        result = sync(sqlite_store, CSV_DIR / "bad_rows.csv")
        assert (result.status, result.inserted, result.rejected) == ("failed", 3, 9)  # 9 bad of 12
        with sqlite_store.connect() as conn:
            rows = conn.execute(sa.select(sync_rejects_table.c.location, sync_rejects_table.c.reason))
            stored = [f"{row.location}: {row.reason}" for row in rows]
        assert "\n".join(stored) + "\n" == (GOLDEN / "csv_rejects.txt").read_text(encoding="utf-8")
