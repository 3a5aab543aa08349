"""Velocity at the forecast's weekly points, summed in the forecast's own pass over the deals.

Velocity x days (``metrics.forecast_methods``) needs the velocity of the
forecast's scope at each of its 53 as-of points. The history rebuild
(``metrics.history``) gives it, but in a second pass over the deals, and the
two passes do not overlap on SQLite (each hands its rows to Python under the
GIL): at 1,000,000 deals the rebuild was 9.6 of the forecast's 22.5 s.

:class:`VelocitySums` takes the same rows as the forecast's marks, a chunk
at a time, and keeps what the rebuild keeps, on the forecast's day grid, per
group (source, pipeline, owner, currency; the owner only for an owner
scope): by the day a deal stops being open, the sums of the deals closed that
day (won, lost, won without an amount, won with one and their amounts in
1/10,000 units, won with a creation time, their cycle seconds), and how
many deals start and stop being open each day. A day's report is then the
rebuild's: the sums over its window ``[t-W+1, t]``, the open count at ``t``,
through :func:`~sales_velocity.metrics.velocity.report_from_groups`, so the
figures equal :func:`~sales_velocity.metrics.velocity.compute_velocity`'s (a
test compares them with the rebuild on random stores, both backends).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from sales_velocity.metrics.history import NEVER, GroupKey, GroupSums
from sales_velocity.metrics.movement import MovementScope
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import Labels, report_from_groups

__all__ = ["CYCLE", "OWNER", "VelocitySums"]

Ints = npt.NDArray[np.int64]
Objects = npt.NDArray[np.object_]
CYCLE = 11
"""The column of a won deal's cycle seconds in the forecast's deal query."""
OWNER = 12
"""The column of the owner (selected for an owner scope only, else ``NULL``)."""
_NONE: Any = None
_COUNTS = ("won", "lost", "no_amount", "amount_deals", "cycle_deals", "cycle_seconds")
_SAFE = 1 << 62


def _seconds(column: Objects) -> tuple[Ints, npt.NDArray[np.bool_]]:
    """Epoch seconds (0 for ``None``) and where they are ``None``."""
    missing = np.equal(column, _NONE)
    return np.where(missing, 0, column.astype(np.float64)).astype(np.int64), missing


class VelocitySums:
    """The velocity sums of the forecast's deals on its day grid (see the module docstring)."""

    def __init__(self, first_day: dt.date, days: int, to_day: Callable[[Ints], Ints]) -> None:
        self.first_day, self.days, self.to_day = first_day, days, to_day
        self.keys: dict[GroupKey, int] = {}
        self.counts: Ints = np.zeros((0, len(_COUNTS), days), dtype=np.int64)
        self.amounts: Objects = np.zeros((0, days), dtype=object)
        self.delta: Ints = np.zeros((0, days + 1), dtype=np.int64)

    def _grow(self) -> None:
        extra = len(self.keys) - len(self.counts)
        if extra <= 0:
            return
        self.counts = np.concatenate((self.counts, np.zeros((extra, *self.counts.shape[1:]), dtype=np.int64)))
        self.amounts = np.concatenate((self.amounts, np.zeros((extra, self.days), dtype=object)))
        self.delta = np.concatenate((self.delta, np.zeros((extra, self.days + 1), dtype=np.int64)))

    def add_rows(self, table: Objects) -> None:
        """The sums of a chunk of rows of the forecast's deal query (one object array, a row per deal)."""
        if not len(table):
            return
        keys = list(zip(table[:, 0].tolist(), table[:, 1].tolist(), table[:, OWNER].tolist(),
                        table[:, 6].tolist(), strict=True))
        for key in set(keys) - self.keys.keys():
            self.keys[key] = len(self.keys)
        self._grow()
        group = np.fromiter(map(self.keys.__getitem__, keys), dtype=np.int64, count=len(keys))
        status = table[:, 3]
        created_s, no_created = _seconds(table[:, 7])
        ended_s, no_end = _seconds(table[:, 8])
        is_open = status == "open"
        no_end &= ~is_open
        # as the rebuild's SQL: -1 for before the grid (and an unknown creation), NEVER after it
        created = np.where(no_created, -1, np.maximum(self.to_day(created_s), -1))
        ended = np.where(is_open, NEVER, np.maximum(self.to_day(ended_s), -1))
        days = self.days
        live = ~table[:, 4].astype(bool) & ~no_end & (created < ended)
        start = np.maximum(created, 0)
        np.add.at(self.delta, (group[live], start[live]), 1)
        stops = live & (ended >= 0) & (ended < days)
        np.add.at(self.delta, (group[stops], ended[stops]), -1)
        closed = ~no_end & (ended >= 0) & (ended < days)
        won = closed & (status == "won")
        lost = closed & (status == "lost")
        units = table[:, 5]
        no_amount = np.equal(units, _NONE)
        with_amount = won & ~no_amount
        cycle_deal = won & ~no_created
        cycle = np.zeros(len(table), dtype=np.int64)
        cycle[cycle_deal] = table[cycle_deal, CYCLE].astype(np.int64)
        cycle[cycle <= 0] = 0
        for k, (mask, weight) in enumerate(((won, None), (lost, None), (won & no_amount, None),
                                            (with_amount, None), (cycle_deal, None), (cycle_deal, cycle))):
            np.add.at(self.counts[:, k, :], (group[mask], ended[mask]),
                      1 if weight is None else weight[mask])
        self._add_amounts(group[with_amount], ended[with_amount], units[with_amount].tolist())

    def _add_amounts(self, group: Ints, day: Ints, units: list[Any]) -> None:
        """Won amounts (1/10,000 units) by group and close day, exactly (int64 while it cannot overflow)."""
        if not units:
            return
        if sum(map(abs, units)) < _SAFE:
            local = np.zeros(self.amounts.shape, dtype=np.int64)
            np.add.at(local, (group, day), np.array(units, dtype=np.int64))
            where = np.nonzero(local)
            self.amounts[where] += local[where].astype(object)
        else:
            values = np.empty(len(units), dtype=object)
            values[:] = units
            np.add.at(self.amounts, (group, day), values)

    def velocities(self, dates: Sequence[dt.date], window: int, labels: Labels, settings: MetricsSettings,
                   scope: MovementScope) -> dict[dt.date, Decimal | None]:
        """The velocity of ``scope`` on each of ``dates`` whose window lies on the grid (others left out)."""
        counts = np.concatenate((np.zeros((*self.counts.shape[:2], 1), dtype=np.int64),
                                 self.counts.cumsum(axis=2)), axis=2)
        amounts = np.concatenate((np.zeros((len(self.amounts), 1), dtype=object),
                                  self.amounts.cumsum(axis=1)), axis=1)
        opened = self.delta.cumsum(axis=1)
        names = list(self.keys)
        wanted = "" if scope.kind == "all" else f"{scope.source}/{scope.key}"
        out: dict[dt.date, Decimal | None] = {}
        for date in dates:
            t = (date - self.first_day).days
            if t - window + 1 < 0 or t >= self.days:
                continue
            sums = counts[:, :, t + 1] - counts[:, :, t - window + 1]
            value = amounts[:, t + 1] - amounts[:, t - window + 1]
            groups = [
                GroupSums(*names[g], opportunities=int(opened[g, t]), won=int(s[0]), lost=int(s[1]),
                          no_amount=int(s[2]), amount_deals=int(s[3]),
                          amount_sum=Decimal(int(value[g])).scaleb(-4), cycle_deals=int(s[4]),
                          cycle_seconds=Decimal(int(s[5])))
                for g, s in enumerate(sums.tolist())
                if opened[g, t] or s[0] or s[1]
            ]
            report = report_from_groups(groups, labels, settings, date, window)
            found = next((s for s in report.scopes if s.scope == scope.kind and s.key == wanted), None)
            out[date] = found.velocity.value if found is not None else Decimal(0)
        return out
