"""The digest's weekly movement section: when it is shown, and its localised view.

By default the section is in the first digest of each week (``[notify]
movement = "weekly"``, the week starting on ``movement_week_starts``): a digest
is the first when the outbox holds no digest for an earlier day of the same
week, so a rerun on the same day renders the same digest again. ``"daily"``
shows it in every digest, ``"never"`` in none. The period is the
``movement_days`` local days ending with the digest's day, as
``velocity movement`` counts it (``metrics.movement``).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from sales_velocity.metrics.movement import BRIDGE_IN, BRIDGE_OUT, ChangeClass, DealMove, Movement
from sales_velocity.notify.formatting import Formatter, Texts
from sales_velocity.sync.store import outbox_table

__all__ = ["WEEKDAYS", "movement_due", "movement_view"]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_OTHER: tuple[ChangeClass, ...] = ("progressed", "moved_back", "pushed", "pulled_in", "reassigned")
_AMOUNTS = ("amount_up", "amount_down")
_DATES = ("pushed", "pulled_in")


def movement_due(engine: sa.Engine, mode: str, week_starts: str, as_of: dt.date) -> bool:
    """Whether the digest of ``as_of`` carries the movement section (see the module docstring)."""
    if mode == "never":
        return False
    if mode == "daily":
        return True
    start = as_of - dt.timedelta(days=(as_of.weekday() - WEEKDAYS.index(week_starts)) % 7)
    keys = [f"digest:{(start + dt.timedelta(days=n)).isoformat()}" for n in range((as_of - start).days)]
    if not keys:
        return True
    box = outbox_table.c
    with engine.connect() as conn:
        earlier = conn.execute(
            sa.select(box.id).where(box.kind == "digest", box.dedupe_key.in_(keys)).limit(1)
        ).first()
    return earlier is None


def _end(d: DealMove, value: str | None, t: Texts, f: Formatter) -> str:
    if value is None:
        return "–"
    if d.change in _AMOUNTS:
        return f.money(Decimal(value))
    if d.change in _DATES:
        return f.short_date(dt.date.fromisoformat(value))
    if value in ("won", "lost", "deleted", "archived", "open"):
        return t(f"movement_state_{value}")
    return value


def movement_view(m: Movement, t: Texts, f: Formatter, *, days: int, top: int) -> dict[str, Any]:
    """The section as localised strings: the bridge, the other classes, the largest moves."""
    local = ZoneInfo(m.timezone)
    first = m.since.astimezone(local).date()
    last = (m.until.astimezone(local) - dt.timedelta(microseconds=1)).date()

    def line(key: str, count: int, value: Decimal, sign: str = "") -> str:
        amount = f.money(value)
        return t("movement_line", label=t(f"movement_{key}"), deals=t.plural("n_deals", count),
                 amount=f"{sign}{amount}" if value else amount)

    bridge = [line("open_start", m.open_start.count, m.open_start.value)]
    for name in (*BRIDGE_IN, *BRIDGE_OUT):  # lines with no deal are left out: the section stays short
        tally = m.classes[name]
        if not tally.count:
            continue
        bridge.append(line(name, tally.count, tally.value, "+" if name in BRIDGE_IN else "−"))
    bridge.append(line("open_end", m.open_end.count, m.open_end.value))
    other = [line(name, m.classes[name].count, m.classes[name].value) for name in _OTHER
             if m.classes[name].count]
    pushed = m.classes["pushed"]
    slipped = (t("movement_slipped", month=pushed.slipped_month, quarter=pushed.slipped_quarter)
               if pushed.slipped_month or pushed.slipped_quarter else "")
    ranked = sorted(m.deals, key=lambda d: (-d.value, d.title or "", d.external_id))
    deals = [
        t("movement_deal", change=t(f"movement_{d.change}"), title=d.title or t("untitled"),
          owner=d.owner or t("no_owner"), before=_end(d, d.before, t, f), after=_end(d, d.after, t, f),
          amount=f.money(d.value))
        for d in ranked[:top]
    ]
    return {
        "title": t("movement_title", days=days),
        "period": t("movement_period", start=f.date(first), end=f.date(last)),
        "bridge": bridge,
        "other": other,
        "slipped": slipped,
        "deals": deals,
        "more": t("more_rows", n=len(ranked) - top) if len(ranked) > top else "",
        "none": t("movement_none") if not m.deals else "",
        "unvalued": t("movement_unvalued", deals=t.plural("n_deals", m.unvalued)) if m.unvalued else "",
    }
