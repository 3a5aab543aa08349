"""The per-deal marks of the forecast's deal scan, summed on the weekly grid (``metrics.forecast_data``).

Each deal adds a few ``+value``/``-value`` marks to difference arrays over the
grid's points (one per stretch of points in one cell: source, pipeline, stage
at ``T``, age-in-stage bucket at ``T``), and the sums are running totals of
those marks; new deals are summed by creation day and by (creation day, days
to the win). Values are integers of 1/:data:`SCALE` of the base currency, so
every sum is exact. One call of :meth:`Accumulator.add` per deal, written for
speed (the three age buckets of a stretch split by hand, the day lookups
inlined); ``velocity forecast`` now computes the same sums with numpy
(``metrics.forecast_arrays``), and this is the reference it is tested against
(``read_forecast_data(..., python_marks=True)``).
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sales_velocity.metrics.history import NEVER
from sales_velocity.metrics.window import day_start

__all__ = ["SCALE", "Accumulator", "Cell", "Days", "Visit", "visits"]

SCALE = 10000
"""Values are summed in 1/10,000 of the base currency."""
YOUNG, MIDDLE = 30, 90
"""Age-in-stage bucket bounds (days): under 30, 30 to 89, 90 and more."""

Cell = tuple[str, str | None, str | None, int]
"""(source, pipeline id, stage id or ``None`` for unknown, age bucket)."""
Visit = tuple[str | None, str | None, int, int, int]
"""(pipeline, stage, entered day, from day, to day): a stretch of days in one stage."""
_SEP, _FIELD = "\x1e", "\x1f"
"""Between a deal's stage events, and between the fields of one (see ``forecast_data``)."""


