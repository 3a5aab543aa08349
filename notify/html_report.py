"""``velocity report --format html``: one self-contained HTML page for people who would rather look.

The page holds everything it shows: styles and a ten-line sorting script
inline, charts as inline SVG (``notify.svg``), no font, image or script from
anywhere, so it opens from disk, as an e-mail attachment or from a bucket. It
shows, in the configured locale (``[notify] locale``):

* the freshness line and the banner of a failed or stale source (the digest's
  ``trust_view``), on top;
* velocity with its four levers and the change since 7 and 30 days, rises and
  falls coloured and marked ``▲``/``▼`` with their sign;
* the trend of velocity and of each lever over the window, from the stored
  daily snapshots of "all";
* per pipeline and per owner tables (sortable by any column with the inline
  script; ordered by velocity without it);
* where deals wait, as bars of median days per stage;
* pipeline hygiene: the bottlenecks and the worst stalled deals;
* the movement of the last ``[notify] movement_days`` days as a bridge chart
  from the open pipeline at the start to the end;
* what the levers left out, and the formula.

The numbers come from the same model as the digest (``notify.digest``), so the
report and the e-mail never disagree.

**Extra sections** (the hook for the forecast, and anything else later): the
builder takes ``extra_sections``, each a :class:`ReportSection` with a title and
a body of ready, escaped HTML, placed ``after`` one of :data:`ANCHORS`. A
forecast section is added by building its body and passing it in; nothing
else changes.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2
import sqlalchemy as sa
from markupsafe import Markup

from sales_velocity.kernel.errors import UsageError
from sales_velocity.metrics.freshness import DEFAULT_MAX_AGE_HOURS
from sales_velocity.metrics.hygiene import HygieneSettings
from sales_velocity.metrics.movement import BRIDGE_IN, BRIDGE_OUT, Movement
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.metrics.velocity import ScopeVelocity
from sales_velocity.notify import svg
from sales_velocity.notify.digest import Digest, build_digest
from sales_velocity.notify.formatting import Formatter, Texts
from sales_velocity.notify.render import texts
from sales_velocity.notify.views import digest_view
from sales_velocity.sync.store import snapshots_table

__all__ = ["ANCHORS", "LeverDay", "ReportSection", "build_html_report", "lever_history", "render_html_report",
           "write_output"]

Anchor = Literal["trend", "scopes", "waits", "hygiene", "movement", "end"]
ANCHORS: tuple[Anchor, ...] = ("trend", "scopes", "waits", "hygiene", "movement", "end")
"""Where an extra section can go: after the named section (``end``: before the footer)."""


@dataclass(frozen=True, slots=True)
class ReportSection:
    """A section another module adds to the report (the forecast, for one).

    ``body`` is HTML the caller has escaped already (build it with a Jinja
    template with autoescape, or :func:`markupsafe.escape`); ``key`` becomes the
    section's ``id`` (a link target: ``report.html#forecast``).
    """

    key: str
    title: str
    body: str
    after: Anchor = "trend"


@dataclass(frozen=True, slots=True)
class LeverDay:
    """The stored levers and velocity of "all" on one day."""

    day: dt.date
    opportunities: int
    win_rate: Decimal | None
    avg_deal_value: Decimal | None
    cycle_days: Decimal | None
    velocity: Decimal | None


def lever_history(engine: sa.Engine, since: dt.date, until: dt.date, window_days: int) -> list[LeverDay]:
    """The daily snapshots of "all" in ``[since, until]`` (days without one are missing)."""
    s = snapshots_table.c
    query = (
        sa.select(s.as_of, s.opportunities, s.win_rate, s.avg_deal_value, s.cycle_days, s.velocity)
        .where(s.scope == "all", s.key == "", s.window_days == window_days, s.as_of >= since,
               s.as_of <= until)
        .order_by(s.as_of)
    )
    with engine.connect() as conn:
        return [LeverDay(r.as_of, r.opportunities, r.win_rate, r.avg_deal_value, r.cycle_days, r.velocity)
                for r in conn.execute(query)]


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("sales_velocity.notify", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _days(value: Decimal | None, t: Texts, f: Formatter) -> str:
    if value is None:
        return t("not_known")
    return t("n_days_one" if value == 1 else "n_days_other", n=f.days(value))


def _sort(value: Decimal | int | None) -> str:
    """A cell's sort key: the exact number, or empty (sorted last)."""
    return "" if value is None else format(Decimal(value), "f")


def _scope_rows(scopes: Sequence[ScopeVelocity], t: Texts, f: Formatter) -> list[list[tuple[str, str]]]:
    """Each scope as ``(text, sort key)`` cells: name, velocity, open, win rate, value, cycle."""
    rows = []
    for s in scopes:
        lv = s.levers
        rows.append([
            (s.label, s.label.casefold()),
            (f.money(s.velocity.value) if s.velocity.value is not None else t("not_known"),
             _sort(s.velocity.value)),
            (f.number(lv.opportunities), _sort(lv.opportunities)),
            (f.rate(lv.win_rate), _sort(lv.win_rate)),
            (f.money(lv.avg_deal_value), _sort(lv.avg_deal_value)),
            (_days(lv.cycle_days, t, f), _sort(lv.cycle_days)),
        ])
    return rows


