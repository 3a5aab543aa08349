"""Which hygiene rules are off for which source, because a field they need is unknown there.

The sync records per source whether it provides each tracked deal field
(``source_fields``, see ``sync.fields``). A rule whose fields a source does not
provide is *off* for that source: its deals are neither counted nor reminded
for it, and the digest says so in one line instead of flagging every open deal.

=====================  ==============================================================
rule                   off for a source that does not provide
=====================  ==============================================================
``no_next_step``       next-step text **and** next activity dates (either one is enough)
``next_step_overdue``  next activity dates
``close_date_passed``  expected close dates
``stuck_in_stage``     stage-entry dates
``inactive``           activity dates (else every deal older than the limit is "inactive")
``missing_amount``     amounts
=====================  ==============================================================

A source with no recorded row (a store filled before this table, or a source
that has not synced yet) provides everything: the rules stay on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from sales_velocity.metrics.hygiene import RULES, Rule
from sales_velocity.sync.store import source_fields_table

__all__ = ["RULE_FIELDS", "Coverage", "UnknownField", "read_coverage"]

RULE_FIELDS: dict[Rule, tuple[str, ...]] = {
    "no_next_step": ("next_step", "next_activity_at"),
    "next_step_overdue": ("next_activity_at",),
    "close_date_passed": ("expected_close_date",),
    "stuck_in_stage": ("stage_entered_at",),
    "inactive": ("last_activity_at",),
    "missing_amount": ("amount",),
    "repeatedly_pushed": ("expected_close_date",),
}
"""The fields each rule reads; it is off where a source provides none of them."""


@dataclass(frozen=True, slots=True)
class UnknownField:
    """One thing a source does not provide, and the rules that are off for it because of that.

    ``fields`` is one field, or both next-step fields when neither is there
    (they are said in one line).
    """

    source: str
    fields: tuple[str, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Coverage:
    """The unknown fields per source and, per rule, the sources it is off for."""

    unknown: tuple[UnknownField, ...] = ()

    @property
    def rules_off(self) -> dict[Rule, tuple[str, ...]]:
        """``{rule: sources it is off for}`` (rules on everywhere are absent)."""
        out: dict[Rule, list[str]] = {}
        for u in self.unknown:
            for rule in u.rules:
                if u.source not in out.setdefault(rule, []):
                    out[rule].append(u.source)
        return {rule: tuple(sorted(sources)) for rule, sources in out.items()}

    def is_off(self, rule: Rule, source: str) -> bool:
        """Whether ``rule`` is off for ``source``."""
        return source in self.rules_off.get(rule, ())


def coverage_of(missing: Mapping[str, frozenset[str]]) -> Coverage:
    """The coverage from ``{source: fields it does not provide}``."""
    unknown: list[UnknownField] = []
    for source in sorted(missing):
        gone = missing[source]
        names: list[tuple[str, ...]] = [("expected_close_date",), ("stage_entered_at",),
                                         ("last_activity_at",), ("amount",)]
        if {"next_step", "next_activity_at"} <= gone:
            names.insert(0, ("next_step", "next_activity_at"))
        else:
            names.insert(0, ("next_activity_at",))
        for group in names:
            rules = tuple(r for r in RULES
                          if set(RULE_FIELDS[r]) <= gone and set(RULE_FIELDS[r]) & set(group))
            if rules:
                unknown.append(UnknownField(source, group, rules))
    return Coverage(tuple(unknown))


def read_coverage(engine: sa.Engine) -> Coverage:
    """Read ``source_fields``: what each source does not provide, and the rules that are off."""
    t = source_fields_table
    missing: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for r in conn.execute(sa.select(t.c.source, t.c.field).where(sa.not_(t.c.provided))):
            missing.setdefault(r.source, set()).add(r.field)
    return coverage_of({k: frozenset(v) for k, v in missing.items()})