class Days:
    """Epoch seconds -> grid day, by the local midnights (exact to the second, DST included).

    Before the grid: the negative number of whole days before it; from the day
    after the as-of date on: :data:`NEVER`.
    """

    def __init__(self, first_day: dt.date, days: int, zone: ZoneInfo) -> None:
        self.starts = [int(day_start(first_day + dt.timedelta(days=n), zone).timestamp())
                       for n in range(days + 1)]
        self.first, self.end, self.days = self.starts[0], self.starts[-1], days

    def __call__(self, seconds: int) -> int:
        """The grid day of ``seconds``."""
        if seconds < self.first:
            return -((self.first - seconds + 86399) // 86400)
        if seconds >= self.end:
            return NEVER
        return bisect_right(self.starts, seconds) - 1


class Accumulator:
    """The marks of every deal (see the module docstring), as integers of 1/:data:`SCALE`."""

    def __init__(self, days: int, horizons: tuple[int, ...], to_day: Days) -> None:
        self.days, self.horizons, self.to_day = days, horizons, to_day
        self.offset = (days - 1) % 7
        self.points = (days - 1) // 7 + 1
        self.won_by_day = [0] * days
        self.created_by_day = [0] * days
        self.won_lag: dict[tuple[int, int], int] = {}
        self.cells: dict[Cell, list[list[int]]] = {}
        """Per cell: open value marks, open count marks, then won-within marks per horizon."""
        self.won_deals = 0
        self.first_created: int | None = None
        self.left_out = 0
        self.longest = max(horizons)
        self.qceil = [-((self.offset - a) // 7) for a in range(days + 1)]
        """Grid day ``a`` (0 .. ``days``) -> the first point on or after it (``points`` after the last)."""
        self.stretches: dict[tuple[str, str | None, str | None], list[list[list[int]] | None]] = {}
        """(source, pipeline, stage) -> the marks of its three age buckets (the same lists as ``cells``)."""

    def add(self, row: Sequence[Any], value: int) -> None:
        """One deal's marks (``row`` as selected by ``forecast_data``'s deal query)."""
        to_day, days = self.to_day, self.days
        source, pipeline_id, stage_id, status, archived, _, _, created_s, ended_s, entered_s, events = (
            row[:11])
        no_created = created_s is None
        created = -1 if no_created else to_day(created_s)
        if status == "open":
            ended: int | None = NEVER
        elif ended_s is None:
            ended = None  # closed or deleted at an unknown time: never open, never won
        else:
            ended = to_day(ended_s)
        won_day = ended if status == "won" and ended is not None and 0 <= ended < NEVER else None
        if won_day is not None:
            self.won_by_day[won_day] += value
            self.won_deals += 1
        if created < NEVER and (self.first_created is None or created < self.first_created):
            self.first_created = created
        if not no_created and 0 <= created < NEVER:
            self.created_by_day[created] += value
            if won_day is not None:
                key = (created, min(max(won_day - created, 0), self.longest + 1))
                self.won_lag[key] = self.won_lag.get(key, 0) + value
        if archived or ended is None:
            return
        start = created if created > 0 else 0
        end = ended if ended < days else days
        if start >= end:
            return
        won_from = None
        if won_day is not None:
            offset = self.offset
            won_from = [-((offset - won_day + h) // 7) for h in self.horizons]
        first_entered = start if no_created else created
        stays: Sequence[Visit]
        if not events or _SEP not in events:  # at most one known stage: :func:`visits` inlined
            stays = ((pipeline_id, None, first_entered, start, end),)
            now_pipeline: str | None = pipeline_id
            if events:  # one stage event: it alone, as ``visits`` reads it
                when, stage_id, now_pipeline = events.split(_FIELD)
                now_pipeline = now_pipeline or pipeline_id
                entered_day = to_day(int(when))
            else:  # none: the current stage from stage_entered_at on
                entered_day = NEVER if entered_s is None else to_day(entered_s)
            if entered_day < NEVER:
                boundary = entered_day if entered_day > start else start
                if boundary < end:
                    now_in = (now_pipeline, stage_id, entered_day, boundary, end)
                    stays = ((now_in,) if boundary == start
                             else ((pipeline_id, None, first_entered, start, boundary), now_in))
        else:
            stays = visits(events, entered_s, stage_id, pipeline_id, to_day, first_entered, start, end)
        stretches, mark = self.stretches, self._mark
        for pipeline, stage, entered, lo, hi in stays:  # each stretch: lo < hi
            stage_key = (source, pipeline, stage)
            buckets = stretches.get(stage_key)
            if buckets is None:
                buckets = stretches[stage_key] = [None, None, None]
            young = entered + YOUNG
            if hi <= young:  # young all along: the common case
                mark(buckets, stage_key, 0, lo, hi, value, won_from)
                continue
            middle = entered + MIDDLE
            if lo < young:
                mark(buckets, stage_key, 0, lo, young, value, won_from)
            if hi <= middle:
                mark(buckets, stage_key, 1, young if young > lo else lo, hi, value, won_from)
                continue
            if lo < middle:
                mark(buckets, stage_key, 1, young if young > lo else lo, middle, value, won_from)
            mark(buckets, stage_key, 2, middle if middle > lo else lo, hi, value, won_from)

    def _mark(self, buckets: list[list[list[int]] | None], stage_key: tuple[str, str | None, str | None],
              bucket: int, a: int, b: int, value: int, won_from: list[int] | None) -> None:
        """The marks of one deal open in one cell on grid days ``a .. b-1`` (the points among them)."""
        qc = self.qceil
        q_lo, q_hi = qc[a], qc[b]
        if q_lo >= q_hi:
            return
        marks = buckets[bucket]
        if marks is None:
            marks = buckets[bucket] = self._new_cell((*stage_key, bucket))
        opened, counted = marks[0], marks[1]
        opened[q_lo] += value
        opened[q_hi] -= value
        counted[q_lo] += 1
        counted[q_hi] -= 1
        if won_from is None:
            return
        n = 2
        for from_q in won_from:
            if from_q < q_lo:
                from_q = q_lo
            if from_q < q_hi:
                won = marks[n]
                won[from_q] += value
                won[q_hi] -= value
            n += 1

    def _new_cell(self, cell: Cell) -> list[list[int]]:
        """The (zero) marks of a cell seen for the first time, kept in first-seen order."""
        marks = self.cells[cell] = [[0] * (self.points + 1) for _ in range(2 + len(self.horizons))]
        return marks

    def finish(self) -> dict[str, Any]:
        """The running sums in Decimal, as the keyword arguments of ``ForecastData`` past the grid's."""
        points, offset = self.points, self.offset

        def money(values: list[int]) -> list[Decimal]:
            return [Decimal(v) / SCALE if v else Decimal(0) for v in values]

        def running(row: list[int]) -> list[int]:
            out, total = [], 0
            for mark in row[:-1]:
                total += mark
                out.append(total)
            return out

        def point(day: int) -> int:
            return max(-((offset - day) // 7), 0)

        new_created: dict[int, list[Decimal]] = {}
        new_won: dict[int, list[Decimal]] = {}
        for h in self.horizons:  # created in (T, T+h], and won by T+h
            created_marks = [0] * (points + 1)
            won_marks = [0] * (points + 1)
            for day, value in enumerate(self.created_by_day):
                if value:
                    lo, hi = point(day - h), min(point(day), points)
                    if lo < hi:
                        created_marks[lo] += value
                        created_marks[hi] -= value
            for (day, lag), value in self.won_lag.items():
                if lag <= h:
                    lo, hi = point(day + lag - h), min(point(day), points)
                    if lo < hi:
                        won_marks[lo] += value
                        won_marks[hi] -= value
            new_created[h] = money(running(created_marks))
            new_won[h] = money(running(won_marks))
        return {
            "won_by_day": money(self.won_by_day), "created_by_day": money(self.created_by_day),
            "won_deals": self.won_deals, "first_created": self.first_created, "left_out": self.left_out,
            "open_value": {c: money(running(marks[0])) for c, marks in self.cells.items()},
            "open_count": {c: running(marks[1]) for c, marks in self.cells.items()},
            "won_within": {h: {c: money(running(marks[n])) for c, marks in self.cells.items()}
                           for n, h in enumerate(self.horizons, 2)},
            "new_created": new_created, "new_won": new_won,
        }


def visits(joined: str | None, entered_s: int | None, stage_id: str | None, pipeline_id: str | None,
           to_day: Days, created: int, start: int, end: int) -> list[Visit]:
    """``(pipeline, stage, entered, from, to)``: each stretch of ``[start, end)`` spent in one stage.

    ``joined`` are the deal's stage events (epoch, stage, pipeline); without
    any, its current stage from ``entered_s`` (``stage_entered_at``) on. Before
    the first known stage the stage is unknown (``None``), entered at ``created``.
    """
    events: list[tuple[int, str | None, str | None]] = []
    if joined:
        for text in joined.split(_SEP):
            when, event_stage, event_pipeline = text.split(_FIELD)
            day = to_day(int(when))
            if day < NEVER:  # after the as-of date: not known yet
                events.append((day, event_stage, event_pipeline or pipeline_id))
        # by day, stage, pipeline; no pipeline sorts as "" (a deal without one may mix both on a day)
        events.sort(key=lambda event: (event[0], event[1] or "", event[2] or ""))
    elif entered_s is not None:
        entered = to_day(entered_s)
        if entered < NEVER:
            events = [(entered, stage_id, pipeline_id)]
    stage: str | None = None
    out: list[Visit] = []
    pipeline: str | None = pipeline_id
    cursor, entered = start, created
    for day, next_stage, next_pipeline in events:
        boundary = day if day > start else start
        if boundary >= end:
            break
        if boundary > cursor:
            out.append((pipeline, stage, entered, cursor, boundary))
        cursor, stage, pipeline, entered = boundary, next_stage, next_pipeline, day
    if end > cursor:
        out.append((pipeline, stage, entered, cursor, end))
    return out