def _trend_charts(history: Sequence[LeverDay], t: Texts, f: Formatter) -> list[tuple[str, Markup]]:
    """The velocity chart and one chart per lever, ``(title, svg)``; empty with under two days."""
    if sum(d.velocity is not None for d in history) < 2:
        return []
    day_text = f.short_date
    Series = list[tuple[dt.date, Decimal | None]]
    charts: list[tuple[str, Series, Callable[[Decimal], str]]] = [
        (t("col_velocity"), [(d.day, d.velocity) for d in history], f.money),
        (t("opportunities"), [(d.day, Decimal(d.opportunities)) for d in history], f.number),
        (t("win_rate"), [(d.day, d.win_rate) for d in history], f.share),
        (t("avg_value"), [(d.day, d.avg_deal_value) for d in history], f.money),
        (t("cycle"), [(d.day, d.cycle_days) for d in history], f.days),
    ]
    out = []
    for i, (title, points, fmt) in enumerate(charts):
        main = i == 0
        chart = svg.line(points, label=title, value_text=fmt, day_text=day_text,
                         width=400 if main else 360, height=190 if main else 170,
                         max_width=560 if main else 520)
        out.append((title, Markup(chart)))  # noqa: S704 - svg escapes every label it prints
    return out


def _wait_charts(d: Digest, t: Texts, f: Formatter) -> list[tuple[str, Markup]]:
    by_pipeline: dict[str, list[svg.Bar]] = {}
    for w in d.waits:
        by_pipeline.setdefault(w.pipeline_name, []).append(
            svg.Bar(w.stage_name, w.median_days or Decimal(0), _days(w.median_days, t, f)))
    return [(name, Markup(svg.bars(items, label=f"{t('report_waits_chart')}: {name}")))  # noqa: S704
            for name, items in by_pipeline.items()]


def _bridge_chart(m: Movement, t: Texts, f: Formatter) -> Markup:
    steps = [svg.Step(t("movement_open_start"), m.open_start.value, f.money(m.open_start.value), total=True)]
    for name in (*BRIDGE_IN, *BRIDGE_OUT):
        tally = m.classes[name]
        if not tally.count:
            continue
        rise = name in BRIDGE_IN
        value = tally.value if rise else -tally.value
        text = ("+" if rise else "−") + f.money(abs(tally.value))
        steps.append(svg.Step(t(f"movement_{name}"), value, text))
    steps.append(svg.Step(t("movement_open_end"), m.open_end.value, f.money(m.open_end.value), total=True))
    return Markup(svg.bridge(steps, label=t("report_movement_chart")))  # noqa: S704 - svg escapes labels


def build_html_report(
    engine: sa.Engine,
    metrics: MetricsSettings,
    hygiene: HygieneSettings,
    *,
    as_of: dt.date,
    now: dt.datetime,
    locale: str = "en",
    sources: Sequence[str] | None = None,
    max_data_age_hours: int = DEFAULT_MAX_AGE_HOURS,
    movement_days: int = 7,
    top_deals: int = 10,
    extra_sections: Sequence[ReportSection] = (),
) -> str:
    """The report page for ``as_of`` (read-only: it writes nothing to the store).

    Args:
        engine: The store.
        metrics: The ``[metrics]`` settings (window, zone, what-ifs).
        hygiene: The stalled-deal rules.
        as_of: The report's day.
        now: The moment it is made (freshness and "stalled" are measured from it).
        locale: ``en`` or ``nb``.
        sources: The configured source names (their freshness is shown).
        max_data_age_hours: A last good sync older than this is stale.
        movement_days: Days the movement bridge covers, ending with ``as_of``.
        top_deals: Worst stalled deals listed.
        extra_sections: More sections (the forecast), see :class:`ReportSection`.
    """
    d = build_digest(engine, metrics, hygiene, as_of=as_of, now=now, top_deals=top_deals,
                     top_scopes=10_000, chart_days=metrics.window_days, movement_days=movement_days,
                     sources=sources, max_data_age_hours=max_data_age_hours)
    since = as_of - dt.timedelta(days=metrics.window_days - 1)
    history = lever_history(engine, since, as_of, metrics.window_days)
    return render_html_report(d, history, locale=locale, metrics=metrics, now=now,
                              movement_days=movement_days, extra_sections=extra_sections)


def render_html_report(
    d: Digest,
    history: Sequence[LeverDay],
    *,
    locale: str,
    metrics: MetricsSettings,
    now: dt.datetime,
    movement_days: int = 7,
    extra_sections: Sequence[ReportSection] = (),
) -> str:
    """The page for a digest model and its lever history (see :func:`build_html_report`)."""
    for section in extra_sections:
        if section.after not in ANCHORS:
            raise ValueError(f"report section {section.key!r}: after={section.after!r}; use one of "
                             f"{', '.join(ANCHORS)}")
    t, f = texts(locale), Formatter(locale, d.currency)
    view: dict[str, Any] = digest_view(d, locale, metrics.what_if, movement_days=movement_days)
    zone = ZoneInfo(d.timezone)
    extra: dict[str, list[dict[str, Any]]] = {a: [] for a in ANCHORS}
    for section in extra_sections:
        extra[section.after].append({"key": section.key, "title": section.title,
                                     "body": Markup(section.body)})  # noqa: S704 - the caller escaped it
    view.update(
        report_title=t("report_title"),
        trend_charts=_trend_charts(history, t, f),
        trend_note=t("report_trend_note", days=d.window_days),
        pipeline_rows=_scope_rows(d.pipelines, t, f),
        owner_rows=_scope_rows(d.owners, t, f),
        wait_charts=_wait_charts(d, t, f),
        bridge_chart=_bridge_chart(d.movement, t, f) if d.movement is not None else None,
        generated=t("report_generated", when=f.moment(now, zone), zone=d.timezone),
        extra=extra,
    )
    return _environment().get_template("report.html.j2").render(**view)


def write_output(path: str, text: str) -> Path:
    """Write ``text`` to ``path`` (UTF-8) atomically; a path that cannot be written is a ``UsageError``."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"--output {path}: cannot write the report: {exc.strerror or exc}") from None
    return target
