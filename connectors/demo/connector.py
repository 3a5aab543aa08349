"""``kind = "demo"``: the bundled demo pipeline, read through the CSV feed with its dates moved to today.

The demo file's dates end on ``generate.AS_OF``; this source shifts them by
(today - that day), so the demo always looks current. The shift is what makes it
a demo: it lives here, not in the block people copy for their own files (a
``kind = "csv"`` source with ``rebase_dates_from`` on another file is warned about).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field

from sales_velocity.connectors.base import SourceSettings
from sales_velocity.connectors.csv_feed import CsvFeedConnector, CsvFeedSettings
from sales_velocity.connectors.demo.generate import AS_OF, CURRENCY, DEFAULT_OUTPUT
from sales_velocity.kernel.config import TimeZoneName

__all__ = ["DemoConnector", "DemoSettings"]


class DemoSettings(SourceSettings):
    """A ``[[sources]]`` table of kind ``demo`` (no path: the demo file is bundled)."""

    kind: Literal["demo"] = "demo"
    timezone: TimeZoneName = Field(
        "Europe/Oslo", description="The zone the demo's naive datetimes are read in."
    )


class DemoConnector(CsvFeedConnector):
    """The CSV feed on the bundled ``demo_deals.csv``, NOK, its dates ending today.

    Args:
        settings: the validated ``[[sources]]`` table.
        today: the current date (tests pin it).
    """

    settings_model: ClassVar[type[SourceSettings]] = DemoSettings
    kind = "demo"

    def __init__(self, settings: DemoSettings, *, today: Callable[[], dt.date] | None = None) -> None:
        feed = CsvFeedSettings(
            name=settings.name, enabled=settings.enabled, path=DEFAULT_OUTPUT, currency=CURRENCY,
            timezone=settings.timezone, rebase_dates_from=AS_OF,
        )
        super().__init__(feed, today=today)
        self.demo_settings = settings
