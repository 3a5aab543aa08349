"""Pure mapping from Pipedrive API payloads to our records.

API v2 shapes (deals, archived deals, stages, pipelines, deal fields,
activities) and the v1 user list become ``Deal``/``Stage``/``Pipeline``/``Owner``.
A deal that cannot be read becomes ``Rejected`` with its id and the reason.

Field rules:

* ``value``/``currency`` -> ``amount`` (Decimal, never float)/``currency``;
* ``status`` (``open|won|lost|deleted``; ``is_deleted`` also means deleted);
  archived deals keep their status and get ``archived=True``;
* ``add_time`` -> ``created_at``; ``won_time``/``lost_time`` (falling back to
  ``close_time``) -> ``closed_at`` for won/lost deals; open deals have none;
* ``stage_change_time`` -> ``stage_entered_at``; ``null`` means the deal never
  changed stage, so it has been in its stage since ``add_time``;
* next/last activity times come from the activities the deal points to
  (``next_activity_id``/``last_activity_id``): an activity's ``due_date`` plus
  ``due_time`` (UTC; midnight when it has no time);
* configured custom fields, resolved by *name* through ``dealFields``, fill
  canonical fields (``next_step``, ...) and win over the built-in value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from sales_velocity.connectors.base import Deal, DealStatus, Owner, Pipeline, Rejected, Stage
from sales_velocity.connectors.validate import MAX_AMOUNT, validated

__all__ = [
    "CANONICAL_FIELDS",
    "CustomField",
    "activity_time",
    "deal_link",
    "map_deal",
    "map_owner",
    "map_pipelines",
    "parse_date",
    "parse_time",
    "resolve_custom_fields",
]

CANONICAL_FIELDS: tuple[str, ...] = (
    "next_step",
    "expected_close_date",
    "next_activity_at",
    "last_activity_at",
    "amount",
)
"""Deal fields a Pipedrive custom field may fill (``custom_fields`` in the settings)."""

_STATUSES: frozenset[str] = frozenset({"open", "won", "lost", "deleted"})


def parse_time(value: Any) -> dt.datetime | None:
    """Parse a Pipedrive timestamp to aware UTC.

    v2 sends RFC 3339 (``2025-06-03T10:22:05Z``, with or without ``.000``);
    v1 sends ``YYYY-MM-DD HH:MM:SS`` in UTC. Empty values are ``None``.

    Raises:
        ValueError: the value is not a timestamp.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a timestamp")
    moment = dt.datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def parse_date(value: Any) -> dt.date | None:
    """Parse a ``YYYY-MM-DD`` date (a longer timestamp keeps its date part)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a date")
    return dt.date.fromisoformat(value.strip()[:10])


def activity_time(activity: Mapping[str, Any]) -> dt.datetime | None:
    """When an activity is due: ``due_date`` plus ``due_time`` (UTC), else midnight UTC."""
    day = parse_date(activity.get("due_date"))
    if day is None:
        return None
    due = activity.get("due_time")
    clock = dt.time.fromisoformat(due) if isinstance(due, str) and due else dt.time(0, 0)
    return dt.datetime.combine(day, clock, tzinfo=dt.UTC)


def deal_link(company_domain: str, deal_id: str) -> str:
    """The deal's page in the Pipedrive web app."""
    return f"https://{company_domain}.pipedrive.com/deal/{deal_id}"


def map_owner(user: Mapping[str, Any]) -> Owner:
    """A v1 user as a deal owner (deactivated users too: they may still own deals)."""
    email = user.get("email")
    return Owner(
        external_id=str(user["id"]),
        name=str(user["name"]) if user.get("name") else None,
        email=str(email) if email else None,
    )


def _stage(raw: Mapping[str, Any]) -> Stage:
    probability = raw.get("deal_probability")
    rotting = raw.get("days_to_rotten") if raw.get("is_deal_rot_enabled") else None
    return Stage(
        external_id=str(raw["id"]),
        pipeline=str(raw["pipeline_id"]),
        name=str(raw.get("name") or raw["id"]),
        order=int(raw.get("order_nr") or 0),
        probability=None if probability is None else Decimal(str(probability)) / 100,
        rotting_days=None if rotting is None else int(rotting),
    )


def map_pipelines(
    pipelines: Iterable[Mapping[str, Any]], stages: Iterable[Mapping[str, Any]]
) -> list[Pipeline]:
    """v2 pipelines with their v2 stages, ordered by ``order_nr``; deleted ones are left out.

    Pipedrive stages are never won or lost (a deal's ``status`` says that), so
    ``is_won``/``is_lost`` stay False. ``rotting_days`` is ``days_to_rotten``
    where the stage has rotting enabled, else ``None``. ``deal_probability``
    (0-100) becomes a fraction.
    """
    by_pipeline: dict[str, list[Stage]] = {}
    for raw in stages:
        if raw.get("is_deleted"):
            continue
        stage = _stage(raw)
        by_pipeline.setdefault(stage.pipeline, []).append(stage)
    result = []
    for raw in pipelines:
        if raw.get("is_deleted"):
            continue
        key = str(raw["id"])
        ordered = sorted(by_pipeline.get(key, []), key=lambda s: (s.order, s.external_id))
        result.append(Pipeline(key, str(raw.get("name") or key), int(raw.get("order_nr") or 0),
                               tuple(ordered)))
    return sorted(result, key=lambda p: (p.order, p.external_id))


# --------------------------------------------------------------------------- custom fields


