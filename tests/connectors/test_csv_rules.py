"""The CSV feed's cell rules (pure functions) and the options that drive them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedSettings, MissingColumnsError
from sales_velocity.connectors.csv_feed.mapping import (
    DateFormats,
    detect_delimiter,
    first_filled,
    parse_money,
    parse_status,
    parse_temporal,
    unquote_formula,
)
from sales_velocity.connectors.csv_feed.settings import StatusMapping
from sales_velocity.connectors.demo import DemoConnector, DemoSettings
from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.errors import ConfigError
from sales_velocity.kernel.testing.contract import check_stream

D = Decimal


def feed(path: Path, **settings: Any) -> CsvFeedConnector:
    """A CSV feed on ``path``, validated the way the config loader does it."""
    raw = {"name": "csv", "kind": "csv", "path": str(path), **settings}
    return CsvFeedConnector(validate_settings(CsvFeedSettings, raw, "sources[0]"))


def write(tmp_path: Path, text: str) -> Path:
    """Write a UTF-8 CSV file."""
    path = tmp_path / "deals.csv"
    path.write_text(text, encoding="utf-8", newline="")
    return path


class TestParseMoney:
    @pytest.mark.parametrize(
        ("text", "amount", "currency"),
        [
            ("$12,500.00", D("12500.00"), None),
            ("kr 12 500,00", D("12500.00"), None),
            ("12 500 kr", D("12500"), None),
            ("NOK 7 000", D("7000"), "NOK"),
            ("7 000 nok", D("7000"), "NOK"),
            ("12 500,-", D("12500"), None),
            ("1.234,-", D("1234"), None),
            ("kr 990,-", D("990"), None),
            ("€1.200,50", D("1200.50"), "EUR"),
            ("£ 99.99", D("99.99"), "GBP"),
            ("US$ 10", D("10"), "USD"),
            ("-$500", D("-500"), None),
            ("$-500", D("-500"), None),
            ("USD\u00a01,500.00", D("1500.00"), "USD"),
            ("50 000,50", D("50000.50"), None),
            ("", None, None),
        ],
    )
    def test_currency_markers_before_or_after(self, text: str, amount: Decimal | None,
                                              currency: str | None) -> None:
        """Symbols and ISO codes on either side, ,- for whole units; a code (or € £) names the currency."""
        assert parse_money(text) == (amount, currency)

    @pytest.mark.parametrize("text", ["ABC 100", "100 XYZ", "NOK 5 EUR", "kr", "$", "NOK"])
    def test_what_is_not_money(self, text: str) -> None:
        """A three-letter word that is no ISO code, two currencies, or a marker alone is not a number."""
        with pytest.raises(ValueError, match="is not a number"):
            parse_money(text)

    def test_the_ambiguity_rule_still_holds(self) -> None:
        """$1,234 is still ambiguous without decimal_separator (a marker says nothing about the mark)."""
        with pytest.raises(ValueError, match="ambiguous"):
            parse_money("$1,234")
        assert parse_money("$1,234", ".") == (D("1234"), None)


class TestCells:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("id,stage,amount", ","),
            ("Avtalenr;Tittel;Beløp", ";"),
            ("id\tstage\tamount", "\t"),
            ("id|stage|amount", "|"),
            ('"a;b",c,d', ","),  # a delimiter inside quotes does not count
            ("just-one-column", ","),
            ("a;b,c", ","),  # a tie: the first candidate
        ],
    )
    def test_detect_delimiter(self, header: str, expected: str) -> None:
        """The candidate found most often outside quotes wins; none found means a comma."""
        assert detect_delimiter(header) == expected

    def test_first_filled(self) -> None:
        """The first cell that is not blank, else the first index with an empty value."""
        fields = ["", "  ", "2026-10-05", "2026-10-06"]
        assert first_filled(fields, (0, 1, 2, 3)) == (2, "2026-10-05")
        assert first_filled(fields, (3, 2)) == (3, "2026-10-06")
        assert first_filled(fields, (0, 1)) == (0, "")
        assert first_filled(fields, (9,)) == (9, "")
        assert first_filled(fields, ()) == (-1, "")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("'=1+1", "=1+1"), ("'+47", "+47"), ("'-5", "-5"), ("'@x", "@x"), ("'\tx", "\tx"),
         ("'plain", "'plain"), ("'", "'"), ("=1+1", "=1+1")],
    )
    def test_unquote_formula(self, text: str, expected: str) -> None:
        """Only an apostrophe before a formula's first character is an export's guard."""
        assert unquote_formula(text) == expected

    def test_parse_temporal_tries_formats_in_order_then_iso(self) -> None:
        """A list of formats is tried in order; dates stay dates; ISO 8601 always works."""
        formats = DateFormats(("%d.%m.%Y %H:%M", "%d.%m.%Y"))
        assert parse_temporal("22.08.2026 14:30", formats) == dt.datetime(2026, 8, 22, 14, 30)  # noqa: DTZ001
        assert parse_temporal("22.08.2026", formats) == dt.date(2026, 8, 22)
        assert parse_temporal("2026-08-22", formats) == dt.date(2026, 8, 22)
        with pytest.raises(ValueError, match="Invalid isoformat"):
            parse_temporal("08/22/2026", formats)
        assert formats.describe().startswith("%d.%m.%Y %H:%M, %d.%m.%Y or ISO 8601")

    def test_status_lists_come_before_the_synonyms(self) -> None:
        """Listed values map first; the built-in words still work; unknown values say where to list them."""
        mapping = StatusMapping(open=["Åpen"], won=["Vunnet"], lost=["Tapt"])
        assert [parse_status(v, mapping) for v in ("åpen", "VUNNET", "Tapt", "won", "Deleted")] == [
            "open", "won", "lost", "won", "deleted"]
        with pytest.raises(ValueError, match=r"listed in \[sources.status\]"):
            parse_status("Pågår", mapping)


class TestOptions:
    def test_column_lists_must_all_exist(self, tmp_path: Path) -> None:
        """A listed header missing from the file is named (a typo never silently drops a column)."""
        path = write(tmp_path, "id,stage,Won time\nX-1,Won,2026-10-01\n")
        with pytest.raises(MissingColumnsError, match=r'closed_at \(mapped to "Lost tme"\)'):
            next(feed(path, columns={"closed_at": ["Won time", "Lost tme"]}).deals(None))

    def test_any_canonical_column_takes_a_list(self, tmp_path: Path) -> None:
        """Owner from the first filled of two columns; the message names the column that was read."""
        path = write(tmp_path, "id,stage,Owner,Creator,Made\nX-1,Open,,Kari,2026-10-01\n"
                                "X-2,Open,Ola,Kari,2026-13-01\n")
        deals, rejects, _ = check_stream(feed(path, columns={
            "owner": ["Owner", "Creator"], "created_at": ["Made"]}).deals(None), "csv")
        assert [d.owner for d in deals] == ["Kari"]
        assert rejects[0].reason.startswith('Made "2026-13-01" is not a date')

    def test_status_lists_apply_to_the_status_column(self, tmp_path: Path) -> None:
        """With a status column, [sources.status] maps its values (Åpen/Vunnet/Tapt)."""
        path = write(tmp_path, "id,stage,Status\nX-1,Tilbud,Åpen\nX-2,Avsluttet,Vunnet\nX-3,Avsluttet,Tapt\n")
        deals, rejects, _ = check_stream(feed(path, status={
            "open": ["Åpen"], "won": ["Vunnet"], "lost": ["Tapt"]}).deals(None), "csv")
        assert rejects == []
        assert [d.status for d in deals] == ["open", "won", "lost"]

    def test_per_column_date_formats(self, tmp_path: Path) -> None:
        """[sources.date_formats] gives a column its own formats; the others use date_format."""
        path = write(tmp_path, "id,stage,created_at,closed_at\nX-1,Won,22.08.2026 14:30,05.09.2026\n")
        connector = feed(path, date_format="%d.%m.%Y", timezone="Europe/Oslo",
                         date_formats={"created_at": "%d.%m.%Y %H:%M"})
        deals, rejects, _ = check_stream(connector.deals(None), "csv")
        assert rejects == []
        assert deals[0].created_at == dt.datetime(2026, 8, 22, 12, 30, tzinfo=dt.UTC)
        assert deals[0].closed_at == dt.datetime(2026, 9, 4, 22, 0, tzinfo=dt.UTC)
        assert deals[0].whole_days is True

    def test_amount_code_and_currency_column(self, tmp_path: Path) -> None:
        """A code in the amount fills an empty currency cell; one that contradicts it rejects the row."""
        path = write(tmp_path, "id,stage,amount,currency\nX-1,Open,EUR 100,\nX-2,Open,EUR 100,NOK\n"
                                "X-3,Open,100 kr,NOK\n")
        deals, rejects, _ = check_stream(feed(path, currency="SEK").deals(None), "csv")
        assert [(d.external_id, d.currency) for d in deals] == [("X-1", "EUR"), ("X-3", "NOK")]
        assert rejects[0].reason == "amount is in EUR but currency says NOK"

    @pytest.mark.parametrize(
        ("key", "value", "needle"),
        [
            ("encoding", "klingon", "unknown encoding"),
            ("date_format", ["%d.%m.%Y", "%Q"], "not a usable strptime format"),
            ("date_formats", {"title": "%d.%m.%Y"}, "not a date column: title"),
            ("columns", {"closed_at": []}, "empty header for closed_at"),
            ("status", {"open": ["Open"], "won": ["open"]}, "both open and won"),
        ],
    )
    def test_bad_options_are_config_errors(self, tmp_path: Path, key: str, value: object,
                                           needle: str) -> None:
        """Each bad option is reported with its key path before anything is read."""
        with pytest.raises(ConfigError) as info:
            feed(tmp_path / "x.csv", **{key: value})
        assert f"sources[0].{key}" in str(info.value)
        assert needle in str(info.value)

    def test_rebase_outside_the_demo_is_warned_about(self, tmp_path: Path) -> None:
        """rebase_dates_from on a real file logs a warning (and `check` says so); the demo source does not."""
        path = write(tmp_path, "id,stage\nX-1,Open\n")
        connector = feed(path, rebase_dates_from="2026-11-26")
        with capture_logs() as logs:
            check_stream(connector.deals(None), "csv")
        warning = next(e for e in logs if e["event"] == "csv_feed.rebase_outside_demo")
        assert warning["log_level"] == "warning"
        assert "meant for the bundled demo" in warning["advice"]
        assert "warning: rebase_dates_from" in connector.check()
        demo = DemoConnector(DemoSettings(name="demo"), today=lambda: dt.date(2026, 11, 26))
        with capture_logs() as logs:
            check_stream(demo.deals(None), "demo")
        assert not [e for e in logs if e["event"] == "csv_feed.rebase_outside_demo"]
        assert "warning" not in demo.check()
