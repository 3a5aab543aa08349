"""Real CRM exports through the CSV feed with documented options only: HubSpot, Pipedrive, Norwegian Excel.

Each fixture is shaped like the export its CRM (or Excel) really writes:

* ``hubspot_deals_export.csv``: HubSpot's deal export (UTF-8 with BOM, every cell quoted, CRLF),
  the properties' labels as headers (``Record ID``, ``Deal Name``, ``Deal Stage``, ``Close Date``,
  ``Create Date``, ``Deal owner``, ...), stage labels (``Closed won``), amounts as ``$12,500.00``,
  times in the portal's zone (America/New_York). No status column: the stage says won/lost.
* ``pipedrive_deals_export.csv``: Pipedrive's deal list export, the fields' labels as headers
  (``Value``, ``Currency``, ``Status``, ``Deal created``, ``Won time``, ``Lost time``,
  ``Last stage change``, ...); a won deal has a ``Won time``, a lost one a ``Lost time``, never both.
* ``excel_nb_cp1252.csv``: a Norwegian Excel sheet saved as CSV: Windows-1252, ``;``, decimal comma,
  ``22.08.2026`` dates and ``01.07.2026 09:15`` times, a ``Status`` column with ``Åpen``/``Vunnet``/
  ``Tapt``, and amounts written every way people do (``23 000,00``, ``kr 12 500,00``, ``12 500 kr``,
  ``NOK 7 000``, ``12 500,-``).

The expected levers are computed here from the raw files with a few lines of plain Python per
export (the DESIGN.md definition, as of 2026-11-26, 90 days), not with the feed's parsers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedSettings
from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.testing.contract import check_stream
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import compute_velocity
from sales_velocity.scheduler import main
from sales_velocity.sync.store import make_engine

FIXTURES = Path(__file__).parents[1] / "fixtures"
CSV_DIR = FIXTURES / "csv"
GOLDEN = FIXTURES / "golden"
AS_OF = dt.date(2026, 11, 26)
NOW = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
D = Decimal


@dataclass(frozen=True)
class Row:
    """What the levers need of one deal, read from the raw file by the test itself."""

    status: str
    amount: Decimal | None
    created: dt.datetime
    closed: dt.datetime | None
    whole_days: bool = False


def expected_levers(rows: list[Row], zone: ZoneInfo,
                    window: int = 90) -> tuple[int, Decimal, Decimal, Decimal]:
    """N, V, p, L by DESIGN.md: the window is [start of day T-W+1, start of day T+1) in ``zone``."""
    end = dt.datetime.combine(AS_OF + dt.timedelta(days=1), dt.time(), tzinfo=zone).astimezone(dt.UTC)
    start = dt.datetime.combine(AS_OF - dt.timedelta(days=window - 1), dt.time(),
                                tzinfo=zone).astimezone(dt.UTC)
    n = sum(1 for r in rows if r.status == "open" and r.created < end)
    closed = [r for r in rows if r.closed is not None and start <= r.closed < end]
    won = [r for r in closed if r.status == "won"]
    lost = [r for r in closed if r.status == "lost"]
    amounts = [r.amount for r in won if r.amount is not None]
    cycle = []
    for r in won:
        assert r.closed is not None
        days = D((r.closed - r.created).total_seconds()) / 86400
        cycle.append(D(round(days)) if r.whole_days else days)
    return (n, sum(amounts, D(0)) / len(amounts), D(len(won)) / (len(won) + len(lost)),
            sum(cycle, D(0)) / len(cycle))


def hubspot_rows() -> list[Row]:
    """The HubSpot fixture read with csv and strptime: "$12,500.00", New York times, stage = outcome."""
    zone = ZoneInfo("America/New_York")

    def when(text: str) -> dt.datetime:
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=zone).astimezone(dt.UTC)

    rows = []
    with (CSV_DIR / "hubspot_deals_export.csv").open(encoding="utf-8-sig", newline="") as f:
        for r in csv.DictReader(f):
            status = {"Closed won": "won", "Closed lost": "lost"}.get(r["Deal Stage"], "open")
            amount = D(r["Amount"].replace("$", "").replace(",", "")) if r["Amount"] else None
            rows.append(Row(status, amount, when(r["Create Date"]),
                            when(r["Close Date"]) if status != "open" else None))
    return rows


def pipedrive_rows() -> list[Row]:
    """The Pipedrive fixture: the close time is the Won time of won deals and the Lost time of lost ones."""

    def when(text: str) -> dt.datetime:
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)

    rows = []
    with (CSV_DIR / "pipedrive_deals_export.csv").open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            status = r["Status"].lower()
            closed = {"won": r["Won time"], "lost": r["Lost time"]}.get(status)
            rows.append(Row(status, D(r["Value"]) if r["Value"] else None, when(r["Deal created"]),
                            when(closed) if closed else None))
    return rows


def excel_nb_rows() -> list[Row]:
    """The Norwegian sheet: cp1252, ';', Oslo; plain close dates, so cycles are whole days."""
    zone = ZoneInfo("Europe/Oslo")
    rows = []
    with (CSV_DIR / "excel_nb_cp1252.csv").open(encoding="cp1252", newline="") as f:
        for r in csv.DictReader(f, delimiter=";"):
            status = {"Åpen": "open", "Vunnet": "won", "Tapt": "lost"}[r["Status"]]
            digits = re.sub(r"kr|NOK|,-$|\s", "", r["Beløp"]).replace(",", ".")
            created = dt.datetime.strptime(r["Opprettet"], "%d.%m.%Y %H:%M").replace(tzinfo=zone)
            closed = (dt.datetime.strptime(r["Lukket"], "%d.%m.%Y").replace(tzinfo=zone)
                      if r["Lukket"] else None)
            rows.append(Row(status, D(digits) if digits else None, created.astimezone(dt.UTC),
                            closed.astimezone(dt.UTC) if closed else None, whole_days=True))
    return rows


HUBSPOT = '''timezone = "America/New_York"
currency = "USD"
[[sources]]
name = "hubspot-export"
kind = "csv"
path = "hubspot_deals_export.csv"
timezone = "America/New_York"
currency = "USD"
[sources.columns]
id = "Record ID"
title = "Deal Name"
stage = "Deal Stage"
amount = "Amount"
created_at = "Create Date"
closed_at = "Close Date"
expected_close_date = "Close Date"
owner = "Deal owner"
last_activity_at = "Last Activity Date"
next_activity_at = "Next Activity Date"
[sources.status]
won = ["Closed won"]
lost = ["Closed lost"]
'''

PIPEDRIVE = '''timezone = "UTC"
currency = "EUR"
[[sources]]
name = "pipedrive-export"
kind = "csv"
path = "pipedrive_deals_export.csv"
[sources.columns]
amount = "Value"
created_at = "Deal created"
closed_at = ["Won time", "Lost time"]
expected_close_date = "Expected close date"
stage_entered_at = "Last stage change"
next_activity_at = "Next activity date"
last_activity_at = "Last activity date"
'''

EXCEL_NB = '''timezone = "Europe/Oslo"
currency = "NOK"
[[sources]]
name = "excel"
kind = "csv"
path = "excel_nb_cp1252.csv"
encoding = "cp1252"
timezone = "Europe/Oslo"
currency = "NOK"
date_format = "%d.%m.%Y"
[sources.date_formats]
created_at = "%d.%m.%Y %H:%M"
[sources.columns]
id = "Avtalenr"
title = "Tittel"
amount = "Beløp"
stage = "Fase"
owner = "Selger"
created_at = "Opprettet"
closed_at = "Lukket"
expected_close_date = "Forventet lukking"
next_step = "Neste steg"
[sources.status]
open = ["Åpen"]
won = ["Vunnet"]
lost = ["Tapt"]
'''

EXPORTS: dict[str, tuple[str, str, Callable[[], list[Row]], str]] = {
    "hubspot": ("hubspot_deals_export.csv", HUBSPOT, hubspot_rows, "America/New_York"),
    "pipedrive": ("pipedrive_deals_export.csv", PIPEDRIVE, pipedrive_rows, "UTC"),
    "excel_nb": ("excel_nb_cp1252.csv", EXCEL_NB, excel_nb_rows, "Europe/Oslo"),
}


def velocity(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in-process with the pinned clock; (exit code, stdout)."""
    out = io.StringIO()
    code = main(args, env=env, out=out, now=lambda: NOW)
    return code, out.getvalue()


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/fixtures/golden/<name>; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def config_for(tmp_path: Path, export: str) -> Path:
    """The export's file copied next to its config (the config text is what the README documents)."""
    name, text, _, _ = EXPORTS[export]
    (tmp_path / name).write_bytes((CSV_DIR / name).read_bytes())
    path = tmp_path / "velocity.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestRealExports:
    @pytest.mark.parametrize("export", list(EXPORTS))
    def test_export_loads_with_zero_rejects_and_gives_the_levers(
        self, export: str, tmp_path: Path, db_url: str
    ) -> None:
        """Synced with documented options only, every row loads and the levers match the file's own."""
        config = str(config_for(tmp_path, export))
        env = {"VELOCITY_DATABASE_URL": db_url}
        code, out = velocity(["--config", config, "sync"], env)
        rows = EXPORTS[export][2]()
        assert code == 0, out
        assert re.search(rf": ok: {len(rows)} seen, {len(rows)} new, .* 0 rejected in", out), out
        engine = make_engine(db_url)
        try:
            zone = EXPORTS[export][3]
            currency = {"hubspot": "USD", "pipedrive": "EUR", "excel_nb": "NOK"}[export]
            report = compute_velocity(engine, MetricsSettings(timezone=zone, currency=currency), AS_OF)
        finally:
            engine.dispose()
        everything = report.all
        assert everything is not None
        n, value, rate, cycle = expected_levers(rows, ZoneInfo(zone))
        got = everything.levers
        assert got.opportunities == n
        assert got.win_rate == rate
        assert got.avg_deal_value is not None
        assert got.cycle_days is not None
        assert abs(got.avg_deal_value - value) < D("0.000001")
        assert abs(got.cycle_days - cycle) < D("0.000001")
        assert everything.velocity.value == (n * value * rate / cycle).quantize(D("0.01"))
        code, table = velocity(["--config", config, "report", "--as-of", AS_OF.isoformat()], env)
        assert code == 0
        assert_golden(f"csv_export_{export}.txt", table)

    def test_the_expected_levers_are_not_trivial(self) -> None:
        """Each fixture has open, won and lost deals in the window and some outside it (a real test)."""
        for export, (_, _, rows, zone) in EXPORTS.items():
            n, _, rate, _ = expected_levers(rows(), ZoneInfo(zone))
            assert n >= 4, export
            assert 0 < rate < 1, export
            assert any(r.closed is not None and r.closed.date() < dt.date(2026, 8, 1) for r in rows())

    def test_pipedrive_won_time_alone_is_the_trap_the_list_avoids(self) -> None:
        """Mapping closed_at to "Won time" alone drops the lost deals: p = 100 % instead of 50 %."""
        def win_rate(closed_at: str | list[str]) -> Decimal:
            model = validate_settings(CsvFeedSettings, {
                "name": "p", "kind": "csv", "path": str(CSV_DIR / "pipedrive_deals_export.csv"),
                "columns": {"amount": "Value", "created_at": "Deal created", "closed_at": closed_at},
            }, "sources[0]")
            deals, rejects, _ = check_stream(CsvFeedConnector(model).deals(None), "p")
            assert rejects == []
            start = dt.datetime(2026, 8, 29, tzinfo=dt.UTC)
            closed = [d for d in deals if d.closed_at is not None and d.closed_at >= start]
            return D(sum(d.status == "won" for d in closed)) / len(closed)

        assert win_rate("Won time") == 1
        assert win_rate(["Won time", "Lost time"]) == D("0.5")

    def test_norwegian_sheet_amounts_titles_and_currency(self) -> None:
        """cp1252 text, every amount form, a detected ';' and NOK from the amount's own code."""
        _, text, _, _ = EXPORTS["excel_nb"]
        import tomllib

        table = tomllib.loads(text)["sources"][0]
        table["path"] = str(CSV_DIR / "excel_nb_cp1252.csv")
        del table["currency"]
        model = validate_settings(CsvFeedSettings, table, "sources[0]")
        assert model.delimiter is None
        deals, rejects, _ = check_stream(CsvFeedConnector(model).deals(None), "excel")
        assert rejects == []
        got = {d.external_id: d for d in deals}
        assert [got[k].amount for k in ("A-01", "A-02", "A-03", "A-04", "A-05")] == [
            D("23000.00"), D("12500.00"), D("12500"), D("7000"), D("12500")]
        assert got["A-04"].currency == "NOK"  # "NOK 7 000": the code is the currency
        assert got["A-01"].currency is None  # no code, no currency column, no currency option
        assert (got["A-01"].title, got["A-02"].owner) == ("Årsavtale drift", "Ola Hansen")
        assert got["A-01"].created_at == dt.datetime(2026, 7, 1, 7, 15, tzinfo=dt.UTC)
        assert got["A-01"].closed_at == dt.datetime(2026, 8, 21, 22, 0, tzinfo=dt.UTC)
        assert got["A-09"].expected_close_date == dt.date(2026, 12, 20)
        assert {d.status for d in deals} == {"open", "won", "lost"}


