"""Driver-level encoding: timestamps, money and flags as the driver stores them, and whole deals.

The engine's batches carry their own encoding (``sync.batch``, ``sync.staging``);
this module keeps the driver-level pieces they share (timestamps as the driver
stores them, the seen-ids insert) and ``RowEncoder.deal``, a deal encoded into
driver parameters exactly as the column types in ``sync.store`` would store it:

* ``Money``: integer 1/10,000 units on SQLite, ``Decimal`` for ``NUMERIC`` elsewhere;
* ``UTCDateTime``: naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` on SQLite (the
  SQLite dialect's storage format), aware UTC ``datetime`` elsewhere;
* dates as ISO text on SQLite, booleans as 0/1, JSON as text.

A test round-trips encoded rows through the ORM types on both backends, so the
two paths cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from typing import Any

from sales_velocity.connectors.base import Deal

__all__ = ["DEAL_COLUMNS", "RowEncoder"]

DEAL_COLUMNS: tuple[str, ...] = (
    "source", "external_id", "title", "amount", "currency", "pipeline_id", "stage_id", "status",
    "archived", "owner_id", "created_at", "closed_at", "expected_close_date", "stage_entered_at",
    "next_step", "next_activity_at", "last_activity_at", "updated_at", "link", "whole_days", "raw",
    "content_hash", "first_seen_at", "synced_at", "deleted_at",
)
"""Column order of the encoded deal rows."""

_NOT_UPDATED = ("source", "external_id", "first_seen_at")
_UTC = dt.UTC
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


class RowEncoder:
    """Encodes deals, stage events and ids for one backend (``sqlite`` or ``postgresql``)."""

    def __init__(self, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise NotImplementedError(f"unsupported store backend {dialect!r}")
        self.sqlite = dialect == "sqlite"
        mark = "?" if self.sqlite else "%s"
        self.mark = mark
        columns = ", ".join(DEAL_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in DEAL_COLUMNS if c not in _NOT_UPDATED)
        self.insert_deals_sql = (
            f"INSERT INTO deals ({columns}) VALUES ({', '.join([mark] * len(DEAL_COLUMNS))})"
        )
        self.upsert_deals_sql = (
            f"{self.insert_deals_sql} ON CONFLICT (source, external_id) DO UPDATE SET {updates}"
        )
        self.insert_seen_sql = (
            f"INSERT INTO sync_seen_ids (external_id) VALUES ({mark}) ON CONFLICT DO NOTHING"
        )

    # ------------------------------------------------------------------ values

    def timestamp(self, value: dt.datetime | None) -> Any:
        """A ``UTCDateTime`` value as the driver takes it."""
        if value is None:
            return None
        if value.tzinfo is not _UTC:
            value = value.astimezone(_UTC)
        if self.sqlite:
            text = value.isoformat(" ")[:-6]  # drop "+00:00"; isoformat is C-fast
            return text if len(text) > 19 else text + ".000000"
        return value

    def money(self, value: Decimal | None) -> Any:
        """A ``Money`` value as the driver takes it."""
        if value is None:
            return None
        if self.sqlite:
            return int((value * 10000).to_integral_value())
        return value

    def flag(self, value: bool) -> Any:
        """A boolean as the driver takes it."""
        return int(value) if self.sqlite else value

    # ------------------------------------------------------------------ rows

    def deal(self, deal: Deal) -> tuple[list[Any], str]:
        """Encode ``deal`` (without the bookkeeping columns) and its content hash.

        The hash covers every stored field and the CRM stage history, so an
        unchanged deal is recognised and not written again.
        """
        ts = self.timestamp
        expected = deal.expected_close_date
        row: list[Any] = [
            deal.source, deal.external_id, deal.title, self.money(deal.amount), deal.currency,
            deal.pipeline, deal.stage, deal.status, self.flag(deal.archived), deal.owner,
            ts(deal.created_at), ts(deal.closed_at),
            expected.isoformat() if self.sqlite and expected is not None else expected,
            ts(deal.stage_entered_at), deal.next_step, ts(deal.next_activity_at),
            ts(deal.last_activity_at), ts(deal.updated_at), deal.link, self.flag(deal.whole_days),
            None if deal.raw is None else _JSON.encode(deal.raw),
        ]
        history = ";".join(f"{v.stage}@{v.entered_at.timestamp()}" for v in deal.stage_history)
        digest = hashlib.md5(f"{row!r}{history}".encode(), usedforsecurity=False).hexdigest()
        return row, digest
