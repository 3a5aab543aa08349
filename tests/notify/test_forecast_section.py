"""The forecast as people read it: the digest's section in both locales and the command's table (goldens)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.forecast import compute_forecast
from sales_velocity.metrics.forecast_view import forecast_table
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.targets import TargetSettings, periods_for
from sales_velocity.notify.forecast_section import forecast_lines
from sales_velocity.notify.formatting import Formatter
from sales_velocity.notify.render import texts
from tests.metrics.test_forecast import AS_OF, DAY, SETTINGS, noon, steady
from tests.metrics.test_velocity_rows import deal, insert_deals
from tests.notify.test_render import golden


@pytest.fixture
def scored(sqlite_store: sa.Engine):
    """A steady pipeline with 200 stuck deals and a month and a quarter target."""
    old = noon(AS_OF - 4000 * DAY)
    insert_deals(sqlite_store, steady(365 * 4) + [deal(f"s{n}", created=old, amount=1000, pipeline="p")
                                                  for n in range(200)])
    targets = TargetSettings(all={"2026-11": Decimal(20000), "2026-Q4": Decimal(2000000)})
    return compute_forecast(sqlite_store, SETTINGS.model_copy(update={"currency": "NOK"}), AS_OF,
                            periods=periods_for(targets, MovementScope(), AS_OF))


@pytest.mark.parametrize("locale", ["en", "nb"])
def test_digest_section(scored, locale: str) -> None:
    """One line per horizon with range and error, the method, the persistence caveat and the targets."""
    lines = forecast_lines(scored, texts(locale), Formatter(locale, "NOK"))
    golden(f"forecast_section_{locale}.txt", "\n".join(lines) + "\n")


def test_command_table(scored) -> None:
    """`velocity forecast`'s table: horizons, every method's backtest accuracy, targets and notes."""
    golden("forecast_table.txt", forecast_table(scored))


def test_unscored_section(sqlite_store: sa.Engine) -> None:
    """Too little history: the lines say so with the counts, and show velocity x days without a range."""
    insert_deals(sqlite_store, [deal(f"w{n}", status="won", created=noon(AS_OF - 40 * DAY),
                                     closed=noon(AS_OF - n * DAY), amount=100) for n in range(5)])
    forecast = compute_forecast(sqlite_store, SETTINGS, AS_OF)
    lines = forecast_lines(forecast, texts("en"), Formatter("en", "NOK"))
    assert lines[-1] == ("Not scored yet: too little history (0 of 8 backtest points, 5 of 20 won deals); "
                         "shown is velocity x days.")
    assert lines[0] == "Expected in the next 30 days: NOK 0."  # no deal is open: N = 0
