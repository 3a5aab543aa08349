"""Adaptive Cards 1.4 for Microsoft Teams: the digest and the reminders, from the localised views.

Teams takes posts through a Workflows webhook ("Post to a channel when a
webhook request is received") and renders Adaptive Cards up to version 1.4, in
the message envelope :func:`envelope`. The levers are a ``FactSet``, tables are
``ColumnSet`` rows, links are ``Action.OpenUrl``; the chart appears as an
``Image`` only where it has a URL (a queued PNG has none, so Teams shows the
trend as text). Every string comes from the view, which holds CRM-supplied text
(deal titles, owner and stage names): :func:`escape_card` makes it literal in the
card's markdown subset (``**bold**``, ``_italic_``, ``[links](url)``, lists).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CARD_VERSION", "CONTENT_TYPE", "digest_card", "envelope", "escape_card", "reminders_card"]

CARD_VERSION = "1.4"
CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
_SPECIAL = set("\\*_[]`~")
_LIST_START = re.compile(r"^(\s*)(\d+)\.(\s)")


def escape_card(value: str) -> str:
    """``value`` as literal text in a TextBlock: markdown characters backslash-escaped, one line."""
    flat = " ".join(value.split())
    out = "".join("\\" + c if c in _SPECIAL else c for c in flat)
    out = _LIST_START.sub(r"\1\2\\.\3", out)
    if out.startswith(("- ", "+ ", "#", ">")):
        out = "\\" + out
    return out


def _text(value: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": escape_card(value), "wrap": True, **style}


def _heading(value: str) -> dict[str, Any]:
    return _text(value, weight="Bolder", size="Medium", spacing="Medium", separator=True)


def _facts(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "FactSet",
        "facts": [{"title": escape_card(k), "value": escape_card(v)} for k, v in pairs],
    }


def _row(cells: list[str], *, header: bool = False, widths: list[str] | None = None) -> dict[str, Any]:
    columns = []
    for i, cell in enumerate(cells):
        block = _text(cell, weight="Bolder" if header else "Default", size="Small")
        if i > 0:
            block["horizontalAlignment"] = "Right"
        columns.append(
            {
                "type": "Column",
                "width": (widths or [])[i] if widths else ("stretch" if i == 0 else "auto"),
                "items": [block],
            }
        )
    return {"type": "ColumnSet", "columns": columns, "spacing": "Small" if not header else "Medium"}


def _table(headers: list[str], rows: list[list[str]]) -> list[dict[str, Any]]:
    widths = ["3", *(["2"] * (len(headers) - 1))]
    return [_row(headers, header=True, widths=widths), *(_row(r, widths=widths) for r in rows)]


def _open(url: str | None, title: str) -> dict[str, Any] | None:
    if not url or not url.startswith(("https://", "http://")):
        return None
    return {"type": "Action.OpenUrl", "url": url, "title": escape_card(title)}


def _deal_row(deal: dict[str, Any], cells: list[str], open_text: str) -> dict[str, Any]:
    row = _row(cells, widths=["3", "2", "2", "4"][: len(cells)])
    action = _open(deal.get("link"), open_text)
    if action is not None:
        row["selectAction"] = action
    return row


def _card(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": SCHEMA,
        "version": CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    if actions:
        card["actions"] = actions
    return card


def envelope(card: dict[str, Any]) -> dict[str, Any]:
    """The message a Workflows webhook takes: one attachment holding the card."""
    return {
        "type": "message",
        "attachments": [{"contentType": CONTENT_TYPE, "contentUrl": None, "content": card}],
    }


def _banner(lines: list[str]) -> list[dict[str, Any]]:
    if not lines:
        return []
    return [
        {
            "type": "Container",
            "style": "attention",
            "items": [_text(line, weight="Bolder", color="Attention") for line in lines],
        }
    ]


def digest_card(view: dict[str, Any], *, chart_url: str | None = None, scope: str = "") -> dict[str, Any]:
    """The digest card: banner, headline, levers, trend, tables, hygiene, worst deals, footer."""
    t = view["t"]
    body: list[dict[str, Any]] = [
        *_banner(view["banner"]),
        _text(view["subject"], size="Large", weight="Bolder"),
    ]
    if scope:
        body.append(_text(t("teams_scope", scope=scope), isSubtle=True, spacing="None"))
    body.append(_text(view["headline"], size="Medium"))
    body.append(_facts(list(view["levers"])))
    if view["data_synced"]:
        body.append(_text(view["data_synced"], isSubtle=True, size="Small"))
    body.append(_facts([(tr["label"], tr["value"]) for tr in view["trends"]]))
    if chart_url:
        body.append({"type": "Image", "url": chart_url, "altText": view["chart_alt"], "size": "Stretch"})
    if view["history_note"]:
        body.append(_text(view["history_note"], isSubtle=True, size="Small"))
    if view["what_ifs"]:
        body.append(_heading(t("what_if")))
        body += [_text("• " + line) for line in view["what_ifs"]]
    for heading, rows, more in (
        (t("per_pipeline"), view["pipelines"], view["more_pipelines"]),
        (t("per_owner"), view["owners"], view["more_owners"]),
    ):
        if rows:
            body.append(_heading(heading))
            body += _table(view["headers"], rows)
            if more:
                body.append(_text(more, isSubtle=True, size="Small"))
    body.append(_heading(t("where_deals_wait")))
    body.append(_text(view["waits_note"], isSubtle=True, size="Small"))
    if view["waits"]:
        for pipeline, lines in view["waits"]:
            body.append(_text(pipeline, weight="Bolder"))
            body += [_text("• " + line, spacing="None") for line in lines]
    else:
        body.append(_text(t("no_stage_history")))
    body.append(_heading(t("hygiene")))
    body.append(_text(view["hygiene_line"]))
    body += [_text("• " + line, spacing="None") for line in view["bottlenecks"]]
    body += [_text(line, isSubtle=True, size="Small") for line in view["unknown"]]
    body.append(_heading(t("worst")))
    if view["worst"]:
        open_text = t("open_in_crm")
        body.append(
            _row(
                [t("col_deal"), t("col_owner"), t("col_amount"), t("col_reasons")],
                header=True,
                widths=["3", "2", "2", "4"],
            )
        )
        body += [
            _deal_row(deal, [deal["title"], deal["owner"], deal["amount"], deal["reasons"]], open_text)
            for deal in view["worst"]
        ]
    else:
        body.append(_text(view["no_stalled"]))
    if view["left_out"]:
        body.append(_heading(t("left_out")))
        body += [_text("• " + line, size="Small") for line in view["left_out"]]
    body.append(_text(view["formula"], isSubtle=True, size="Small", separator=True))
    return _card(body, [])


def reminders_card(view: dict[str, Any]) -> dict[str, Any]:
    """A reminder card: per owner the deals, each row opening the deal in the CRM."""
    body: list[dict[str, Any]] = [_text(view["subject"], size="Large", weight="Bolder")]
    if view["fallback"]:
        body.append(_text(view["intro"]))
    for owner in view["owners"]:
        if view["fallback"]:
            body.append(_heading(owner["name"]))
        else:
            body.append(_text(f"{owner['greeting']} {view['intro']}"))
        body += [
            _deal_row(
                deal, [deal["title"], deal["where"], deal["amount"], deal["reasons"]], view["open_in_crm"]
            )
            for deal in owner["deals"]
        ]
    body.append(_text(view["footer"], isSubtle=True, size="Small", separator=True))
    actions = [
        a
        for a in (
            _open(d.get("link"), f"{view['open_in_crm']}: {d['title']}")
            for o in view["owners"]
            for d in o["deals"]
        )
        if a is not None
    ][:6]
    return _card(body, actions)