class TestUndecodable:
    ASCII_HEADER = b"id,stage,owner,title\r\nX-1,Demo,Bj\xf8rn Ek,Caf\xe9 avtale\r\nX-2,Demo,Kari,Plain\r\n"

    def test_cp1252_with_an_ascii_header_is_a_located_reject(self, tmp_path: Path, db_url: str) -> None:
        """Without encoding, the cp1252 row is rejected with its line, columns and advice; no crash."""
        path = tmp_path / "deals.csv"
        path.write_bytes(self.ASCII_HEADER)
        config = tmp_path / "velocity.toml"
        config.write_text(f'[[sources]]\nname = "f"\nkind = "csv"\npath = "{path.name}"\n', encoding="utf-8")
        code, out = velocity(["--config", str(config), "sync"], {"VELOCITY_DATABASE_URL": db_url})
        assert code == 0, out  # one bad row of two is not a failed sync
        assert "f: ok: 1 seen, 1 new, 0 changed, 0 unchanged, 0 deleted, 1 rejected" in out
        assert ('  line 2: owner, title are not valid UTF-8; save the file as UTF-8, or set its '
                'encoding (Excel on Windows: encoding = "cp1252")') in out

    def test_the_encoding_option_reads_it(self, tmp_path: Path, db_url: str) -> None:
        """With encoding = "cp1252" both rows load, with their letters."""
        path = tmp_path / "deals.csv"
        path.write_bytes(self.ASCII_HEADER)
        config = tmp_path / "velocity.toml"
        config.write_text(f'[[sources]]\nname = "f"\nkind = "csv"\npath = "{path.name}"\n'
                          'encoding = "cp1252"\n', encoding="utf-8")
        env = {"VELOCITY_DATABASE_URL": db_url}
        code, out = velocity(["--config", str(config), "sync"], env)
        assert code == 0, out
        assert "f: ok: 2 seen, 2 new" in out
        code, exported = velocity(["--config", str(config), "export", "--format", "csv"], env)
        rows = {r["id"]: r for r in csv.DictReader(io.StringIO(exported))}
        assert (rows["X-1"]["owner"], rows["X-1"]["title"]) == ("Bjørn Ek", "Café avtale")

    def test_unknown_encoding_is_a_config_error(self, tmp_path: Path) -> None:
        """A codec Python does not know is reported with its key path; nothing runs (exit 2)."""
        config = tmp_path / "velocity.toml"
        config.write_text('[[sources]]\nname = "f"\nkind = "csv"\npath = "x.csv"\nencoding = "klingon"\n',
                          encoding="utf-8")
        code, _ = velocity(["--config", str(config), "check"], {})
        assert code == 2


