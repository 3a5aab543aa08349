"""Helpers for the movement tests: the bridge identity and a class-by-deal view."""

from __future__ import annotations

from decimal import Decimal

from sales_velocity.metrics.movement import Movement
from sales_velocity.metrics.movement_report import movement_data


def assert_bridge(m: Movement) -> None:
    """The bridge adds up exactly, from the JSON document alone (plain Decimal arithmetic)."""
    data = movement_data(m)
    total = Decimal(data["open_start"]["value"])
    total += Decimal(data["added"]["value"]) + Decimal(data["amount_up"]["delta"])
    total += Decimal(data["moved_in"]["value"])
    total -= Decimal(data["amount_down"]["delta"]) + Decimal(data["won"]["value"])
    total -= Decimal(data["lost"]["value"]) + Decimal(data["deleted"]["value"])
    total -= Decimal(data["moved_out"]["value"])
    assert total == Decimal(data["open_end"]["value"])
    count = data["open_start"]["count"] + data["added"]["count"] + data["moved_in"]["count"]
    count -= data["won"]["count"] + data["lost"]["count"] + data["deleted"]["count"]
    count -= data["moved_out"]["count"]
    assert count == data["open_end"]["count"]


def by_deal(m: Movement) -> dict[str, set[tuple[str, str | None, str | None]]]:
    """``{external id: {(change, from, to)}}``."""
    out: dict[str, set[tuple[str, str | None, str | None]]] = {}
    for d in m.deals:
        out.setdefault(d.external_id, set()).add((d.change, d.before, d.after))
    return out
