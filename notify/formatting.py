"""Localised texts and Babel formatting of money, numbers, percentages and dates.

Babel separates digit groups and units with no-break spaces; they become plain
spaces here, so ``11 111 kr`` is the same text in a terminal, in Slack and in a
test. Amounts are shown in whole units (a daily velocity needs no øre or cents).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from babel.dates import format_date, format_skeleton
from babel.numbers import format_currency, format_decimal, format_percent

__all__ = ["Formatter", "Texts"]

_SPACES = str.maketrans({"\xa0": " ", "\u202f": " "})
_MONEY_PATTERNS = {"en": "¤ #,##0;-¤ #,##0", "nb": "#,##0 ¤;-#,##0 ¤"}
_PERCENT_SIGN = {"en": "%", "nb": " %"}  # "25%" in English, "25 %" in Norwegian


class Texts:
    """A message catalog: ``texts("per_day", amount=...)``; ``plural`` picks ``_one``/``_other``."""

    def __init__(self, locale: str, catalog: Mapping[str, Any]) -> None:
        self.locale = locale
        self.catalog = catalog

    def __call__(self, key: str, **values: Any) -> str:
        """The text of ``key`` with ``{placeholders}`` filled in."""
        return str(self.catalog[key]).format(**values)

    def plural(self, key: str, n: int, **values: Any) -> str:
        """The singular or plural text of ``key`` for ``n`` (``{n}`` is available)."""
        return self(f"{key}_one" if n == 1 else f"{key}_other", n=n, **values)


class Formatter:
    """Numbers, money and dates as people in ``locale`` write them."""

    def __init__(self, locale: str, currency: str) -> None:
        self.locale = locale
        self.currency = currency
        self._pct = _PERCENT_SIGN.get(locale, "%")

    def _clean(self, text: str) -> str:
        return text.translate(_SPACES)

    def money(self, value: Decimal | None, currency: str | None = None) -> str:
        """``NOK 11,111`` (en) / ``11 111 kr`` (nb); ``–`` when unknown."""
        if value is None:
            return "–"
        whole = Decimal(value).quantize(Decimal(1), ROUND_HALF_UP)
        pattern = _MONEY_PATTERNS.get(self.locale, _MONEY_PATTERNS["en"])
        return self._clean(
            format_currency(
                whole, currency or self.currency, format=pattern, locale=self.locale, currency_digits=False
            )
        )

    def signed_money(self, value: Decimal | None) -> str:
        """Money with an explicit sign: ``+NOK 1,234`` / ``+1 234 kr``."""
        if value is None:
            return "–"
        text = self.money(value)
        return "+" + text if Decimal(value).quantize(Decimal(1), ROUND_HALF_UP) > 0 else text

    def number(self, value: Decimal | int | None, pattern: str = "#,##0") -> str:
        """A plain number (``1,234`` / ``1 234``)."""
        if value is None:
            return "–"
        return self._clean(format_decimal(value, format=pattern, locale=self.locale))

    def days(self, value: Decimal | None) -> str:
        """A day count with at most one decimal (``12.5`` / ``12,5``)."""
        return self.number(value, "#,##0.#")

    def share(self, value: Decimal | None) -> str:
        """A 0..1 share as whole percent (``25%`` / ``25 %``)."""
        if value is None:
            return "–"
        return self._clean(format_percent(value, format="#,##0" + self._pct, locale=self.locale))

    def rate(self, value: Decimal | None) -> str:
        """A 0..1 rate with one decimal (``20.0%`` / ``20,0 %``)."""
        if value is None:
            return "–"
        return self._clean(format_percent(value, format="#,##0.0" + self._pct, locale=self.locale))

    def signed_percent(self, value: Decimal | None) -> str:
        """A change already in percent, signed (``+5.2%`` / ``+5,2 %``)."""
        if value is None:
            return "–"
        text = self._clean(
            format_percent(Decimal(value) / 100, format="#,##0.0" + self._pct, locale=self.locale)
        )
        return "+" + text if value > 0 else text

    def date(self, day: dt.date) -> str:
        """A date in the medium style (``Nov 26, 2026`` / ``26. nov. 2026``)."""
        return self._clean(format_date(day, "medium", locale=self.locale))

    def moment(self, value: dt.datetime, zone: dt.tzinfo) -> str:
        """A local date and time (``Nov 26, 2026 10:00`` / ``26. nov. 2026 10:00``)."""
        local = value.astimezone(zone)
        return f"{self.date(local.date())} {local:%H:%M}"

    def short_date(self, day: dt.date) -> str:
        """Day and month (``Nov 26`` / ``26. nov.``)."""
        return self._clean(format_skeleton("MMMd", day, locale=self.locale))
