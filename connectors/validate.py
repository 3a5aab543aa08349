"""One check of every deal against what both stores can hold, shared by all connectors.

A value one store cannot hold used to fail the whole batch write, and so the
whole source, on every run (issue 14, item 5). Each connector therefore passes
its deals through ``validated`` before yielding them: a deal that holds such a
value becomes a ``Rejected`` item (with where and why), and the rest of the
source goes on. The limits are the tighter of the two backends:

* amounts: finite, and less than 10^14 in size (``MAX_AMOUNT``). SQLite keeps
  money as an int64 count of 1/10,000 units (922,337,203,685,477.5807 at most),
  PostgreSQL's ``NUMERIC(20, 4)`` up to 10^16; the round limit below both
  leaves SQLite's sums some room;
* text: no NUL character (PostgreSQL text cannot hold it) and no lone UTF-16
  surrogate (neither driver can encode it: an API's escaped ``d800``, or a byte of a
  CSV file that is not valid in its encoding);
* ids (pipeline, stage, owner, stage history) at most ``MAX_ID_LENGTH``
  characters, a currency at most 3 (the columns' lengths on PostgreSQL);
* the raw payload: no lone surrogate in any key or value (it is stored as JSON).

Messages name the field and the problem, never the whole value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sales_velocity.connectors.base import Deal, Rejected

__all__ = ["MAX_AMOUNT", "MAX_ID_LENGTH", "problems_of", "storable", "text_problem", "validated"]

MAX_AMOUNT = Decimal("99999999999999.9999")
"""The largest amount kept: under 10^14, below what both stores hold (int64 1/10,000 units on SQLite)."""
MAX_ID_LENGTH = 200
"""Ids of deals, pipelines, stages and owners are kept in 200 characters."""
MAX_CURRENCY_LENGTH = 3
_ID_FIELDS = ("external_id", "pipeline", "stage", "owner")
_TEXT_FIELDS = ("title", "next_step", "link")
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_MAX_DEPTH = 50


def text_problem(text: str) -> str | None:
    """What makes ``text`` unstorable (a NUL, a lone surrogate), or ``None`` when it is fine."""
    found = _BAD_CHAR.search(text)
    if found is None:
        return None
    char = found.group()
    position = found.start() + 1
    if char == "\x00":
        return f"holds a NUL character (at character {position})"
    if "\udc80" <= char <= "\udcff":
        return f"holds a byte that is not valid text in the file's encoding (at character {position})"
    return f"holds a lone surrogate U+{ord(char):04X} (at character {position}), which is not valid Unicode"


def _amount_problem(amount: Decimal) -> str | None:
    if not amount.is_finite():
        return f"amount {amount} is not a finite number"
    if abs(amount) > MAX_AMOUNT:
        return (f"amount {amount:.6E} is larger than the store can hold "
                f"(at most {MAX_AMOUNT:,} in size)")
    return None


def _raw_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """The first unstorable string in a raw payload (keys and values), with its path."""
    if depth > _MAX_DEPTH:
        return f"raw payload nested deeper than {_MAX_DEPTH} levels at {path}"
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None or "NUL" in problem else f"{path} {problem}"
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key!s}"
            if isinstance(key, str) and (problem := text_problem(key)) and "NUL" not in problem:
                return f"a key of {path} {problem}"
            if (found := _raw_problem(item, where, depth + 1)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            if (found := _raw_problem(item, f"{path}[{n}]", depth + 1)) is not None:
                return found
    return None


def problems_of(deal: Deal) -> list[str]:
    """Every reason ``deal`` cannot be stored in both stores (empty when it can)."""
    problems: list[str] = []
    if deal.amount is not None and (problem := _amount_problem(deal.amount)) is not None:
        problems.append(problem)
    for name in (*_ID_FIELDS, *_TEXT_FIELDS, "currency"):
        value = getattr(deal, name)
        if value is None:
            continue
        if (problem := text_problem(value)) is not None:
            problems.append(f"{name} {problem}")
        elif name in _ID_FIELDS and len(value) > MAX_ID_LENGTH:
            problems.append(f"{name} is longer than {MAX_ID_LENGTH} characters ({len(value)})")
        elif name == "currency" and len(value) > MAX_CURRENCY_LENGTH:
            problems.append(f"currency is longer than {MAX_CURRENCY_LENGTH} characters ({len(value)})")
    for visit in deal.stage_history:
        if (problem := text_problem(visit.stage)) is not None:
            problems.append(f"stage history: a stage {problem}")
            break
        if len(visit.stage) > MAX_ID_LENGTH:
            problems.append(f"stage history: a stage is longer than {MAX_ID_LENGTH} characters")
            break
    if deal.raw is not None and (problem := _raw_problem(deal.raw, "raw")) is not None:
        problems.append(problem)
    return problems


def validated(deal: Deal, where: str | None = None) -> Deal | Rejected:
    """``deal`` itself when both stores can hold it, else a ``Rejected`` naming every problem.

    Args:
        deal: the mapped deal.
        where: where it came from for people (``"line 17"``); default ``"deal <id>"``.
    """
    problems = problems_of(deal)
    if not problems:
        return deal
    external_id = deal.external_id
    if text_problem(external_id) is not None or len(external_id) > MAX_ID_LENGTH:
        external_id = ""
    shown = external_id or "with an unstorable id"
    return Rejected(where or f"deal {shown}", "; ".join(problems), external_id or None)


def storable(deal: Deal) -> Deal | Rejected:
    """``deal`` with every value the stores cannot hold emptied; for records that must not be lost.

    A deal the CRM reports as deleted still tells the store it is gone, even when
    one of its values is unstorable: that value is left empty instead. Only an
    unstorable id (nothing to record the deletion under) makes a ``Rejected``.
    """
    if not problems_of(deal):
        return deal
    changes: dict[str, Any] = {}
    if deal.amount is not None and _amount_problem(deal.amount) is not None:
        changes["amount"] = None
    for name in ("pipeline", "stage", "owner", *_TEXT_FIELDS, "currency"):
        value = getattr(deal, name)
        limit = MAX_CURRENCY_LENGTH if name == "currency" else MAX_ID_LENGTH
        if value is not None and (text_problem(value) is not None
                                  or (name not in _TEXT_FIELDS and len(value) > limit)):
            changes[name] = None
    history = tuple(v for v in deal.stage_history
                    if text_problem(v.stage) is None and len(v.stage) <= MAX_ID_LENGTH)
    if history != deal.stage_history:
        changes["stage_history"] = history
    if deal.raw is not None and _raw_problem(deal.raw, "raw") is not None:
        changes["raw"] = None
    cleaned = dataclasses.replace(deal, **changes)
    return cleaned if not problems_of(cleaned) else validated(cleaned)
