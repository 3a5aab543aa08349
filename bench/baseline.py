"""The baseline: velocity the way a user would compute it with pandas, and the comparison.

``pandas_velocity`` is the straightforward script: read the deals table from the
store with ``pd.read_sql``, then filter and group in pandas, following the
definition in ``shared/DESIGN.md`` ("Sales velocity: the one definition")
written out independently of ``metrics.velocity``. Money stays exact: the
store keeps amounts on SQLite as integers in 1/10,000 units (``sync.store.Money``)
and as ``NUMERIC`` on PostgreSQL; both are summed as int64 units, and the few
per-scope results are finished with ``Decimal``.

``compare`` checks our report against it scope by scope: the counts and the
levers must be equal, and the velocity equal to the cent.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa

from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import VelocityReport

__all__ = ["BaselineScope", "compare", "pandas_velocity"]

UNITS = 10_000  # Money's scale on SQLite
CENT = Decimal("0.01")
DEALS_SQL = (
    "SELECT source, pipeline_id, owner_id, status, archived, amount, currency, "
    "created_at, closed_at, updated_at, deleted_at, whole_days FROM deals"
)


@dataclass(frozen=True)
class BaselineScope:
    """One scope's levers and velocity as the pandas script computes them."""

    scope: str
    key: str
    opportunities: int
    won: int
    lost: int
    win_rate: Decimal | None
    avg_deal_value: Decimal | None
    cycle_days: Decimal | None
    velocity: Decimal | None


def _bounds(as_of: dt.date, window_days: int, settings: MetricsSettings) -> tuple[Any, Any]:
    """The window ``(start, end]``: local midnights, as UTC pandas timestamps."""
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    def midnight(day: dt.date) -> Any:
        return pd.Timestamp(dt.datetime.combine(day, dt.time(0), tzinfo=settings.zone)).tz_convert("UTC")

    end_day = as_of + dt.timedelta(days=1)
    return midnight(end_day - dt.timedelta(days=window_days)), midnight(end_day)


def _units(amount: Any) -> Any:
    """Amounts as exact int64 units of 1/10,000 (nullable)."""
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    if amount.dtype == object:  # PostgreSQL NUMERIC arrives as Decimal
        units = [None if v is None or v != v else int(Decimal(v).scaleb(4)) for v in amount]
        return pd.Series(pd.array(units, dtype="Int64"), index=amount.index)
    return pd.to_numeric(amount).astype("Int64")  # SQLite: already integer units


def pandas_velocity(engine: sa.Engine, settings: MetricsSettings, as_of: dt.date) -> list[BaselineScope]:
    """Velocity of every scope with pandas over the whole deals table (see the module docstring)."""
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    with engine.connect() as conn:
        df = pd.read_sql(sa.text(DEALS_SQL), conn, coerce_float=False)  # keep NUMERIC exact
    for column in ("created_at", "closed_at", "updated_at", "deleted_at"):
        df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    df["archived"] = df["archived"].astype(bool)
    df["whole_days"] = df["whole_days"].astype(bool)
    df["amount"] = _units(df["amount"])
    df["currency"] = df["currency"].astype(object)

    start, end = _bounds(as_of, settings.window_days, settings)
    close_at = df["closed_at"].fillna(df["updated_at"])
    in_window = (close_at >= start) & (close_at < end)
    status = df["status"]
    df["won"] = (status == "won") & in_window
    df["lost"] = (status == "lost") & in_window
    df["open"] = (
        ~df["archived"]
        & (df["created_at"].isna() | (df["created_at"] < end))
        & ((status == "open")
           | (status.isin(["won", "lost"]) & (close_at >= end))
           | ((status == "deleted") & (df["deleted_at"] >= end)))
    )
    seconds = (close_at - df["created_at"]).dt.total_seconds()
    rounded = np.where(df["whole_days"], np.floor(seconds / 86400 + 0.5) * 86400, np.floor(seconds + 0.5))
    df["cycle_deal"] = df["won"] & df["created_at"].notna()
    df["cycle_seconds"] = np.where(df["cycle_deal"] & (rounded > 0), rounded, 0).astype("int64")
    df["amount_deal"] = df["won"] & df["amount"].notna()
    df["won_amount"] = df["amount"].where(df["amount_deal"], 0).fillna(0).astype("int64")
    df["no_amount"] = df["won"] & df["amount"].isna()
    df = df[df["open"] | df["won"] | df["lost"]]

    sums = ["open", "won", "lost", "no_amount", "amount_deal", "won_amount", "cycle_deal", "cycle_seconds"]
    result = [_finish("all", "", _rows(df.groupby(["currency"], dropna=False)[sums].sum()), settings)]
    for scope, column in (("pipeline", "pipeline_id"), ("owner", "owner_id")):
        sub = df[df[column].notna()]
        grouped = sub.groupby(["source", column, "currency"], dropna=False)[sums].sum()
        by_key: dict[str, list[dict[str, Any]]] = {}
        for (source, ident, currency), row in grouped.iterrows():
            by_key.setdefault(f"{source}/{ident}", []).append({**row.to_dict(), "currency": currency})
        result.extend(_finish(scope, key, rows, settings) for key, rows in sorted(by_key.items()))
    return result


