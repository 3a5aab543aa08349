"""The connector contract suite: what every connector's deal stream must satisfy.

Each connector's tests call ``check_stream`` on a real pull (against its fake
server or fixture file) so every CRM is held to the same rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal

from sales_velocity.connectors.base import Checkpoint, Connector, Deal, Rejected, StreamItem

DATETIME_FIELDS = (
    "created_at",
    "closed_at",
    "stage_entered_at",
    "next_activity_at",
    "last_activity_at",
    "updated_at",
)


def check_stream(
    items: Iterable[StreamItem], source: str
) -> tuple[list[Deal], list[Rejected], list[Checkpoint]]:
    """Assert the contract on a whole stream and return its deals, rejects and checkpoints.

    Rules: items are only Deal/Rejected/Checkpoint; the stream ends with a
    checkpoint; deals carry the source name; ``(source, external_id)`` is unique
    per checkpoint span; amounts are Decimal; datetimes are aware UTC.
    """
    deals: list[Deal] = []
    rejects: list[Rejected] = []
    checkpoints: list[Checkpoint] = []
    last: StreamItem | None = None
    seen_in_span: set[str] = set()
    for item in items:
        last = item
        if isinstance(item, Deal):
            assert item.source == source, f"deal {item.external_id} has source {item.source!r}"
            assert item.external_id, "deal without external id"
            assert item.external_id not in seen_in_span, f"deal {item.external_id} twice"
            seen_in_span.add(item.external_id)
            assert item.amount is None or isinstance(item.amount, Decimal)
            for name in DATETIME_FIELDS:
                value = getattr(item, name)
                assert value is None or (
                    isinstance(value, dt.datetime) and value.utcoffset() == dt.timedelta(0)
                ), f"{name} of deal {item.external_id} is not aware UTC: {value!r}"
            deals.append(item)
        elif isinstance(item, Rejected):
            assert item.where, "a rejected record must say where it is"
            assert item.reason, "a rejected record must say why"
            rejects.append(item)
        elif isinstance(item, Checkpoint):
            checkpoints.append(item)
            seen_in_span.clear()
        else:  # pragma: no cover - contract violation
            raise AssertionError(f"unexpected stream item {item!r}")
    assert isinstance(last, Checkpoint), "the stream must end with a Checkpoint"
    return deals, rejects, checkpoints


def check_connector(connector: Connector) -> None:
    """Assert the non-stream parts: it is a Connector, pipelines and owners are well-formed."""
    assert isinstance(connector, Connector)
    for pipeline in connector.pipelines():
        assert pipeline.external_id
        for stage in pipeline.stages:
            assert stage.pipeline == pipeline.external_id
            assert not (stage.is_won and stage.is_lost)
    ids = [owner.external_id for owner in connector.owners()]
    assert len(ids) == len(set(ids)), "owner ids must be unique"
