"""HubSpot payloads to our records: strict parsing of amounts, dates and stages.

Every HubSpot property arrives as a string or ``null`` (``"1500.00"``,
``"2024-05-20T09:12:44.120Z"``, ``"true"``). This module turns them into typed
``Deal``/``Pipeline``/``Owner`` records and never guesses: a value that is
present but unreadable makes the deal a ``Rejected`` item naming the deal id and
the property, so the sync reports it and keeps the rest.

Won and lost come from the stage metadata of the pipelines API (``isClosed`` and
``probability``), never from stage labels; the deal's own calculated flags
``hs_is_closed_won``/``hs_is_closed`` are only a fallback for stages the
pipelines API did not list.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sales_velocity.connectors.base import Deal, DealStatus, Owner, Pipeline, Rejected, Stage, StageVisit
from sales_velocity.connectors.validate import storable, validated

__all__ = [
    "BASE_DEAL_PROPERTIES",
    "STAGE_ENTERED_PREFIX",
    "Catalog",
    "DealMapper",
    "deal_properties",
    "parse_amount",
    "parse_bool",
    "parse_datetime",
    "parse_owner",
    "parse_pipelines",
    "to_ms",
]

STAGE_ENTERED_PREFIX = "hs_v2_date_entered_"
"""``hs_v2_date_entered_<stageid>``: when the deal last entered that stage (the
legacy ``hs_date_entered_*`` properties are sunset)."""

BASE_DEAL_PROPERTIES: tuple[str, ...] = (
    "dealname",
    "amount",
    "deal_currency_code",
    "pipeline",
    "dealstage",
    "closedate",
    "createdate",
    "hs_lastmodifieddate",
    "hubspot_owner_id",
    "hs_is_closed",
    "hs_is_closed_won",
    "notes_next_activity_date",
    "notes_last_updated",
    "hs_next_step",
    "hs_object_id",
)
"""The deal properties the store needs; stage-entry properties are added per stage."""

DATETIME_PROPERTIES = (
    "createdate",
    "closedate",
    "hs_lastmodifieddate",
    "notes_next_activity_date",
    "notes_last_updated",
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
PROBABILITY_QUANTUM = Decimal("0.0001")  # the store keeps stage probabilities as NUMERIC(6, 4)

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?", re.IGNORECASE
)
_EPOCH_MS_RE = re.compile(r"\d{10,14}")  # legacy v1 endpoints send epoch milliseconds


def deal_properties(stage_ids: Iterable[str]) -> list[str]:
    """Return exactly the properties to request: the base ones plus one per stage id."""
    stage_props = sorted({f"{STAGE_ENTERED_PREFIX}{stage_id}" for stage_id in stage_ids})
    return [*BASE_DEAL_PROPERTIES, *stage_props]


def parse_amount(value: str | None) -> Decimal | None:
    """Parse a HubSpot number string; empty or ``None`` means "no amount".

    Raises:
        ValueError: the value is not a finite decimal number (``"12abc"``, ``"NaN"``).
    """
    if value is None or not value.strip():
        return None
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{_short(value)} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"{_short(value)} is not a finite number")
    return amount


def parse_datetime(value: str | None) -> tuple[dt.datetime | None, bool]:
    """Parse a HubSpot date or datetime string to aware UTC.

    Accepts ISO 8601 with any sub-second precision and ``Z`` or an offset (no
    offset means UTC, as HubSpot documents), a date alone (midnight UTC), and
    epoch milliseconds from legacy endpoints.

    Returns:
        The datetime (``None`` for empty/``None``) and whether it was a date only.

    Raises:
        ValueError: the value is present but not one of those forms.
    """
    if value is None or not value.strip():
        return None, False
    text = value.strip()
    if _DATE_RE.fullmatch(text):
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC), True
    if _EPOCH_MS_RE.fullmatch(text):
        return EPOCH + dt.timedelta(milliseconds=int(text)), False
    if not _DATETIME_RE.fullmatch(text):
        raise ValueError(f"{_short(value)} is not an ISO date")
    fraction = re.search(r"\.(\d+)", text)
    if fraction and len(fraction.group(1)) > 6:  # Python keeps microseconds; drop the rest
        text = text.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{_short(value)} is not a valid date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC), False


def parse_bool(value: str | None) -> bool | None:
    """``"true"``/``"false"`` (any case) to a bool; anything else is unknown (``None``)."""
    if value is None:
        return None
    return {"true": True, "false": False}.get(value.strip().lower())


def to_ms(value: dt.datetime) -> int:
    """Epoch milliseconds of an aware datetime (HubSpot's search filter unit)."""
    return (value - EPOCH) // dt.timedelta(milliseconds=1)


def _short(value: str, limit: int = 40) -> str:
    """A value quoted for a message, cut to ``limit`` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class Catalog:
    """Pipelines with their stages, plus the ids of closed stages (won, lost or odd)."""

    pipelines: tuple[Pipeline, ...]
    closed_stage_ids: frozenset[str]
    stages: Mapping[str, Stage] = field(default_factory=dict)
    """Every stage by id (HubSpot stage ids are unique across pipelines)."""

    @classmethod
    def of(cls, pipelines: Iterable[Pipeline], closed_stage_ids: Iterable[str] = ()) -> Catalog:
        """Build a catalog, indexing the stages by id."""
        pipelines = tuple(pipelines)
        stages = {s.external_id: s for p in pipelines for s in p.stages}
        return cls(pipelines, frozenset(closed_stage_ids), stages)


def _probability(metadata: Mapping[str, Any]) -> Decimal | None:
    raw = metadata.get("probability")
    try:
        value = parse_amount(raw if isinstance(raw, str) else None)
    except ValueError:
        return None
    return None if value is None else value.quantize(PROBABILITY_QUANTUM)


def parse_pipelines(results: Iterable[Any]) -> Catalog:
    """Build pipelines and stages from the pipelines API's ``results`` (client models).

    A stage is won when ``isClosed`` is true and its probability is 1, lost when
    ``isClosed`` is true and its probability is 0. An open stage with probability
    0 is just open. Order follows ``displayOrder``, ties by label.
    """
    pipelines = []
    closed: set[str] = set()
    for p in sorted(results, key=lambda p: (p.display_order or 0, p.label or "")):
        stages = []
        for s in sorted(p.stages or [], key=lambda s: (s.display_order or 0, s.label or "")):
            metadata = s.metadata or {}
            is_closed = bool(parse_bool(metadata.get("isClosed")))
            probability = _probability(metadata)
            if is_closed:
                closed.add(s.id)
            stages.append(
                Stage(
                    external_id=s.id,
                    pipeline=p.id,
                    name=s.label or s.id,
                    order=s.display_order or 0,
                    probability=probability,
                    is_won=is_closed and probability == 1,
                    is_lost=is_closed and probability == 0,
                )
            )
        pipelines.append(
            Pipeline(external_id=p.id, name=p.label or p.id, order=p.display_order or 0,
                     stages=tuple(stages))
        )
    return Catalog.of(pipelines, closed)


def parse_owner(result: Any) -> Owner:
    """Build an owner from an owners API result; ``id`` is what deals reference."""
    parts = (getattr(result, "first_name", None), getattr(result, "last_name", None))
    name = " ".join(part for part in parts if part) or None
    return Owner(external_id=str(result.id), name=name, email=getattr(result, "email", None) or None)


# --------------------------------------------------------------------------- deals


@dataclass(frozen=True, slots=True)
class DealMapper:
    """Turns one HubSpot deal (id + properties) into a ``Deal`` or a ``Rejected``."""

    source: str
    catalog: Catalog
    portal_id: int | None = None

    def map(
        self,
        deal_id: str,
        properties: Mapping[str, str | None],
        *,
        deleted: bool = False,
    ) -> Deal | Rejected:
        """Map one deal. Live deals with an unreadable value become ``Rejected``.

        An archived (``deleted``) deal is never rejected: its unreadable values are
        left empty, so the store still learns that the deal is gone.
        """
        problems: list[str] = []

        def when(name: str) -> tuple[dt.datetime | None, bool]:
            try:
                return parse_datetime(properties.get(name))
            except ValueError as exc:
                problems.append(f"{name} {exc}")
                return None, False

        try:
            amount = parse_amount(properties.get("amount"))
        except ValueError as exc:
            problems.append(f"amount {exc}")
            amount = None
        created_at, _ = when("createdate")
        closedate, close_date_only = when("closedate")
        updated_at, _ = when("hs_lastmodifieddate")
        next_activity_at, _ = when("notes_next_activity_date")
        last_activity_at, _ = when("notes_last_updated")
        history = []
        for name in sorted(properties):
            if name.startswith(STAGE_ENTERED_PREFIX) and name != f"{STAGE_ENTERED_PREFIX}current_stage":
                entered, _ = when(name)
                if entered is not None:
                    history.append(StageVisit(name.removeprefix(STAGE_ENTERED_PREFIX), entered))
        if problems and not deleted:
            return Rejected(where=f"deal {deal_id}", reason="; ".join(problems), external_id=deal_id)

        stage_id = _text(properties.get("dealstage"))
        status = self._status(stage_id, properties)
        closed = status in ("won", "lost")
        stage_entered = next((v.entered_at for v in history if v.stage == stage_id), None)
        link = None
        if self.portal_id is not None:
            link = f"https://app.hubspot.com/contacts/{self.portal_id}/deal/{deal_id}"
        check = storable if deleted else validated
        return check(Deal(
            source=self.source,
            external_id=deal_id,
            title=_text(properties.get("dealname")),
            amount=amount,
            currency=_text(properties.get("deal_currency_code")),
            pipeline=_text(properties.get("pipeline")),
            stage=stage_id,
            status="deleted" if deleted else status,
            owner=_text(properties.get("hubspot_owner_id")),
            created_at=created_at,
            closed_at=closedate if closed else None,
            expected_close_date=closedate.date() if closedate and not closed else None,
            stage_entered_at=stage_entered,
            next_step=_text(properties.get("hs_next_step")),
            next_activity_at=next_activity_at,
            last_activity_at=last_activity_at,
            updated_at=updated_at,
            link=link,
            whole_days=closed and close_date_only,
            stage_history=tuple(sorted(history, key=lambda v: (v.entered_at, v.stage))),
            raw=dict(properties),
        ))

    def _status(self, stage_id: str | None, properties: Mapping[str, str | None]) -> DealStatus:
        """Won/lost from the stage metadata; the deal's own flags for unknown or odd stages."""
        stage = self.catalog.stages.get(stage_id) if stage_id else None
        if stage is not None:
            if stage.is_won:
                return "won"
            if stage.is_lost:
                return "lost"
            if stage.external_id not in self.catalog.closed_stage_ids:
                return "open"
        if parse_bool(properties.get("hs_is_closed_won")):
            return "won"
        if parse_bool(properties.get("hs_is_closed")):
            return "lost"
        return "open"


def _text(value: str | None) -> str | None:
    """A stripped string, or ``None`` when empty."""
    if value is None:
        return None
    value = value.strip()
    return value or None