def _rows(grouped: Any) -> list[dict[str, Any]]:
    return [{**row.to_dict(), "currency": index[0] if isinstance(index, tuple) else index}
            for index, row in grouped.iterrows()]


def _finish(scope: str, key: str, groups: Iterable[dict[str, Any]],
            settings: MetricsSettings) -> BaselineScope:
    """Add up one scope's currency groups and finish the levers with Decimal."""
    n = won = lost = used = cycle_deals = 0
    total = Decimal(0)
    cycle_seconds = 0
    for g in groups:
        n, won, lost = n + int(g["open"]), won + int(g["won"]), lost + int(g["lost"])
        cycle_deals += int(g["cycle_deal"])
        cycle_seconds += int(g["cycle_seconds"])
        if not int(g["amount_deal"]):
            continue
        currency = g["currency"]
        code = (currency if isinstance(currency, str) and currency else settings.currency).upper()
        amount = Decimal(int(g["won_amount"])) / UNITS
        if code == settings.currency:
            total += amount
        elif code in settings.rates:
            total += amount * settings.rates[code]
        else:
            continue
        used += int(g["amount_deal"])
    p = Decimal(won) / (won + lost) if won + lost else None
    v = total / used if used else None
    cycle = Decimal(cycle_seconds) / (Decimal(86400) * cycle_deals) if cycle_deals else None
    velocity = None
    if won and p is not None and v is not None and cycle is not None and cycle > 0:
        with decimal.localcontext(prec=50):
            velocity = (Decimal(n) * v * p / cycle).quantize(CENT, rounding=ROUND_HALF_UP)
    return BaselineScope(scope, key, n, won, lost, p, v, cycle, velocity)


def compare(ours: VelocityReport, baseline: list[BaselineScope]) -> dict[str, Any]:
    """Scope-by-scope agreement: same scopes, counts, levers, and velocity to the cent."""
    theirs = {(b.scope, b.key): b for b in baseline}
    mine: dict[tuple[str, str], Any] = {(s.scope, s.key): s for s in ours.scopes}
    problems: list[str] = []
    if set(theirs) != set(mine):
        problems.append(f"scopes differ: only ours {sorted(set(mine) - set(theirs))[:5]}, "
                        f"only baseline {sorted(set(theirs) - set(mine))[:5]}")
    levers_equal = True
    for ident in sorted(set(theirs) & set(mine)):
        s, b = mine[ident], theirs[ident]
        if s.velocity.value != b.velocity:
            problems.append(f"{ident}: velocity ours {s.velocity.value} baseline {b.velocity}")
        counts = (s.levers.opportunities, s.levers.won, s.levers.lost)
        if counts != (b.opportunities, b.won, b.lost):
            problems.append(f"{ident}: N/won/lost ours {counts} baseline {(b.opportunities, b.won, b.lost)}")
        levers = (s.levers.win_rate, s.levers.avg_deal_value, s.levers.cycle_days)
        if levers != (b.win_rate, b.avg_deal_value, b.cycle_days):
            levers_equal = False
    overall = theirs.get(("all", ""))
    return {
        "agree_to_the_cent": not problems,
        "levers_identical": levers_equal and not problems,
        "scopes_compared": len(set(theirs) & set(mine)),
        "velocity_all": None if overall is None or overall.velocity is None else str(overall.velocity),
        "problems": problems[:10],
    }
