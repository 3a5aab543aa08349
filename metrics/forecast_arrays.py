"""The forecast's per-deal marks (``metrics.forecast_marks``) computed with numpy, a chunk of deals at a time.

The same sums as :class:`~sales_velocity.metrics.forecast_marks.Accumulator`,
bit for bit: every deal's stays (the stretches of grid days it spends in one
stage, as :func:`~sales_velocity.metrics.forecast_marks.visits` finds them)
are found for a whole chunk with array operations (``searchsorted`` over the
local midnights, a sort of the stage events by deal, day and stage id), split
into the three age buckets, and their ``+value``/``-value`` marks added into
per-(cell, point) difference arrays with ``np.add.at``. A chunk is summed in
int64 when the sum of its absolute values cannot overflow (else in Python
integers, ``dtype=object``); the totals over chunks are Python integers, so
every sum is exact. Cells keep the order in which the Python code first marks
them (deal, stay, bucket): the order of ``open_value`` and the other dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from sales_velocity.metrics.forecast_marks import _FIELD, _SEP, MIDDLE, YOUNG, Cell, Days
from sales_velocity.metrics.history import NEVER

__all__ = ["ArrayAccumulator", "day_indices", "table_of"]

Ints = npt.NDArray[np.int64]
Objects = npt.NDArray[np.object_]
_NONE: Any = None
"""``None`` as an operand of an element-wise comparison."""
_EXACT = 10 ** 27
"""Below this, an amount times a rate's coefficient is exact in Decimal's 28 digits."""
_SAFE = 1 << 60
"""A chunk's sum of absolute values below this (times the few marks per entry) fits in int64."""


