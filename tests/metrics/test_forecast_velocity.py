"""Velocity summed in the forecast's pass (``metrics.forecast_velocity``) against ``compute_velocity``."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.metrics import forecast_data
from sales_velocity.metrics.forecast import _velocities
from sales_velocity.metrics.forecast_data import read_forecast_data
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import compute_velocity
from tests.metrics.test_forecast_arrays import AS_OF, SETTINGS, ZONE_NOON, moment, random_store
from tests.metrics.test_velocity_rows import deal, insert_deals, insert_pipeline

DAYS = 200
WINDOW = 90
FIRST_ON_GRID = AS_OF - dt.timedelta(days=DAYS - WINDOW)
"""The first day whose 90-day window lies on a 200-day grid ending on the as-of date."""
DST_END = dt.date(2026, 10, 25)
"""Europe/Berlin leaves summer time: a 25-hour day inside the checked range."""


def velocity_store(store: sa.Engine, deals: int = 600, seed: int = 7) -> None:
    """The random store of the marks test, plus owners, whole-day deals and named pipelines."""
    rng = random.Random(seed)
    rows, _ = random_store(rng, deals)
    for row in rows:
        row["owner_id"] = rng.choice(("o1", "o2", None))
        row["whole_days"] = rng.random() < 0.2
        if row["status"] == "won" and rng.random() < 0.05:
            # closed before it was created (bad data: a cycle of 0 days)
            row["created_at"] = (row["closed_at"] or ZONE_NOON) + dt.timedelta(days=2)
    rows.append(deal("midnight", status="won", created=moment(rng, 100, 150), pipeline="p", amount=10,
                     closed=dt.datetime(2026, 10, 24, 22, tzinfo=dt.UTC)))  # local midnight of DST_END
    insert_deals(store, rows)
    insert_pipeline(store, "p", "Pipeline P")
    insert_pipeline(store, "q", "Pipeline Q")


def summed(store: sa.Engine, settings: MetricsSettings, days: list[dt.date],
           scope: MovementScope) -> dict[dt.date, Decimal | None]:
    """The velocities of the forecast's own pass."""
    data = read_forecast_data(store, settings, AS_OF, history_days=DAYS, horizons=(30,), scope=scope,
                              velocity_days=days)
    return data.velocities


def recomputed(store: sa.Engine, settings: MetricsSettings, day: dt.date,
               scope: MovementScope) -> Decimal | None:
    """The velocity of ``scope`` on ``day`` by the daily recompute's SQL aggregates (0 when absent)."""
    key = "" if scope.kind == "all" else f"{scope.source}/{scope.key}"
    report = compute_velocity(store, settings, day)
    found = next((s for s in report.scopes if s.scope == scope.kind and s.key == key), None)
    return found.velocity.value if found is not None else Decimal(0)


SCOPES = [MovementScope(), MovementScope("pipeline", "crm", "p"), MovementScope("owner", "other", "o1")]


@pytest.mark.parametrize("scope", SCOPES, ids=["all", "pipeline", "owner"])
@pytest.mark.parametrize("chunk", [100_000, 37])
def test_summed_velocity_equals_the_recompute(store: sa.Engine, scope: MovementScope, chunk: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Random deals; every 4th day, first and last on the grid, the DST day and the next: the recompute."""
    monkeypatch.setattr(forecast_data, "CHUNK", chunk)
    monkeypatch.setattr(forecast_data, "BATCH", min(chunk, 5000) // 3)
    velocity_store(store)
    days = sorted({FIRST_ON_GRID, AS_OF, DST_END, DST_END + dt.timedelta(days=1),
                   *(FIRST_ON_GRID + dt.timedelta(days=n) for n in range(0, DAYS - WINDOW, 4))})
    got = summed(store, SETTINGS, days, scope)
    assert list(got) == days
    expected = {day: recomputed(store, SETTINGS, day, scope) for day in days}
    assert got == expected
    assert sum(1 for v in expected.values() if v) > len(days) // 2


def test_summed_velocity_keeps_excluded_pipelines_out_of_all(store: sa.Engine) -> None:
    """``exclude_pipelines`` (by name) leaves the pipeline out of "all", as the recompute does."""
    velocity_store(store, seed=11)
    settings = SETTINGS.model_copy(update={"exclude_pipelines": ("Pipeline P",)})
    days = [AS_OF - dt.timedelta(days=7 * k) for k in range(10)]
    got = summed(store, settings, days, MovementScope())
    assert got == {day: recomputed(store, settings, day, MovementScope()) for day in days}
    assert got != summed(store, SETTINGS, days, MovementScope())


def test_summed_velocity_equals_the_history_rebuild_on_the_forecast_points(store: sa.Engine) -> None:
    """On the weekly points the forecast uses, the pass gives the rebuild's values (the old path)."""
    velocity_store(store, seed=3)
    days = [AS_OF - dt.timedelta(days=7 * k) for k in range(16)]
    rebuilt = _velocities(store, SETTINGS, days, MovementScope())
    assert summed(store, SETTINGS, days, MovementScope()) == rebuilt


def test_days_whose_window_leaves_the_grid_are_left_out(store: sa.Engine) -> None:
    """A day whose window starts before the grid, or one after it, gets no value (the caller rebuilds it)."""
    velocity_store(store, deals=50)
    early = FIRST_ON_GRID - dt.timedelta(days=1)
    got = summed(store, SETTINGS, [early, FIRST_ON_GRID, AS_OF + dt.timedelta(days=1)], MovementScope())
    assert list(got) == [FIRST_ON_GRID]


def test_hand_made_velocity(store: sa.Engine) -> None:
    """Two won (EUR 100 and USD 200 at 0.9), one lost, three open: (3 x 140 x 2/3) / 10 days = 28.00 a day."""
    noon = ZONE_NOON
    rows: list[dict[str, Any]] = [
        deal("w1", status="won", created=noon - dt.timedelta(days=20), closed=noon - dt.timedelta(days=10),
             amount=100, currency="EUR"),
        deal("w2", status="won", created=noon - dt.timedelta(days=30), closed=noon - dt.timedelta(days=20),
             amount=200, currency="USD"),
        deal("l1", status="lost", created=noon - dt.timedelta(days=40), closed=noon - dt.timedelta(days=5)),
        *(deal(f"o{n}", created=noon - dt.timedelta(days=50)) for n in range(3)),
        deal("old", status="won", created=noon - dt.timedelta(days=400), closed=noon - dt.timedelta(days=95),
             amount=10**6),  # outside the 90-day window
    ]
    insert_deals(store, rows)
    got = summed(store, SETTINGS, [AS_OF], MovementScope())
    assert got == {AS_OF: Decimal("28.00")}
