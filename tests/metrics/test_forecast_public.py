"""The forecast command on the public data set: the backtest's actuals and persistence by plain Python."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from tests.metrics.test_window import MAVEN_CONFIG
from tests.test_cli import FIXTURES, store_env, velocity

AS_OF = dt.date(2017, 12, 31)


def won_by_day(path: Path) -> dict[dt.date, Decimal]:
    """Plain Python over the CSV: the value won on each close date."""
    totals: dict[dt.date, Decimal] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["deal_stage"] == "Won":
                day = dt.date.fromisoformat(row["close_date"])
                totals[day] = totals.get(day, Decimal(0)) + Decimal(row["close_value"])
    return totals


def between(totals: dict[dt.date, Decimal], first: dt.date, last: dt.date) -> Decimal:
    """The value won on days ``first .. last``."""
    return sum((v for d, v in totals.items() if first <= d <= last), Decimal(0))


@pytest.fixture
def maven(tmp_path: Path, db_url: str) -> tuple[Path, dict[str, str]]:
    """The public data set synced into a store: (config path, environment)."""
    shutil.copy(FIXTURES / "maven_sales_pipeline.csv", tmp_path / "maven.csv")
    config = tmp_path / "velocity.toml"
    config.write_text(MAVEN_CONFIG + '[metrics.targets]\nall = { "2017-Q4" = "3000000" }\n', encoding="utf-8")
    env = store_env(db_url)
    assert velocity(["--config", str(config), "sync"], env=env)[0] == 0
    return config, env


def test_backtest_actuals_match_the_csv(maven: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Each backtest actual (won in T+1..T+h) and persistence (won in T-h+1..T) equals the CSV's sum."""
    config, env = maven
    code, out = velocity(["--config", str(config), "forecast", "--as-of", AS_OF.isoformat(), "--backtest",
                          "--format", "csv"], env=env)
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    totals = won_by_day(tmp_path / "maven.csv")
    assert rows
    assert {r["method"] for r in rows} == {"velocity_x_days", "deal_by_deal", "persistence"}
    for r in rows:
        as_of, days = dt.date.fromisoformat(r["as_of"]), int(r["days"])
        assert as_of + dt.timedelta(days=days) <= AS_OF  # only passed horizons
        day = dt.timedelta(days=1)
        assert Decimal(r["actual"]) == between(totals, as_of + day, as_of + days * day), r
        if r["method"] == "persistence":
            assert Decimal(r["forecast"]) == between(totals, as_of - (days - 1) * day, as_of), r


def test_json_contract(maven: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The JSON has the contract's keys, money as decimal strings, and the Q4 target from the CSV's wins."""
    config, env = maven
    code, out = velocity(["--config", str(config), "forecast", "--as-of", AS_OF.isoformat(),
                          "--format", "json", "--horizons", "30,60"], env=env)
    assert code == 0, out
    data = json.loads(out)
    assert {"as_of", "currency", "method", "horizons", "accuracy"} <= set(data)
    assert (data["as_of"], data["currency"]) == ("2017-12-31", "USD")
    assert [h["days"] for h in data["horizons"]] == [30, 60]
    for h in data["horizons"]:
        assert set(h) == {"days", "expected", "low", "high"}
        Decimal(h["expected"])  # a decimal string
    assert {"points", "wape", "bias", "coverage", "baselines"} <= set(data["accuracy"])
    assert set(data["accuracy"]["baselines"]) == {"persistence", "crm_weighted"}
    assert data["accuracy"]["baselines"]["crm_weighted"] is None  # a CSV has no stage probabilities
    assert data["method"] in ("velocity_x_days", "deal_by_deal")
    (target,) = data["targets"]
    won = between(won_by_day(tmp_path / "maven.csv"), dt.date(2017, 10, 1), AS_OF)
    assert Decimal(target["won"]) == won
    assert Decimal(target["needed"]) == max(Decimal(3000000) - won, Decimal(0))
    assert target["remaining_days"] == 0


def test_bad_horizons_say_which(maven: tuple[Path, dict[str, str]]) -> None:
    """--horizons 30,0 exits 2 naming the bad part."""
    config, env = maven
    code, _ = velocity(["--config", str(config), "forecast", "--horizons", "30,0"], env=env)
    assert code == 2
