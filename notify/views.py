"""From the digest and reminder models to localised views, and from views to every format.

A view holds plain strings (already formatted with Babel and translated) and
links; the templates only arrange them, and escape them for their format (see
``notify.render``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sales_velocity.metrics.hygiene import BOTTLENECKS, RuleHit, StalledDeal
from sales_velocity.metrics.settings import WhatIfSettings
from sales_velocity.metrics.velocity import ScopeVelocity
from sales_velocity.notify.chart import sparkline
from sales_velocity.notify.digest import LINEAR_LEVER, Digest
from sales_velocity.notify.forecast_section import forecast_lines
from sales_velocity.notify.formatting import Formatter, Texts
from sales_velocity.notify.movement_section import movement_view
from sales_velocity.notify.reminders import ReminderMessage
from sales_velocity.notify.render import Format, Rendered, render_template, slack_blocks, texts

__all__ = [
    "digest_view", "direction", "reminders_view", "render_digest", "render_reminders", "rule_text",
    "trust_view",
]

FORMATS: dict[Format, str] = {"text": "txt", "markdown": "md", "slack": "slack", "html": "html"}


def _velocity_text(s: ScopeVelocity, t: Texts, f: Formatter, window_days: int) -> str:
    if s.velocity.value is not None:
        return t("per_day", amount=f.money(s.velocity.value))
    lv = s.levers
    if lv.won == 0:
        reason = t("reason_no_won", days=window_days)
    elif lv.avg_deal_value is None:
        reason = t("reason_no_value", days=window_days)
    elif not lv.cycle_days:
        reason = t("reason_no_cycle")
    else:
        reason = t("reason_other", reason=s.velocity.undefined_reason or "")
    return t("undefined", reason=reason)


def _cycle(value: Any, t: Texts, f: Formatter) -> str:
    if value is None:
        return t("not_known")
    return t("n_days_one" if value == 1 else "n_days_other", n=f.days(value))


def _row(s: ScopeVelocity, t: Texts, f: Formatter) -> list[str]:
    lv = s.levers
    return [
        s.label,
        f.money(s.velocity.value),
        f.number(lv.opportunities),
        f.rate(lv.win_rate),
        f.money(lv.avg_deal_value),
        _cycle(lv.cycle_days, t, f),
    ]


def rule_text(hit: RuleHit, deal: StalledDeal, t: Texts, f: Formatter) -> str:
    """One reason, e.g. ``45 days in Proposal (limit 30)`` / ``45 dager i «Tilbud» (grense 30)``."""
    if hit.rule == "stuck_in_stage":
        return t(
            "rule_stuck_in_stage",
            days=hit.days,
            limit=hit.limit,
            stage=deal.stage_name or deal.stage_id or t("this_stage"),
        )
    if hit.rule == "inactive":
        return t("rule_inactive", days=hit.days)
    if hit.rule == "repeatedly_pushed":
        return t("rule_repeatedly_pushed", times=hit.times, limit=hit.limit)
    if hit.rule in ("next_step_overdue", "close_date_passed") and hit.since is not None:
        return t(f"rule_{hit.rule}", date=f.short_date(hit.since))
    return t(f"rule_{hit.rule}")


def _deal(deal: StalledDeal, t: Texts, f: Formatter) -> dict[str, Any]:
    return {
        "title": deal.title or t("untitled"),
        "link": deal.link,
        "owner": deal.owner_name or deal.owner_email or deal.owner_id or t("no_owner"),
        "amount": f.money(deal.amount, deal.currency) if deal.amount is not None else "",
        "where": " / ".join(
            x for x in (deal.pipeline_name or deal.pipeline_id, deal.stage_name or deal.stage_id) if x
        ),
        "reasons": ", ".join(rule_text(h, deal, t, f) for h in deal.hits),
    }


def _what_if_label(lever: str, what_if: WhatIfSettings, t: Texts, f: Formatter) -> str:
    values = {
        "win_rate": {"points": f.number(what_if.win_rate_points, "#,##0.#")},
        "cycle_days": {"days": f.number(what_if.cycle_days, "#,##0.#")},
        "deal_value": {"pct": f.number(what_if.deal_value_pct, "#,##0.#")},
        "opportunities": {"pct": f.number(what_if.opportunities_pct, "#,##0.#")},
        LINEAR_LEVER: {"pct": f.number(what_if.deal_value_pct, "#,##0.#")},
    }
    key = "what_if_cycle" if lever == "cycle_days" else f"what_if_{lever}"
    return t(key, **values.get(lever, {}))


def direction(change: Decimal | None) -> str:
    """``up``, ``down`` or ``""`` (no change, or unknown) for a change as shown (whole units)."""
    if change is None:
        return ""
    whole = Decimal(change).quantize(Decimal(1), ROUND_HALF_UP)
    return "up" if whole > 0 else "down" if whole < 0 else ""


def _joined(items: list[str], t: Texts) -> str:
    """``a``, ``a and b``, ``a, b and c`` (``og`` in Norwegian)."""
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} {t('and')} {items[-1]}"


def trust_view(d: Digest, t: Texts, f: Formatter) -> dict[str, Any]:
    """The freshness line, the banner, the unknown-field lines and the footer, as localised strings.

    Every digest renderer (text, Markdown, HTML, Slack, and others) shows these
    the same way: ``banner`` on top, ``data_synced`` under the headline,
    ``unknown`` with the hygiene section, ``left_out`` in the footer.
    """
    zone = ZoneInfo(d.timezone)

    def when(value: Any) -> str:
        return t("never") if value is None else f.moment(value, zone)

    banner = []
    for s in d.freshness.banner:
        if s.failed and s.last_ok_at is None:
            banner.append(t("banner_failed_never", source=s.source, error=s.error))
        elif s.failed:
            banner.append(t("banner_failed", source=s.source, error=s.error, when=when(s.last_ok_at)))
        elif s.last_ok_at is None:
            banner.append(t("banner_never", source=s.source))
        else:
            banner.append(t("banner_stale", source=s.source, when=when(s.last_ok_at),
                            hours=d.freshness.max_age_hours))
    if d.freshness.failed_sources:
        banner.append(t("banner_held", sources=_joined(list(d.freshness.failed_sources), t)))
    synced = [t("source_when", source=s.source, when=when(s.last_ok_at)) for s in d.freshness.sources]
    unknown = []
    for u in d.coverage.unknown:
        names = [t(f"rule_name_{r}") for r in u.rules]
        rules = names[0] if len(names) == 1 else _joined([f"“{n}”" if t.locale == "en" else f"«{n}»"
                                                          for n in names], t)
        what = t(f"field_{u.fields[0]}")
        unknown.append(t.plural("unknown", len(names), what=what, source=u.source, rules=rules))
    lo = d.left_out
    left_out = [
        t.plural(key, n, currency=d.currency)
        for key, n in (("left_no_amount", lo.no_amount), ("left_no_rate", lo.no_rate),
                       ("left_no_close_date", lo.no_close_date), ("left_dated_by_update", lo.dated_by_update))
        if n
    ]
    if d.hygiene.open_deals == 0:
        no_stalled = t("no_open_deals")
    elif not d.trustworthy:
        no_stalled = t("no_stalled_unsure")
    elif d.coverage.unknown:
        no_stalled = t("no_stalled_partial")
    else:
        no_stalled = t("no_stalled")
    return {
        "banner": banner,
        "data_synced": t("data_synced", sources="; ".join(synced)) if synced else "",
        "unknown": unknown,
        "left_out": left_out,
        "no_stalled": no_stalled,
    }


def digest_view(
    d: Digest, locale: str, what_if: WhatIfSettings, *, chart_cid: str | None = None,
    movement_top: int = 10, movement_days: int = 7,
) -> dict[str, Any]:
    """The digest as localised strings for the templates."""
    t, f = texts(locale), Formatter(locale, d.currency)
    lv = d.overall.levers
    defined = d.overall.velocity.value is not None
    trends = []
    for trend in d.trends:
        if not trend.available:
            value = t("no_history")
        elif trend.change is None:
            value = t("was_undefined")
        else:
            pct = f" ({f.signed_percent(trend.change_pct)})" if trend.change_pct is not None else ""
            value = f.signed_money(trend.change) + pct
        if trend.available and trend.rebuilt:
            value += " " + t("rebuilt_mark")
        trends.append({"label": t("change_over", days=trend.days), "value": value,
                       "direction": direction(trend.change)})
    what_ifs = [
        t(
            "what_if_line",
            label=_what_if_label(w.lever, what_if, t, f),
            amount=f.money(w.velocity.value),
            change=f.signed_money(w.change),
        )
        for w in d.what_ifs
        if w.velocity.value is not None
    ]
    headers = [
        t("col_name"),
        t("col_velocity"),
        t("col_open"),
        t("col_win_rate"),
        t("col_value"),
        t("col_cycle"),
    ]
    waits: dict[str, list[str]] = {}
    for w in d.waits:
        waits.setdefault(w.pipeline_name, []).append(
            t(
                "wait_line",
                stage=w.stage_name,
                days=_cycle(w.median_days, t, f),
                deals=t.plural("n_deals", w.deals),
            )
        )
    h = d.hygiene
    off = d.coverage.rules_off
    every = {s.source for s in d.freshness.sources}
    bottlenecks = [
        t("bottleneck_unknown", label=t(b))
        if every and all(every <= set(off.get(r, ())) for r in BOTTLENECKS[b])
        else t(
            "bottleneck_line",
            label=t(b),
            share=f.share(h.share(b)),
            deals=t.plural("n_deals", h.by_bottleneck[b]),
        )
        for b in BOTTLENECKS
    ]
    date = f.date(d.as_of)
    subject = (
        t("subject", date=date, amount=f.money(d.overall.velocity.value))
        if defined
        else t("subject_undefined", date=date)
    )
    return {
        "t": t,
        "subject": subject,
        "title": t("velocity"),
        "date": date,
        "headline": _velocity_text(d.overall, t, f, d.window_days),
        "defined": defined,
        "levers": [
            (t("opportunities"), f.number(lv.opportunities)),
            (t("win_rate"), f.rate(lv.win_rate)),
            (t("avg_value"), f.money(lv.avg_deal_value)),
            (t("cycle"), _cycle(lv.cycle_days, t, f)),
        ],
        "trends": trends,
        "sparkline": sparkline(d.history),
        "history_note": t("history_note", n=d.rebuilt_days, days=len(d.history)) if d.rebuilt_days else "",
        "what_ifs": what_ifs,
        "headers": headers,
        "pipelines": [_row(s, t, f) for s in d.pipelines],
        "more_pipelines": t("more_rows", n=d.more_pipelines) if d.more_pipelines else "",
        "owners": [_row(s, t, f) for s in d.owners],
        "more_owners": t("more_rows", n=d.more_owners) if d.more_owners else "",
        "waits": list(waits.items()),
        "waits_note": t("waits_note", days=d.window_days),
        "hygiene_line": t("hygiene_line", stalled=h.stalled_deals, open=h.open_deals),
        "bottlenecks": bottlenecks,
        "worst": [_deal(s, t, f) for s in d.worst],
        "worst_headers": [t("col_deal"), t("col_owner"), t("col_amount"), t("col_stage"), t("col_reasons"),
                          t("col_link")],
        "formula": t("formula", days=d.window_days),
        "chart_cid": chart_cid,
        "movement": None if d.movement is None
        else movement_view(d.movement, t, f, days=movement_days, top=movement_top),
        "chart_alt": t("chart_alt", days=len(d.history)),
        "forecast": [] if d.forecast is None else forecast_lines(d.forecast, t, f),
        **trust_view(d, t, f),
    }


def reminders_view(
    message: ReminderMessage, locale: str, *, currency: str, remind_every_days: int
) -> dict[str, Any]:
    """One reminder message as localised strings for the templates."""
    t, f = texts(locale), Formatter(locale, currency)
    n = message.deal_count + message.more
    subject = t("reminders_fallback_subject", n=n) if message.fallback else t.plural("reminders_subject", n)
    owners = []
    for group in message.owners:
        first = group.deals[0]
        name = group.owner_name or group.email or first.owner_id or t("no_owner")
        owners.append(
            {
                "name": name,
                "greeting": t("greeting", name=name.split()[0] if name else ""),
                "deals": [_deal(deal, t, f) for deal in group.deals],
            }
        )
    return {
        "t": t,
        "subject": subject,
        "fallback": message.fallback,
        "intro": t("fallback_intro") if message.fallback else t("reminders_intro"),
        "owners": owners,
        "more": t.plural("reminders_more", message.more) if message.more else "",
        "open_in_crm": t("open_in_crm"),
        "footer": t("reminders_footer", days=remind_every_days),
    }


def _render(stem: str, view: dict[str, Any]) -> Rendered:
    out = {fmt: render_template(f"{stem}.{ext}.j2", fmt, **view) for fmt, ext in FORMATS.items()}
    return Rendered(
        view["subject"],
        out["text"],
        out["markdown"],
        out["html"],
        slack_blocks(view["subject"], out["slack"]),
    )


def render_digest(
    d: Digest, locale: str, what_if: WhatIfSettings, *, chart_cid: str | None = None,
    movement_top: int = 10, movement_days: int = 7,
) -> Rendered:
    """The digest in every format."""
    return _render("digest", digest_view(d, locale, what_if, chart_cid=chart_cid,
                                         movement_top=movement_top, movement_days=movement_days))


def render_reminders(
    message: ReminderMessage, locale: str, *, currency: str, remind_every_days: int
) -> Rendered:
    """One reminder message in every format."""
    return _render(
        "reminders", reminders_view(message, locale, currency=currency, remind_every_days=remind_every_days)
    )
