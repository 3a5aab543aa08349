"""A digest per team: which deals a channel's digest counts, and ``[metrics] exclude_pipelines``.

A channel may take a scope::

    [[notify.channels]]
    name = "new-business"
    kind = "slack"
    scope = { pipelines = ["New Business"], owners = ["kari@example.com", "ola@example.com"] }

Pipelines are named by name or id, owners by e-mail, id or name; with both, a
deal counts when it is in one of the pipelines *and* owned by one of the
owners. A scope that names pipelines may include one that ``exclude_pipelines``
leaves out of "all"; a scope of owners only is "all" of their deals, so the
excluded pipelines stay out of it too. Names are resolved against the
store when the digest is built (:func:`resolve`); a name that matches nothing
matches no deal (and is logged), so a typo gives an empty digest, not the
whole company's.

The same filter reaches every part of the digest: the velocity scan and the
history rebuild filter their groups (by source, pipeline, owner) before the
roll-up (:meth:`DealFilter.keeps`), and the hygiene, worst-deal and stage-wait
queries add :meth:`DealFilter.where`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sales_velocity.sync.store import deals_table, owners_table, pipelines_table

__all__ = ["DealFilter", "DigestScope", "excluded_pipeline", "resolve"]

log = structlog.get_logger(__name__)
Ident = tuple[str, str]


class DigestScope(BaseModel):
    """A channel's ``scope``: the pipelines and/or owners its digest counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: tuple[str, ...] = Field(default=(), description="Pipeline names or ids.")
    owners: tuple[str, ...] = Field(default=(), description="Owner e-mails, ids or names.")

    @model_validator(mode="after")
    def _some(self) -> DigestScope:
        if not self.pipelines and not self.owners:
            raise ValueError("a scope names pipelines, owners or both")
        return self

    @property
    def label(self) -> str:
        """``New Business · kari@example.com, ola@example.com``."""
        return " · ".join(", ".join(part) for part in (self.pipelines, self.owners) if part)

    def as_data(self) -> dict[str, list[str]]:
        """The scope as JSON-ready data."""
        return {"pipelines": list(self.pipelines), "owners": list(self.owners)}


def excluded_pipeline(names: Sequence[str], source: str, pipeline_id: str | None,
                      pipeline_names: dict[Ident, str]) -> bool:
    """Whether the pipeline is one of ``names`` (by id or by name)."""
    if not names or pipeline_id is None:
        return False
    return pipeline_id in names or pipeline_names.get((source, pipeline_id)) in names


@dataclass(frozen=True)
class DealFilter:
    """Deals a digest counts.

    In ``pipelines`` (all when ``None``), of ``owners`` (all when ``None``),
    never in ``exclude`` unless the pipeline was named.
    """

    pipelines: frozenset[Ident] | None = None
    owners: frozenset[Ident] | None = None
    exclude: frozenset[Ident] = frozenset()

    @property
    def is_everything(self) -> bool:
        """Whether the filter keeps every deal."""
        return self.pipelines is None and self.owners is None and not self.exclude

    def keeps(self, row: Any) -> bool:
        """Whether a group row (``source``, ``pipeline_id``, ``owner_id``) is in the scope."""
        pipeline = (row.source, row.pipeline_id)
        if self.pipelines is not None and pipeline not in self.pipelines:
            return False
        if self.pipelines is None and pipeline in self.exclude:
            return False
        return self.owners is None or (row.source, row.owner_id) in self.owners

    def where(self) -> sa.ColumnElement[bool] | None:
        """The same filter in SQL on the deals table (``None``: everything)."""
        d = deals_table.c

        def any_of(pairs: frozenset[Ident], column: Any) -> sa.ColumnElement[bool]:
            if not pairs:
                return sa.false()
            return sa.or_(*(sa.and_(d.source == s, column == x) for s, x in sorted(pairs)))

        parts: list[sa.ColumnElement[bool]] = []
        if self.pipelines is not None:
            parts.append(any_of(self.pipelines, d.pipeline_id))
        elif self.exclude:
            parts.append(sa.or_(d.pipeline_id.is_(None), sa.not_(any_of(self.exclude, d.pipeline_id))))
        if self.owners is not None:
            parts.append(any_of(self.owners, d.owner_id))
        return sa.and_(*parts) if parts else None


def resolve(engine: sa.Engine, scope: DigestScope | None,
            exclude_pipelines: Sequence[str] = ()) -> DealFilter:
    """The filter of ``scope`` (``None``: all but ``exclude_pipelines``), names looked up in the store."""
    p, o = pipelines_table.c, owners_table.c
    with engine.connect() as conn:
        pipelines = [(r.source, r.external_id, r.name)
                     for r in conn.execute(sa.select(p.source, p.external_id, p.name))]
        owners = [(r.source, r.external_id, r.name, r.email)
                  for r in conn.execute(sa.select(o.source, o.external_id, o.name, o.email))]
    exclude = frozenset((s, x) for s, x, n in pipelines if x in exclude_pipelines or n in exclude_pipelines)
    if scope is None:
        return DealFilter(exclude=exclude)
    chosen_p = None
    if scope.pipelines:
        chosen_p = frozenset((s, x) for s, x, n in pipelines if x in scope.pipelines or n in scope.pipelines)
        _unmatched("pipeline", scope.pipelines, {v for _, x, n in pipelines for v in (x, n)})
    chosen_o = None
    if scope.owners:
        wanted = {w.casefold() for w in scope.owners}
        chosen_o = frozenset((s, x) for s, x, n, e in owners
                             if x.casefold() in wanted or (n or "").casefold() in wanted
                             or (e or "").casefold() in wanted)
        _unmatched("owner", scope.owners,
                   {(v or "").casefold() for _, x, n, e in owners for v in (x, n, e)}, fold=True)
    return DealFilter(chosen_p, chosen_o, exclude)


def _unmatched(what: str, names: Sequence[str], known: set[str], *, fold: bool = False) -> None:
    missing = [n for n in names if (n.casefold() if fold else n) not in known]
    if missing:
        log.warning("notify.scope.unmatched", kind=what, names=missing)
