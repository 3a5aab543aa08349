"""Synthetic, deterministic CRM data: pipelines, owners and N deals from a seed.

Deals are generated page by page (``deal_pages``), each page from its own
``random.Random(seed, page)``, so any page can be rebuilt alone and nothing ever
holds all N deals. The data has the shape and the flaws of a real CRM export
over three years:

* three pipelines of five open stages plus won/lost, with Pipedrive-style
  rotting days on some stages; 40 owners (one with an e-mail only);
* log-normal cycle lengths (median 45 days) and deal values (median 15,000);
  roughly 28 % won, 62 % lost, 10 % of old deals still open (dead deals);
* hygiene problems: 4 % without an amount, open deals without a next step or
  with an overdue one, passed close dates, long-stuck and inactive deals;
* data problems: amounts in USD/GBP (converted with rates), in SEK (no rate:
  left out of ``V``), or without a currency (the base currency); 3 % of closed
  deals without a close date (``updated_at`` stands in), 0.5 % without a
  creation date, a few won deals "closed" before they were created, 10 % with
  date-only timestamps (``whole_days``), 2 % archived, 1 % deleted;
* CRM stage history (``stage_history``) on 30 % of the deals.

Rows are plain tuples in ``Deal``'s field order (``DEAL_FIELDS``), so pages can
be pickled to disk before a timed run and turned into ``Deal``s by the
benchmark connector (``bench.pages``), the way a connector maps a fetched page.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import accumulate
from typing import Any

from sales_velocity.connectors.base import Owner, Pipeline, Stage

__all__ = [
    "CHANGE_SETS",
    "DEAL_FIELDS",
    "NOW",
    "SOURCE",
    "Catalog",
    "DealRow",
    "build_catalog",
    "change_row",
    "deal_pages",
    "is_changed",
]

SOURCE = "bench"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
"""The benchmark's pinned clock: every generated event happens before it."""
HISTORY_DAYS = 1095
DAY = 86_400

DEAL_FIELDS = (
    "source", "external_id", "title", "amount", "currency", "pipeline", "stage", "status", "archived",
    "owner", "created_at", "closed_at", "expected_close_date", "stage_entered_at", "next_step",
    "next_activity_at", "last_activity_at", "updated_at", "link", "whole_days", "stage_history", "raw",
)
"""The order of a row's values: ``Deal``'s fields (history as ``(stage, entered_at)`` pairs)."""

DealRow = tuple[Any, ...]

CHANGE_SETS = {"full": 7, "incremental": 42}
"""Which 1 % of deals each re-sync changes: those whose number is this modulo 100."""

_PIPELINES = (("p-new", "New business", 0.60), ("p-exp", "Expansion", 0.25), ("p-prt", "Partners", 0.15))
_OPEN_STAGES = ("Qualified", "Discovery", "Proposal", "Negotiation", "Contract sent")
_ROTTING = (None, 21, None, 30, 14)
_CURRENCIES = (("EUR", 0.70), (None, 0.10), ("USD", 0.15), ("GBP", 0.04), ("SEK", 0.01))
_NEXT_STEPS = ("Call back", "Send quote", "Book demo", "Follow up on contract", "  ")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Catalog:
    """The source's pipelines and owners, and lookups the generator needs."""

    pipelines: tuple[Pipeline, ...]
    owners: tuple[Owner, ...]


def build_catalog() -> Catalog:
    """The three pipelines (five open stages, won, lost) and 40 owners."""
    pipelines = []
    for order, (pid, name, _) in enumerate(_PIPELINES):
        stages = [
            Stage(f"{pid}-s{i + 1}", pid, label, order=i, probability=Decimal(i + 1) / 10,
                  rotting_days=_ROTTING[i])
            for i, label in enumerate(_OPEN_STAGES)
        ]
        stages.append(Stage(f"{pid}-won", pid, "Won", order=5, probability=Decimal(1), is_won=True))
        stages.append(Stage(f"{pid}-lost", pid, "Lost", order=6, probability=Decimal(0), is_lost=True))
        pipelines.append(Pipeline(pid, name, order, tuple(stages)))
    owners = [
        Owner(f"o{i:02d}", None if i == 40 else f"Seller {i:02d}", f"seller{i:02d}@example.com")
        for i in range(1, 41)
    ]
    return Catalog(tuple(pipelines), tuple(owners))


def _cumulative(weights: tuple[float, ...]) -> list[float]:
    return list(accumulate(weights))