class TestMostlyRejected:
    def test_a_mostly_rejected_file_fails_the_sync_and_deletes_nothing(self, tmp_path: Path) -> None:
        """More bad rows than good: exit 1, the first reasons shown, no deal deleted, and again next run."""
        path = tmp_path / "deals.csv"
        path.write_text("id,stage,created_at\nX-1,Demo,2026-01-01\nX-2,Demo,2026-01-02\nX-3,Demo,2026-01-03\n",
                        encoding="utf-8")
        config = tmp_path / "velocity.toml"
        config.write_text('[store]\nurl = "sqlite:///velocity.db"\n'
                          '[[sources]]\nname = "f"\nkind = "csv"\npath = "deals.csv"\n', encoding="utf-8")
        assert velocity(["--config", str(config), "sync"], {})[0] == 0
        path.write_text("id,stage,created_at\nX-1,Demo,01/01/26\nX-2,Demo,02/01/26\nX-3,Demo,2026-01-03\n",
                        encoding="utf-8")
        for _ in range(2):  # the cursor did not move: the next run reads the file again, and fails again
            code, out = velocity(["--config", str(config), "sync"], {})
            assert code == 1, out
            assert "f: failed: 1 seen, 0 new, 0 changed, 1 unchanged, 0 deleted, 2 rejected" in out
            assert (f"  error: {path}: 2 of 3 rows were rejected (1 loaded), so this sync failed and "
                    "marked nothing deleted; check the file's columns and the source's options. First: "
                    'line 2: created_at "01/01/26" is not a date') in out
            assert '  line 3: created_at "02/01/26" is not a date' in out
        engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
        with engine.connect() as conn:
            statuses = {r.external_id: r.status for r in conn.execute(
                sa.text("SELECT external_id, status FROM deals"))}
        engine.dispose()
        assert statuses == {"X-1": "open", "X-2": "open", "X-3": "open"}

    def test_every_row_rejected_in_a_subprocess(self, tmp_path: Path) -> None:
        """The console script itself exits 1 when every row is rejected."""
        import subprocess
        import sys

        (tmp_path / "deals.csv").write_text("id,stage,amount\nX-1,Demo,12x\nX-2,Demo,NaN\n", encoding="utf-8")
        config = tmp_path / "velocity.toml"
        config.write_text('[store]\nurl = "sqlite:///velocity.db"\n'
                          '[[sources]]\nname = "f"\nkind = "csv"\npath = "deals.csv"\n', encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), "--log-level",
             "error", "sync"], capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "VELOCITY_DATABASE_URL": ""},
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "every row was rejected (0 loaded)" in done.stdout
        assert 'line 2: amount "12x" is not a number' in done.stdout