def _objects(values: Sequence[Any]) -> Objects:
    """``values`` as a one-dimensional object array (tuples stay elements)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def table_of(rows: Sequence[Sequence[Any]]) -> Objects:
    """``rows`` (equally long) as a two-dimensional object array, a row per row."""
    table: Objects = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=object)
    table[:] = rows
    return table


def day_indices(to_day: Days) -> Callable[[Ints], Ints]:
    """:class:`Days` over an array of epoch seconds."""
    starts = np.array(to_day.starts, dtype=np.int64)
    first, end = to_day.first, to_day.end

    def days(seconds: Ints) -> Ints:
        day = np.searchsorted(starts, seconds, side="right") - 1
        day = np.where(seconds < first, -((first - seconds + 86399) // 86400), day)
        return np.where(seconds >= end, NEVER, day)

    return days


def _order(deal: Ints, day: Ints, stage: Ints, pipeline: Ints, names: int) -> Ints:
    """The order of the events by deal, day, stage rank, pipeline rank: one int64 key while it fits."""
    if not len(deal):
        return np.zeros(0, dtype=np.int64)
    low = int(day.min())
    span = int(day.max()) - low + 1
    if (int(deal.max()) + 1) * span * names * names >= 1 << 62:
        return np.lexsort((pipeline, stage, day, deal))
    return np.argsort(((deal * span + (day - low)) * names + stage) * names + pipeline, kind="stable")


class ArrayAccumulator:
    """The marks of every deal, added a chunk of rows at a time (:meth:`add_rows`); see the module doc."""

    def __init__(self, days: int, horizons: tuple[int, ...], to_day: Days, base: str,
                 rates: dict[str, Decimal]) -> None:
        self.days, self.horizons, self.base, self.rates = days, horizons, base, rates
        self.ratios: dict[str, tuple[int, int] | None] = {}
        """Currency code as stored -> :meth:`_ratio`."""
        self.offset = (days - 1) % 7
        self.points = (days - 1) // 7 + 1
        self.to_day = day_indices(to_day)
        self.longest = max(horizons)
        self.qceil = np.array([-((self.offset - a) // 7) for a in range(days + 1)], dtype=np.int64)
        self.won_by_day: Objects = np.zeros(days, dtype=object)
        self.created_by_day: Objects = np.zeros(days, dtype=object)
        self.won_lag: Objects = np.zeros((days, self.longest + 2), dtype=object)
        self.won_deals = 0
        self.first_created: int | None = None
        self.left_out = 0
        self.stage_ids: dict[tuple[str, str | None, str | None], int] = {}
        """(source, pipeline, stage) -> its number; cell ``3 * number + bucket``."""
        self.marks: Objects = np.zeros((0, 2 + len(horizons), self.points + 1), dtype=object)
        """Per cell: open value marks, open count marks, then won-within marks per horizon."""
        self.seen: dict[int, tuple[int, int]] = {}
        """Cell -> (chunk, first mark's order in it): the Python code's first-seen order."""
        self.chunks = 0
        self.names: list[Any] = []
        self.codes: dict[Any, int] = {}
        """Every source, pipeline and stage id (and ``None``) seen, numbered."""

    @staticmethod
    def _seconds(column: Objects) -> tuple[Ints, npt.NDArray[np.bool_]]:
        """Epoch seconds (0 for ``None``) and where they are ``None`` (exact: below 2**53)."""
        missing = np.equal(column, _NONE)
        values = np.where(missing, 0, column.astype(np.float64)).astype(np.int64)
        return values, missing

    def _codes(self, column: Sequence[Any]) -> Ints:
        """The number of each value of ``column`` (ids and ``None``) in :attr:`names`."""
        codes = self.codes
        for name in set(column) - codes.keys():
            codes[name] = len(self.names)
            self.names.append(name)
        return np.fromiter(map(codes.__getitem__, column), dtype=np.int64, count=len(column))

    def _ratio(self, code: str) -> tuple[int, int] | None:
        """Currency ``code``'s rate as integers ``(p, q)`` (``p/q`` exactly); ``None`` for the base currency.

        ``(0, 0)`` when there is no rate (the deal is left out).
        """
        upper = code.upper()
        if upper == self.base:
            return None
        rate = self.rates.get(upper)
        if rate is None:
            return (0, 0)
        _, digits, exponent = rate.as_tuple()
        coefficient = int("".join(map(str, digits)))
        exponent = int(exponent)  # a finite rate (``MetricsSettings``)
        if exponent >= 0:
            return (coefficient * 10 ** exponent, 1)
        return (coefficient, 10 ** -exponent)

    def _values(self, table: Objects) -> tuple[Objects, list[int]]:
        """The rows with a value in the base currency, and their values (:attr:`left_out` counts the others).

        As ``forecast_data`` does for the Python marks: an amount in another
        currency converted at its rate, rounded half up (away from zero) to a
        unit; in integers while the Decimal product is exact (under 28 digits),
        else in Decimal as there.
        """
        units, currency = table[:, 5], table[:, 6]
        ok = np.not_equal(units, _NONE)
        converted = units.copy()
        ratios = self.ratios
        other = np.flatnonzero(ok & np.not_equal(currency, _NONE) & (currency != self.base))
        for i, code, unit in zip(other.tolist(), currency[other].tolist(), units[other].tolist(),
                                 strict=True):
            if code in ratios:
                ratio = ratios[code]
            else:
                ratio = ratios[code] = self._ratio(code)
            if ratio is None:
                continue
            p, q = ratio
            if not q:
                ok[i] = False
            elif type(unit) is int and abs(unit) * p < _EXACT:
                whole = (2 * abs(unit) * p + q) // (2 * q)
                converted[i] = whole if unit >= 0 else -whole
            else:
                rate = self.rates[code.upper()]
                converted[i] = int((unit * rate).to_integral_value(ROUND_HALF_UP))
        self.left_out += len(table) - int(ok.sum())
        if ok.all():
            return table, converted.tolist()
        return table[ok], converted[ok].tolist()

    def add_rows(self, rows: Sequence[Sequence[Any]]) -> Objects:
        """The marks of ``rows`` (``forecast_data``'s deal query); returns the rows as an object array."""
        whole = table_of(rows)
        if not rows:
            return whole
        table, values = self._values(whole)
        n = len(values)
        if not n:
            return whole
        kind: Any = np.int64 if sum(map(abs, values)) < _SAFE else object
        value = np.array(values, dtype=kind) if kind is np.int64 else _objects(values)
        status = table[:, 3]
        created_raw, no_created = self._seconds(table[:, 7])
        created = np.where(no_created, -1, self.to_day(created_raw))
        ended_raw, no_end = self._seconds(table[:, 8])
        is_open = status == "open"
        ended = np.where(is_open, NEVER, self.to_day(ended_raw))
        no_end &= ~is_open
        won = (status == "won") & ~no_end & (ended >= 0) & (ended < NEVER)
        self.won_deals += int(won.sum())
        np.add.at(self.won_by_day, ended[won], value[won])
        known = created[created < NEVER]
        if known.size:
            low = int(known.min())
            if self.first_created is None or low < self.first_created:
                self.first_created = low
        made = ~no_created & (created >= 0) & (created < NEVER)
        np.add.at(self.created_by_day, created[made], value[made])
        lagged = made & won
        lag = np.clip(ended[lagged] - created[lagged], 0, self.longest + 1)
        np.add.at(self.won_lag, (created[lagged], lag), value[lagged])
        start = np.maximum(created, 0)
        end = np.minimum(ended, self.days)
        live = ~table[:, 4].astype(bool) & ~no_end & (start < end)
        first_entered = np.where(no_created, start, created)
        won_from = np.full((len(self.horizons), n), self.points + 1, dtype=np.int64)
        for k, h in enumerate(self.horizons):
            won_from[k, won] = -((self.offset - ended[won] + h) // 7)
        stays = self._stays(table, live, start, end, first_entered)
        self._mark_stays(self._codes(table[:, 0].tolist()), *stays, value, won_from, kind)
        self.chunks += 1
        return whole

    def _events(self, table: Objects, live: npt.NDArray[np.bool_],
                pipeline_id: Ints) -> tuple[Ints, Ints, Ints, Ints]:
        """Every known stage event of the live deals: deal, day, stage, pipeline (numbered in :attr:`names`).

        The joined events of a deal, or else its current stage from
        ``stage_entered_at`` on; events after the as-of date left out.
        """
        events = table[:, 10]
        has = events.astype(bool)
        joined = np.flatnonzero(has & live)
        texts = events[joined].tolist()
        counts = np.fromiter(map(str.count, texts, repeat(_SEP)), dtype=np.int64, count=len(texts)) + 1
        fields = _FIELD.join(texts).replace(_SEP, _FIELD).split(_FIELD) if texts else []
        text_deal = np.repeat(joined, counts)
        text_when = np.fromiter(map(int, fields[0::3]), dtype=np.int64, count=len(fields) // 3)
        text_stage = self._codes(fields[1::3])
        text_pipeline = self._codes(fields[2::3])
        blank = text_pipeline == self._codes([""])[0]
        text_pipeline[blank] = pipeline_id[text_deal[blank]]
        current = np.flatnonzero(~has & live & np.not_equal(table[:, 9], _NONE))
        deal = np.concatenate((text_deal, current))
        when = np.concatenate((text_when, self._seconds(table[current, 9])[0]))
        stage = np.concatenate((text_stage, self._codes(table[current, 2].tolist())))
        pipeline = np.concatenate((text_pipeline, pipeline_id[current]))
        day = self.to_day(when)
        keep = day < NEVER
        return deal[keep], day[keep], stage[keep], pipeline[keep]

    def _stays(self, table: Objects, live: npt.NDArray[np.bool_], start: Ints, end: Ints,
               first_entered: Ints) -> tuple[Ints, Ints, Ints, Ints, Ints, Ints, Ints]:
        """Each live deal's stays ``[lo, hi)``: deal, lo, hi, entered day, pipeline, stage, order in chunk.

        As :func:`~sales_velocity.metrics.forecast_marks.visits`: events sorted
        by (day, stage id, pipeline), the first unknown stage from ``start``,
        each event's stage from ``max(day, start)``, up to ``end``; empty ones dropped.
        """
        pipeline_id = self._codes(table[:, 1].tolist())
        deal, day, stage, pipeline = self._events(table, live, pipeline_id)
        names = self.names
        rank = np.empty(len(names), dtype=np.int64)
        by_name = sorted(range(len(names)), key=lambda c: "" if names[c] is None else names[c])
        rank[by_name] = np.arange(len(names))
        by = _order(deal, day, rank[stage], rank[pipeline], len(names))
        deal, day, stage, pipeline = deal[by], day[by], stage[by], pipeline[by]
        boundary = np.maximum(day, start[deal])
        inside = boundary < end[deal]
        deal, day, stage, pipeline, boundary = (
            deal[inside], day[inside], stage[inside], pipeline[inside], boundary[inside])
        owners = np.flatnonzero(live)
        per_deal = np.bincount(deal, minlength=len(live))[owners].astype(np.int64)
        block = np.cumsum(per_deal + 1) - (per_deal + 1)
        slot = np.searchsorted(owners, deal)
        step = np.arange(len(deal), dtype=np.int64) - (np.cumsum(per_deal) - per_deal)[slot] + 1
        size = len(owners) + len(deal)
        at = block[slot] + step
        s_deal, s_lo, s_entered, s_step, s_stage, s_pipeline, s_hi = (
            np.zeros(size, dtype=np.int64) for _ in range(7))
        s_deal[block], s_lo[block], s_entered[block] = owners, start[owners], first_entered[owners]
        s_pipeline[block], s_stage[block] = pipeline_id[owners], self._codes([None])[0]
        s_deal[at], s_lo[at], s_entered[at], s_step[at] = deal, boundary, day, step
        s_stage[at], s_pipeline[at] = stage, pipeline
        s_hi[:-1] = s_lo[1:]
        s_hi[block[1:] - 1] = end[owners[:-1]]
        if size:
            s_hi[-1] = end[owners[-1]]
        kept = s_hi > s_lo
        order = s_deal * (4 * (int(s_step.max(initial=0)) + 2)) + 4 * s_step
        return (s_deal[kept], s_lo[kept], s_hi[kept], s_entered[kept], s_pipeline[kept], s_stage[kept],
                order[kept])

    def _mark_stays(self, source: Ints, deal: Ints, lo: Ints, hi: Ints, entered: Ints, pipeline: Ints,
                    stage: Ints, order: Ints, value: Any, won_from: Ints, kind: Any) -> None:
        """The marks of each stay, split into its age buckets, added into :attr:`marks`."""
        ids, names, width = self.stage_ids, self.names, len(self.names)
        key, inverse = np.unique((source[deal] * width + pipeline) * width + stage, return_inverse=True)
        numbers = []
        for k in key.tolist():
            rest, s = divmod(k, width)
            src, pipe = divmod(rest, width)
            numbers.append(ids.setdefault((names[src], names[pipe], names[s]), len(ids)))
        number = np.array(numbers, dtype=np.int64)[inverse.reshape(-1)]
        cells = 3 * len(ids)
        kinds, width = 2 + len(self.horizons), self.points + 1
        local = np.zeros(cells * kinds * width, dtype=kind)
        young, middle = np.clip(entered + YOUNG, lo, hi), np.clip(entered + MIDDLE, lo, hi)
        firsts: list[tuple[Ints, Ints]] = []
        for bucket, a, b in ((0, lo, young), (1, young, middle), (2, middle, hi)):  # each within [lo, hi]
            q_lo, q_hi = self.qceil[a], self.qceil[b]
            some = (a < b) & (q_lo < q_hi)
            cell = 3 * number[some] + bucket
            q_lo, q_hi, who = q_lo[some], q_hi[some], deal[some]
            firsts.append((cell, order[some] + bucket))
            row = cell * kinds * width
            v = value[who]
            np.add.at(local, row + q_lo, v)
            np.add.at(local, row + q_hi, -v)
            np.add.at(local, row + width + q_lo, 1)
            np.add.at(local, row + width + q_hi, -1)
            for k in range(len(self.horizons)):
                from_q = np.maximum(won_from[k, who], q_lo)
                hit = from_q < q_hi
                at = row[hit] + (2 + k) * width
                np.add.at(local, at + from_q[hit], v[hit])
                np.add.at(local, at + q_hi[hit], -v[hit])
        if cells > len(self.marks):
            grown = np.zeros((cells, kinds, width), dtype=object)
            grown[:len(self.marks)] = self.marks
            self.marks = grown
        self.marks += local.reshape(cells, kinds, width).astype(object)
        cell = np.concatenate([c for c, _ in firsts])
        key = np.concatenate([o for _, o in firsts])
        by = np.lexsort((key, cell))
        cell, key = cell[by], key[by]
        lead = np.ones(len(cell), dtype=bool)
        lead[1:] = cell[1:] != cell[:-1]
        for c, o in zip(cell[lead].tolist(), key[lead].tolist(), strict=True):
            self.seen.setdefault(c, (self.chunks, o))

    def finish(self) -> dict[str, Any]:
        """The running sums in Decimal, as the keyword arguments of ``ForecastData`` past the grid's."""
        from sales_velocity.metrics.forecast_marks import Accumulator

        names = list(self.stage_ids)
        done = Accumulator.__new__(Accumulator)
        done.days, done.horizons = self.days, self.horizons
        done.offset, done.points = self.offset, self.points
        done.won_by_day, done.created_by_day = self.won_by_day.tolist(), self.created_by_day.tolist()
        done.won_lag = {(int(d), int(g)): int(self.won_lag[d, g]) for d, g in np.argwhere(self.won_lag)}
        done.won_deals, done.first_created, done.left_out = self.won_deals, self.first_created, self.left_out
        cells: dict[Cell, list[list[int]]] = {}
        for c in sorted(self.seen, key=self.seen.__getitem__):
            number, bucket = divmod(c, 3)
            cells[(*names[number], bucket)] = [list(map(int, row)) for row in self.marks[c].tolist()]
        done.cells = cells
        return done.finish()
