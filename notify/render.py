"""Render the digest and the reminders: plain text, Markdown, Slack Block Kit and HTML e-mail.

Every format comes from the same view (``notify.views``):
plain strings already localised with Babel (``11 111 kr`` in ``nb``, ``NOK 11,111``
in ``en``) and the texts in ``notify/locales/<locale>.toml``. Jinja2 templates in
``notify/templates/`` only lay them out.

Everything a template prints is escaped for its format unless it is a :class:`Raw`
string, so a deal titled ``<!channel> *x* <script>`` arrives as text:

* HTML: Jinja autoescape;
* Markdown: a backslash before every character with a meaning (CommonMark
  allows it before any ASCII punctuation);
* Slack mrkdwn: ``&``, ``<``, ``>`` as entities (no ``<!channel>`` mention,
  no link), and ``*``, ``_``, ``~``, `````` replaced by look-alikes (``∗ ˍ ∼ ˋ``),
  since mrkdwn has no escape character;
* plain text: as is (newlines in names are flattened everywhere).
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import jinja2

from sales_velocity.notify.formatting import Texts

__all__ = ["Format", "Raw", "Rendered", "escape_for", "pad_table", "render_template", "slack_blocks", "texts"]

Format = Literal["text", "markdown", "slack", "html"]
SECTION_BREAK = "%%"
SLACK_SECTION_LIMIT = 3000

_MARKDOWN_SPECIAL = set("\\`*_[]<>|#~&")
_SLACK_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_SLACK_LOOKALIKES = {"*": "∗", "_": "ˍ", "~": "∼", "`": "ˋ"}


class Raw(str):
    """A string a template prints as is (already safe for its format)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Rendered:
    """One message in every format."""

    subject: str
    text: str
    markdown: str
    html: str
    slack: dict[str, Any]


def _flatten(value: str) -> str:
    return " ".join(value.split()) if ("\n" in value or "\r" in value or "\t" in value) else value


def escape_for(fmt: Format, value: str) -> str:
    """Escape one user-supplied string for ``fmt`` (HTML is left to Jinja's autoescape)."""
    value = _flatten(value)
    if fmt == "markdown":
        return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in value)
    if fmt == "slack":
        return "".join(_SLACK_ENTITIES.get(c) or _SLACK_LOOKALIKES.get(c) or c for c in value)
    return value


def _url_for(fmt: Format, url: str | None) -> Raw:
    """A link target, safe inside this format's link syntax."""
    if not url:
        return Raw("")
    if fmt == "markdown":
        return Raw(
            url.replace(" ", "%20")
            .replace("(", "%28")
            .replace(")", "%29")
            .replace("<", "%3C")
            .replace(">", "%3E")
        )
    if fmt == "slack":
        return Raw(url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C"))
    return Raw(url)


def _finalize_for(fmt: Format) -> Any:
    def finalize(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, Raw) or not isinstance(value, str):
            return value
        return escape_for(fmt, value)

    return finalize


@functools.cache
def environment(fmt: Format) -> jinja2.Environment:
    """The Jinja environment of one format (cached)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__ or "sales_velocity.notify", "templates"),
        autoescape=fmt == "html",  # noqa: S701 - the other formats escape in `finalize` (see above)
        finalize=None if fmt == "html" else _finalize_for(fmt),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["url"] = functools.partial(_url_for, fmt)
    env.globals["pad_table"] = pad_table
    return env


def pad_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Plain-text table lines: first column left-aligned, the others right-aligned."""
    table = [headers, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_template(name: str, fmt: Format, **context: Any) -> str:
    """Render ``notify/templates/<name>`` for ``fmt`` with ``context``."""
    return environment(fmt).get_template(name).render(**context)


def slack_blocks(subject: str, mrkdwn: str) -> dict[str, Any]:
    """A Block Kit payload: a header, then one section per ``%%``-separated part of ``mrkdwn``."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": subject[:150], "emoji": False}},
    ]
    parts = [p.strip("\n") for p in mrkdwn.split(f"\n{SECTION_BREAK}\n")]
    for part in parts:
        if not part.strip():
            continue
        if part.startswith("_") and part.endswith("_") and "\n" not in part:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": part}]})
            continue
        if len(part) > SLACK_SECTION_LIMIT:
            part = part[: SLACK_SECTION_LIMIT - 1] + "…"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": part}})
    return {"text": escape_for("slack", subject), "blocks": blocks}


@functools.cache
def texts(locale: str) -> Texts:
    """The message catalog of ``locale`` (``notify/locales/<locale>.toml``)."""
    package = resources.files(__package__ or "sales_velocity.notify")
    data = package.joinpath("locales", f"{locale}.toml").read_text(encoding="utf-8")
    return Texts(locale, tomllib.loads(data))
