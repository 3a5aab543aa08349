"""``velocity movement``: the period's movement as a table for people, or JSON/CSV for machines.

:func:`movement_data` is the JSON contract (decimal strings, exact)::

    {"since", "until", "currency", "open_start": {"count", "value"}, "open_end": {...},
     "added": {"count", "value"}, "won", "lost", "deleted", "progressed", "moved_back",
     "pushed", "pulled_in", "amount_up": {"count", "delta"}, "amount_down", "reassigned",
     "deals": [{"id", "title", "owner", "change", "from", "to", "value"}]}

plus, so the bridge can be checked from the document alone, ``moved_in`` and
``moved_out`` (moves into and out of a pipeline or owner scope), ``unvalued``
(deals counted with value 0: no amount, or no rate), ``pushed.slipped_month`` and
``pushed.slipped_quarter``, ``timezone`` and ``scope``. A deal's ``id`` is
``<source>/<external id>``. CSV is the deal list; the table shows the bridge,
then the deals.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sales_velocity.metrics.movement import BRIDGE_IN, BRIDGE_OUT, CLASSES, Movement

__all__ = ["DEAL_FIELDS", "movement_data", "render_movement"]

MovementFormat = Literal["table", "json", "csv"]
DEAL_FIELDS = ("id", "title", "owner", "change", "from", "to", "value")
_AMOUNT_CLASSES = ("amount_up", "amount_down")
_LABELS = {
    "added": "added", "won": "won", "lost": "lost", "deleted": "deleted or archived",
    "progressed": "progressed", "moved_back": "moved back", "pushed": "pushed (close date later)",
    "pulled_in": "pulled in (close date earlier)", "amount_up": "amount increased",
    "amount_down": "amount decreased", "reassigned": "reassigned", "moved_in": "moved into the scope",
    "moved_out": "moved out of the scope",
}


def _dec(value: Decimal) -> str:
    return format(value, "f")


def movement_data(m: Movement) -> dict[str, Any]:
    """The movement as JSON-ready data (see the module docstring for the contract)."""
    zone = m.timezone
    local = ZoneInfo(zone)
    data: dict[str, Any] = {
        "since": m.since.astimezone(local).isoformat(),
        "until": m.until.astimezone(local).isoformat(),
        "currency": m.currency,
        "timezone": zone,
        "scope": m.scope.text,
        "open_start": {"count": m.open_start.count, "value": _dec(m.open_start.value)},
        "open_end": {"count": m.open_end.count, "value": _dec(m.open_end.value)},
    }
    for name in CLASSES:
        tally = m.classes[name]
        key = "delta" if name in _AMOUNT_CLASSES else "value"
        data[name] = {"count": tally.count, key: _dec(tally.value)}
    data["pushed"].update(slipped_month=m.classes["pushed"].slipped_month,
                          slipped_quarter=m.classes["pushed"].slipped_quarter)
    data["unvalued"] = m.unvalued
    data["deals"] = [
        {"id": f"{d.source}/{d.external_id}", "title": d.title, "owner": d.owner, "change": d.change,
         "from": d.before, "to": d.after, "value": _dec(d.value)}
        for d in m.deals
    ]
    return data


def _money(currency: str, value: Decimal) -> str:
    return f"{currency} {value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"


def _amount(currency: str, value: str | None) -> str | None:
    return None if value is None else _money(currency, Decimal(value))


def _table(m: Movement) -> str:
    data = movement_data(m)
    first = data["since"][:16].replace("T", " ")
    last = data["until"][:16].replace("T", " ")
    lines = [f"Pipeline movement {first} until {last} ({m.timezone}, {m.currency}), {m.scope.label}", ""]
    rows: list[tuple[str, str, str]] = [
        ("open at start", str(m.open_start.count), _money(m.currency, m.open_start.value)),
    ]
    for name in (*BRIDGE_IN, *BRIDGE_OUT):
        if m.scope.kind == "all" and name in ("moved_in", "moved_out"):
            continue
        sign = "+" if name in BRIDGE_IN else "-"
        tally = m.classes[name]
        rows.append((f"{sign} {_LABELS[name]}", str(tally.count), _money(m.currency, tally.value)))
    rows.append(("= open at end", str(m.open_end.count), _money(m.currency, m.open_end.value)))
    rows.append(("", "", ""))
    for name in ("progressed", "moved_back", "pushed", "pulled_in", "reassigned"):
        tally = m.classes[name]
        rows.append((_LABELS[name], str(tally.count), _money(m.currency, tally.value)))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for label, count, value in rows:
        lines.append(f"  {label.ljust(width[0])}  {count.rjust(width[1])}  {value.rjust(width[2])}".rstrip())
    pushed = m.classes["pushed"]
    if pushed.count:
        lines.append(f"  (pushed out of the month: {pushed.slipped_month}, "
                     f"out of the quarter: {pushed.slipped_quarter})")
    if m.unvalued:
        lines.append(f"  * {m.unvalued} deal(s) counted with value 0: no amount, or no rate to {m.currency}")
    lines += ["", "Deals"]
    if not m.deals:
        lines.append("  (no movement)")
    for d in data["deals"]:
        move, ends = "", (d["from"], d["to"])
        if d["change"] in _AMOUNT_CLASSES:
            ends = (_amount(m.currency, d["from"]), _amount(m.currency, d["to"]))
        if ends != (None, None):
            move = f": {ends[0] or '-'} -> {ends[1] or '-'}"
        owner = f" ({d['owner']})" if d["owner"] else ""
        value = _money(m.currency, Decimal(d["value"]))
        lines.append(f"  {d['change']:<11} {d['title'] or d['id']}{owner}{move}, {value}")
    return "\n".join(lines) + "\n"


def _csv(m: Movement) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DEAL_FIELDS, lineterminator="\n")
    writer.writeheader()
    for d in movement_data(m)["deals"]:
        writer.writerow({k: "" if v is None else v for k, v in d.items()})
    return out.getvalue()


def render_movement(m: Movement, fmt: MovementFormat) -> str:
    """The movement as ``table``, ``json`` or ``csv`` text, ending with a newline."""
    if fmt == "table":
        return _table(m)
    if fmt == "json":
        return json.dumps(movement_data(m), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return _csv(m)
    raise ValueError(f"unknown movement format {fmt!r}; use table, json or csv")
