"""A source's catalog (pipelines, stages, owners): when to refresh it, and what it knows.

Pipelines, stages and owners change rarely, and fetching them costs requests on
every sync (Pipedrive: three). The engine therefore refreshes the catalog on a
source's first sync, on a full sync, when it is older than the configured
maximum age, and whenever a synced deal refers to a pipeline, stage or owner the
catalog does not know yet. A sync with nothing changed then costs only the
requests of the deal pull itself.

An owner's e-mail address is kept only when it is one usable address (no CR/LF,
no second address, parseable: ``kernel.addresses``); otherwise it is stored
empty, so that owner's reminders go to the fallback, and a warning names the owner.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from sales_velocity.connectors.base import Connector, Deal, Owner
from sales_velocity.kernel.addresses import address_problem
from sales_velocity.sync.store import owners_table, pipelines_table, sources_table, stages_table

__all__ = ["KnownCatalog", "catalog_due", "dialect_insert", "load_known", "refresh_catalog"]

log = structlog.get_logger(__name__)


def dialect_insert(conn: sa.Connection, table: sa.Table) -> Any:
    """A dialect ``INSERT`` that supports ``ON CONFLICT`` (SQLite and PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported store backend {conn.dialect.name!r}")


@dataclass
class KnownCatalog:
    """The ids the store's catalog holds for one source, to spot deals that refer to new ones."""

    pipelines: set[str] = field(default_factory=set)
    stages: set[tuple[str, str]] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)
    stale: bool = False

    def check(self, deal: Deal) -> None:
        """Mark the catalog stale when ``deal`` refers to something it does not know."""
        self.check_ids(deal.pipeline, deal.stage, deal.owner)

    def check_ids(self, pipeline: str | None, stage: str | None, owner: str | None) -> None:
        """Mark the catalog stale when a deal's pipeline, stage or owner id is not known."""
        if self.stale:
            return
        if (
            (pipeline is not None and pipeline not in self.pipelines)
            or (stage is not None and (pipeline or "", stage) not in self.stages)
            or (owner is not None and owner not in self.owners)
        ):
            self.stale = True


def catalog_due(conn: sa.Connection, source: str, now: dt.datetime,
                max_age: dt.timedelta | None) -> bool:
    """Whether the source's catalog must be fetched now (never fetched, or too old)."""
    at = conn.execute(
        sa.select(sources_table.c.catalog_synced_at).where(sources_table.c.name == source)
    ).scalar()
    return at is None or max_age is None or now - at >= max_age


def load_known(conn: sa.Connection, source: str) -> KnownCatalog:
    """The pipeline, stage and owner ids stored for ``source``."""
    known = KnownCatalog()
    known.pipelines = set(conn.execute(
        sa.select(pipelines_table.c.external_id).where(pipelines_table.c.source == source)
    ).scalars())
    known.stages = {(r.pipeline_id, r.external_id) for r in conn.execute(
        sa.select(stages_table.c.pipeline_id, stages_table.c.external_id)
        .where(stages_table.c.source == source))}
    known.owners = set(conn.execute(
        sa.select(owners_table.c.external_id).where(owners_table.c.source == source)
    ).scalars())
    return known


def refresh_catalog(conn: sa.Connection, connector: Connector, kind: str, now: dt.datetime) -> None:
    """Fetch and upsert the source row, its pipelines, stages and owners (the caller commits)."""
    source = connector.name
    # fetch first, then write: no transaction (on SQLite, no write lock) is held across the network
    pipelines = list(connector.pipelines())
    owners = list(connector.owners())
    src = dialect_insert(conn, sources_table)
    conn.execute(src.values(name=source, kind=kind, created_at=now).on_conflict_do_nothing())
    _upsert(conn, pipelines_table, ["source", "external_id"], [
        {"source": source, "external_id": p.external_id, "name": p.name,
         "display_order": p.order} for p in pipelines
    ])
    _upsert(conn, stages_table, ["source", "pipeline_id", "external_id"], [
        {"source": source, "pipeline_id": s.pipeline, "external_id": s.external_id,
         "name": s.name, "display_order": s.order, "probability": s.probability,
         "is_won": s.is_won, "is_lost": s.is_lost, "rotting_days": s.rotting_days}
        for p in pipelines for s in p.stages
    ])
    _upsert(conn, owners_table, ["source", "external_id"], [
        {"source": source, "external_id": o.external_id, "name": o.name, "email": _checked_email(source, o)}
        for o in owners
    ])
    conn.execute(sources_table.update().where(sources_table.c.name == source)
                 .values(catalog_synced_at=now))


def _checked_email(source: str, owner: Owner) -> str | None:
    """The owner's address when it is one usable address; otherwise ``None`` and a warning.

    Their reminders then go to the fallback; the warning says where and why (the value only as ``repr``).
    """
    if owner.email is None:
        return None
    problem = address_problem(owner.email)
    if problem is None:
        return owner.email
    log.warning("sync.owner_email_rejected", source=source, owner=owner.external_id,
                email=repr(owner.email)[:80], reason=problem)
    return None


def _upsert(conn: sa.Connection, table: sa.Table, keys: Sequence[str],
            rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    stmt = dialect_insert(conn, table)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=list(keys),
            set_={c: stmt.excluded[c] for c in rows[0] if c not in keys},
        ),
        rows,
    )