@dataclass(frozen=True, slots=True)
class CustomField:
    """A configured custom field, resolved: its name, hash key and canonical target."""

    name: str
    key: str
    canonical: str
    field_type: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    def read(self, value: Any) -> Any:
        """Convert a ``custom_fields`` value for the canonical field.

        Raises:
            ValueError: the value does not fit the canonical field.
        """
        if value is None or value == "" or value == []:
            return None
        if self.canonical == "amount":
            if isinstance(value, Mapping):
                return _decimal(value.get("value")), value.get("currency")
            return _decimal(value), None
        if isinstance(value, Mapping):  # monetary, date and time ranges: {"value": ..., ...}
            value = value.get("value")
        if self.canonical == "next_step":
            items = value if isinstance(value, list) else [value]
            return ", ".join(self.options.get(str(item), str(item)) for item in items) or None
        if self.canonical == "expected_close_date":
            return parse_date(value)
        return parse_time(value)  # next_activity_at, last_activity_at


def resolve_custom_fields(
    mapping: Mapping[str, str], deal_fields: Iterable[Mapping[str, Any]]
) -> tuple[CustomField, ...]:
    """Find each configured custom field by name among the v2 ``dealFields``.

    An exact name wins; otherwise a unique case-insensitive match is taken.

    Raises:
        LookupError: a name matches no custom field, or several.
    """
    custom = [f for f in deal_fields if f.get("is_custom_field", True) and f.get("field_code")]
    resolved = []
    for name, canonical in mapping.items():
        matches = [f for f in custom if f.get("field_name") == name]
        if not matches:
            matches = [f for f in custom if str(f.get("field_name", "")).casefold() == name.casefold()]
        if len(matches) != 1:
            known = ", ".join(sorted(repr(str(f.get("field_name"))) for f in custom)) or "none"
            problem = "several custom deal fields are" if matches else "no custom deal field is"
            raise LookupError(f"{problem} named {name!r} (custom deal fields: {known})")
        found = matches[0]
        options = {str(o["id"]): str(o.get("label", o["id"]))
                   for o in found.get("options") or () if isinstance(o, Mapping) and "id" in o}
        resolved.append(CustomField(name, str(found["field_code"]), canonical,
                                    str(found.get("field_type") or ""), options))
    return tuple(resolved)


# --------------------------------------------------------------------------- deals


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{value!r} is not a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not amount.is_finite() or abs(amount) > MAX_AMOUNT:
        raise ValueError(f"{value!r} is not a storable amount")
    return amount


def _id(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _status(raw: Mapping[str, Any]) -> DealStatus:
    if raw.get("is_deleted"):
        return "deleted"
    status = raw.get("status")
    if status not in _STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return cast(DealStatus, status)


def _closed_at(raw: Mapping[str, Any], status: DealStatus) -> dt.datetime | None:
    if status == "open":
        return None
    specific = {"won": "won_time", "lost": "lost_time"}.get(status)
    return parse_time(raw.get(specific) if specific else None) or parse_time(raw.get("close_time"))


def map_deal(
    raw: Mapping[str, Any],
    *,
    source: str,
    company_domain: str,
    archived: bool = False,
    custom_fields: Iterable[CustomField] = (),
    activities: Mapping[int, dt.datetime | None] | None = None,
) -> Deal | Rejected:
    """Map one v2 deal; a deal that cannot be read becomes ``Rejected`` (with its id).

    Args:
        raw: the deal as the API sent it.
        source: the source name to stamp on the deal.
        company_domain: for the deal's link.
        archived: it came from ``/deals/archived`` (``is_archived`` also counts).
        custom_fields: resolved custom fields to read from ``raw["custom_fields"]``.
        activities: due times of activities by id, for next/last activity.
    """
    deal_id = _id(raw.get("id"))
    if deal_id is None:
        return Rejected(where="deal without id", reason="the API sent a deal without an id")
    step = "status"
    try:
        status = _status(raw)
        step = "value"
        amount = _decimal(raw.get("value"))
        currency = raw.get("currency") or None
        step = "dates"
        values: dict[str, Any] = {
            "created_at": parse_time(raw.get("add_time")),
            "closed_at": _closed_at(raw, status),
            "expected_close_date": parse_date(raw.get("expected_close_date")),
            "stage_entered_at": parse_time(raw.get("stage_change_time")),
            "updated_at": parse_time(raw.get("update_time")),
            "next_activity_at": (activities or {}).get(raw.get("next_activity_id") or -1),
            "last_activity_at": (activities or {}).get(raw.get("last_activity_id") or -1),
            "next_step": None,
        }
        if values["stage_entered_at"] is None:
            values["stage_entered_at"] = values["created_at"]
        found = raw.get("custom_fields") or {}
        for custom in custom_fields:
            step = f"custom field {custom.name!r}"
            value = custom.read(found.get(custom.key))
            if value is None:
                continue
            if custom.canonical == "amount":
                custom_amount, custom_currency = value
                if custom_amount is not None:
                    amount, currency = custom_amount, custom_currency or currency
            else:
                values[custom.canonical] = value
        step = "currency"
        if currency is not None and (not isinstance(currency, str) or len(currency) != 3):
            raise ValueError(f"{currency!r} is not a 3-letter currency code")
        return validated(Deal(
            source=source,
            external_id=deal_id,
            title=str(raw["title"]) if raw.get("title") is not None else None,
            amount=amount,
            currency=currency,
            pipeline=_id(raw.get("pipeline_id")),
            stage=_id(raw.get("stage_id")),
            status=status,
            archived=bool(archived or raw.get("is_archived")),
            owner=_id(raw.get("owner_id")),
            link=deal_link(company_domain, deal_id),
            raw=dict(raw),
            **values,
        ))
    except (ValueError, TypeError) as exc:
        return Rejected(where=f"deal {deal_id}", reason=f"{step}: {exc}", external_id=deal_id)