_PIPE_CUM = _cumulative(tuple(w for *_, w in _PIPELINES))
_CUR_CUM = _cumulative(tuple(w for _, w in _CURRENCIES))
_OWNER_CUM = _cumulative(tuple(1.0 / math.sqrt(i) for i in range(1, 41)))  # a few big sellers


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    return min(bisect(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def _at(seconds: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=seconds)


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _deal(rng: random.Random, number: int) -> DealRow:
    """One deal (see the module docstring for the distributions)."""
    now_s = int(NOW.timestamp())
    whole = rng.random() < 0.10
    created_s = now_s - DAY - rng.randrange(HISTORY_DAYS * DAY)
    if whole:
        created_s -= created_s % DAY
    close_s = created_s + int(rng.lognormvariate(math.log(45 * DAY), 0.7))
    pid = _PIPELINES[_pick(rng, _PIPE_CUM)][0]
    status = "open"
    if close_s < now_s:
        r = rng.random()
        status = "won" if r < 0.28 else "lost" if r < 0.90 else "open"
    if whole:
        close_s -= close_s % DAY
    if status == "won" and rng.random() < 0.003:
        close_s = created_s - rng.randrange(1, 5) * DAY  # bad data: closed before it was created
    level = rng.randrange(5)
    stage = f"{pid}-{status}" if status in ("won", "lost") else f"{pid}-s{level + 1}"
    created = _at(created_s)
    closed = _at(close_s) if status != "open" else None
    updated_s = close_s + rng.randrange(3600) if status != "open" else now_s - rng.randrange(60 * DAY)
    updated_s = max(updated_s, created_s)
    if closed is not None and rng.random() < 0.03:
        closed = None  # no close date: the close time is updated_at
    entered_s = created_s + int((min(close_s, now_s) - created_s) * rng.random() * 0.9)
    history: tuple[tuple[str, dt.datetime], ...] = ()
    if rng.random() < 0.30:
        steps = [f"{pid}-s{i + 1}" for i in range(level + 1)]
        span = max(entered_s - created_s, len(steps))
        history = tuple((s, _at(created_s + span * i // len(steps))) for i, s in enumerate(steps))
        if status in ("won", "lost"):
            history += ((stage, _at(max(close_s, created_s + span))),)
    next_activity = next_step = None
    if status == "open":
        if rng.random() < 0.60:
            next_activity = _at(now_s + rng.randrange(-20 * DAY, 30 * DAY))
        if rng.random() < 0.45:
            next_step = _NEXT_STEPS[rng.randrange(len(_NEXT_STEPS))]
    last_activity = None
    if rng.random() < 0.85:
        last_activity = _at(max(created_s, min(updated_s, now_s) - rng.randrange(90 * DAY)))
    expected = None if rng.random() < 0.05 else _at(close_s).date()
    amount = None
    if rng.random() >= 0.04:
        amount = Decimal(int(rng.lognormvariate(math.log(1_500_000), 0.9))).scaleb(-2)
    currency = _CURRENCIES[_pick(rng, _CUR_CUM)][0]
    owner = None if rng.random() < 0.01 else f"o{_pick(rng, _OWNER_CUM) + 1:02d}"
    if rng.random() < 0.01:
        status, stage = "deleted", stage
    archived = rng.random() < 0.02
    created_at = None if rng.random() < 0.005 else created
    key = str(number)
    title = f"Deal {number} - {('Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli')[number % 5]}"
    raw = {
        "id": key, "dealname": title, "amount": None if amount is None else str(amount),
        "deal_currency_code": currency, "pipeline": pid, "dealstage": stage, "hubspot_owner_id": owner,
        "createdate": _iso(created_at), "closedate": _iso(closed),
        "hs_lastmodifieddate": _iso(_at(updated_s)),
        "hs_next_step": next_step, "notes_next_activity_date": _iso(next_activity),
    }
    return (
        SOURCE, key, title, amount, currency, pid, stage, status, archived, owner, created_at, closed,
        expected, _at(entered_s), next_step, next_activity, last_activity, _at(updated_s),
        f"https://crm.example.com/deals/{key}", whole, history, raw,
    )


def deal_pages(count: int, seed: int, page_size: int = 1000) -> Iterator[list[DealRow]]:
    """Yield ``count`` deals as pages of rows, lazily; page ``k`` depends only on ``(seed, k)``."""
    for page, start in enumerate(range(0, count, page_size)):
        rng = random.Random(f"{seed}:{page}")
        yield [_deal(rng, number) for number in range(start + 1, min(start + page_size, count) + 1)]


def is_changed(row: DealRow, change_set: str) -> bool:
    """Whether this deal belongs to the 1 % a re-sync changes."""
    return int(row[1]) % 100 == CHANGE_SETS[change_set]


def change_row(row: DealRow, change_set: str) -> DealRow:
    """The deal as the CRM would send it after a day of work: moved, re-valued or closed."""
    values = list(row)
    number = int(row[1])
    when = NOW - dt.timedelta(hours=1 + number % 5)
    status, pid = values[7], values[5]
    kind = (number // 100 + CHANGE_SETS[change_set]) % 3
    if status == "open" and kind == 0:
        level = int(values[6].rsplit("-s", 1)[1]) if "-s" in values[6] else 5
        values[6] = f"{pid}-s{min(level + 1, 5)}"
        values[13] = when
    elif status == "open" and kind == 1:
        values[7], values[6], values[11] = "won", f"{pid}-won", when
    else:
        amount = values[3] or Decimal(1000)
        values[3] = (amount * Decimal("1.05")).quantize(Decimal("0.01"))
    values[17] = when
    values[21] = {**values[21], "hs_lastmodifieddate": _iso(when), "dealstage": values[6],
                  "amount": None if values[3] is None else str(values[3])}
    return tuple(values)
