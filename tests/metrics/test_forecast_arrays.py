"""The numpy marks (``metrics.forecast_arrays``) against the Python marks (``forecast_marks``): same sums."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.metrics import forecast_data
from sales_velocity.metrics.forecast_data import ForecastData, read_forecast_data
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.sync.store import stage_events_table
from tests.metrics.test_velocity_rows import deal, insert_deals

AS_OF = dt.date(2026, 11, 26)
DAYS = 200
HORIZONS = (7, 30, 90)
SETTINGS = MetricsSettings(timezone="Europe/Berlin", currency="EUR",
                           rates={"USD": "0.9", "SEK": "0.0871", "HLF": "0.5", "BIG": "1.234567890123456789"})
ZONE_NOON = dt.datetime(AS_OF.year, AS_OF.month, AS_OF.day, 12, tzinfo=dt.UTC)


def moment(rng: random.Random, low: int = -20, high: int = 400) -> dt.datetime:
    """A random time between ``high`` days before the as-of date and ``-low`` days after it."""
    return ZONE_NOON - dt.timedelta(days=rng.randint(low, high), seconds=rng.randint(0, 86399))


def random_store(rng: random.Random, deals: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deals of every kind (status, currency, no creation time, archived, stage_entered_at) and stage events.

    Events in several pipelines (some without one, also for deals without
    one: a day may then hold the same stage with and without a pipeline), on
    the same day, before the creation, after the as-of date.
    """
    rows, events = [], []
    for n in range(deals):
        status = rng.choice(("open", "open", "won", "won", "lost", "deleted"))
        created = None if rng.random() < 0.05 else moment(rng)
        ended = moment(rng, -30, 300)
        row = deal(f"d{n}", status=status, created=created,
                   closed=ended if status in ("won", "lost") and rng.random() < 0.95 else None,
                   deleted_at=ended if status == "deleted" else None,
                   amount=None if rng.random() < 0.03 else Decimal(rng.randint(-10**5, 10**7)) / 100,
                   currency=rng.choice((None, "EUR", "eur", "USD", "usd", "SEK", "XYZ", "hlf")),
                   pipeline=rng.choice(("p", "q", None)), source=rng.choice(("crm", "crm", "other")),
                   archived=rng.random() < 0.05)
        row["updated_at"] = ZONE_NOON
        if row["currency"] == "hlf" and row["amount"] is not None:  # odd units: x.5, rounded away from 0
            row["amount"] = Decimal(rng.randint(-500, 500) * 2 + 1) / 10000
        if rng.random() < 0.4:
            row.update(stage_id=rng.choice(("A", "B", None)), stage_entered_at=moment(rng))
        rows.append(row)
        base, seen = moment(rng), set()
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 6))):
            when = base + dt.timedelta(seconds=rng.randint(0, 60)) if rng.random() < 0.3 else moment(rng)
            stage = rng.choice(("A", "B", "C", "D", "E"))
            if (stage, when) not in seen:
                seen.add((stage, when))
                events.append({"source": row["source"], "external_id": row["external_id"],
                               "pipeline_id": rng.choice(("p", "q", "r", None)),
                               "stage_id": stage,
                               "entered_at": when, "observed": False})
    return rows, events


def both(store: sa.Engine, settings: MetricsSettings = SETTINGS) -> tuple[ForecastData, ForecastData]:
    """The forecast data with the numpy marks and with the Python marks."""
    kw: dict[str, Any] = {"history_days": DAYS, "horizons": HORIZONS, "scope": MovementScope()}
    return (read_forecast_data(store, settings, AS_OF, **kw),
            read_forecast_data(store, settings, AS_OF, python_marks=True, **kw))


def assert_identical(arrays: ForecastData, python: ForecastData) -> None:
    """Every field equal, every dict of cells in the same order, every sum the same Decimal."""
    assert arrays == python
    for name in ("open_value", "open_count"):
        assert list(getattr(arrays, name)) == list(getattr(python, name))
    for h in HORIZONS:
        assert list(arrays.won_within[h]) == list(python.won_within[h])
    assert repr(dataclasses.astuple(arrays)) == repr(dataclasses.astuple(python))


@pytest.mark.parametrize("chunk", [100_000, 37])
def test_numpy_marks_equal_python_marks_on_a_random_store(store: sa.Engine, chunk: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On 600 random deals the numpy marks give the Python marks' sums, one chunk or many."""
    monkeypatch.setattr(forecast_data, "CHUNK", chunk)
    monkeypatch.setattr(forecast_data, "BATCH", min(chunk, 5000) // 3)
    rows, events = random_store(random.Random(19), 600)
    insert_deals(store, rows)
    with store.begin() as conn:
        conn.execute(sa.insert(stage_events_table), events)
    arrays, python = both(store)
    assert python.open_value
    assert python.left_out
    assert python.won_deals
    assert_identical(arrays, python)


def test_numpy_marks_exact_beyond_int64(store: sa.Engine) -> None:
    """Amounts whose sum passes 2**63 units are summed in Python integers, still equal to the Python marks."""
    big = Decimal(9 * 10**13)  # 9 * 10**17 units each: fits a store integer, 20 of them do not fit int64
    rows = [deal(f"b{n}", status="won" if n % 2 else "open", created=ZONE_NOON - dt.timedelta(days=60 + n),
                 closed=ZONE_NOON - dt.timedelta(days=n) if n % 2 else None, amount=big, pipeline="p",
                 currency=("EUR", "USD", "BIG", "HLF")[n % 4])  # BIG: past Decimal's 28 digits, rounded there
            for n in range(20)]
    for row in rows:
        row["updated_at"] = ZONE_NOON
    insert_deals(store, rows)
    arrays, python = both(store)
    assert_identical(arrays, python)
    assert max(v for line in python.open_value.values() for v in line) > Decimal(2**63) / 10000
