"""What the Slack bot posts: the short digest, its thread reply, and reminders as DMs.

Rendered when a message is queued (into ``Message.formats["slack_bot"]``), from
the same localised view as every other format, so a retry posts exactly what
was queued. The short digest is the headline, the change over 7 and 30 days,
the biggest mover (the pipeline or owner whose velocity changed most over 7
days, from the stored snapshots) and the top stalled deals, under the freshness
banner; the thread reply is the whole digest (the webhook's Block Kit).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from sales_velocity.metrics.job import load_snapshots
from sales_velocity.notify.digest import Digest
from sales_velocity.notify.formatting import Formatter
from sales_velocity.notify.render import escape_for, render_template, slack_blocks, texts

__all__ = ["MOVER_DAYS", "Mover", "biggest_mover", "digest_slack_bot", "reminder_slack_bot"]

MOVER_DAYS = 7
SUMMARY_DEALS = 3
Mover = tuple[str, Decimal]


def biggest_mover(engine: sa.Engine, d: Digest, days: int = MOVER_DAYS) -> Mover | None:
    """The pipeline or owner of ``d`` whose velocity changed most since ``days`` ago (label, change).

    Only scopes with a defined velocity on both days count; ``None`` when none has.
    """
    then = d.as_of - dt.timedelta(days=days)
    best: Mover | None = None
    for s in (*d.pipelines, *d.owners):
        if s.velocity.value is None:
            continue
        before = load_snapshots(engine, s.scope, s.key, then, then, d.window_days)
        if not before or before[0][1] is None:
            continue
        change = s.velocity.value - before[0][1]
        if change and (best is None or abs(change) > abs(best[1])):
            best = (s.label, change)
    return best


def mover_text(mover: Mover | None, locale: str, currency: str, days: int = MOVER_DAYS) -> str:
    """``Biggest mover: Renewals +NOK 120 per day over 7 days``; empty without a mover."""
    if mover is None:
        return ""
    f = Formatter(locale, currency)
    return texts(locale)("mover_line", name=mover[0], change=f.signed_money(mover[1]), days=days)


def digest_slack_bot(view: dict[str, Any], details: dict[str, Any], mover: str) -> dict[str, Any]:
    """``{"summary": ..., "details": ..., "chart_title": ...}`` for ``chat.postMessage`` and the upload."""
    top = view["worst"][:SUMMARY_DEALS]
    mrkdwn = render_template("digest_summary.slack.j2", "slack", **{**view, "top": top, "mover": mover})
    return {
        "summary": slack_blocks(view["subject"], mrkdwn),
        "details": details,
        "chart_title": view["chart_alt"],
    }


def reminder_slack_bot(blocks: dict[str, Any], locale: str, owners: list[str]) -> dict[str, Any]:
    """The DM to the owner, and the same with one line on top when it goes to the fallback instead."""
    t = texts(locale)
    who = ", ".join(owners) or t("no_owner")
    line = {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": escape_for("slack", t("slack_forwarded", owner=who))}],
    }
    rest = blocks["blocks"]
    forwarded = {"text": blocks["text"], "blocks": [*rest[:1], line, *rest[1:]]}
    return {"dm": blocks, "forwarded": forwarded}
