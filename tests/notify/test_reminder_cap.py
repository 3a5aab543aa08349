"""Deals per reminder message are capped: top N and "and M more" (issue 14, item 11)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from sales_velocity.notify.job import build_messages
from sales_velocity.notify.reminders import plan_reminders, record_plan
from sales_velocity.notify.settings import load_notify_settings
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW, add_deal
from tests.notify.test_render import golden


def owner_reminder(engine, locale: str, cap: int | None):
    """Kari's reminder message on AS_OF with ``cap`` deals per message (None: the default)."""
    raw = {"locale": locale, "chart": False, "fallback_to": "lead@example.com",
           "channels": [{"kind": "stdout", "name": "out", "send": ["reminders"]}]}
    if cap is not None:
        raw["max_deals_per_reminder"] = cap
    notify, reminders = load_notify_settings(raw, {}, {})
    found, _ = build_messages(engine, notify, reminders, METRICS, as_of=AS_OF, now=NOW)
    return next(m for m in found if ":demo/o1:" in m.key)


def more_deals(engine, n: int = 4) -> None:
    """``n`` more stalled deals (no next step) for Kari, amounts falling."""
    for i in range(n):
        add_deal(engine, f"k{i}", title=f"Kari deal {i}", next_step=None, next_activity_at=None,
                 amount=10_000 * (n - i))


@pytest.mark.parametrize("locale", ["en", "nb"])
def test_capped_reminder_golden(seeded_sqlite, locale):
    """Two deals shown, "and 4 more" in every format; the subject counts all six."""
    more_deals(seeded_sqlite)
    message = owner_reminder(seeded_sqlite, locale, cap=2)
    golden(f"reminders_capped_{locale}.txt", message.text)
    golden(f"reminders_capped_{locale}.md", message.markdown)
    slack = json.dumps(message.slack, ensure_ascii=False, indent=2) + "\n"
    golden(f"reminders_capped_{locale}.slack.json", slack)
    assert "6" in message.subject
    assert "<p>… " in message.html.split("</ul>")[-1]
    assert " 4 " in message.html.split("</ul>")[-1]


def test_cap_keeps_the_first_n_in_order_and_the_rest_stay_due(seeded_sqlite):
    """The capped message lists the uncapped message's first N deals; the others come the next day."""
    more_deals(seeded_sqlite)
    everything = owner_reminder(seeded_sqlite, "en", cap=1000)
    titles = [d["title"] for o in everything.data["owners"] for d in o["deals"]]
    assert len(titles) == 6  # the seeded two and the four added
    capped = owner_reminder(seeded_sqlite, "en", cap=2)
    assert [d["title"] for o in capped.data["owners"] for d in o["deals"]] == titles[:2]
    assert capped.data["more"] == 4
    assert "and 4 more deals" in capped.text
    for title in titles[2:]:
        assert title not in capped.text

    notify, reminders = load_notify_settings({"max_deals_per_reminder": 2}, {}, {})
    zone = METRICS.zone
    today = plan_reminders(seeded_sqlite, reminders, fallback_to=None, as_of=AS_OF, now=NOW, zone=zone,
                           max_deals=notify.max_deals_per_reminder)
    with seeded_sqlite.begin() as conn:
        record_plan(conn, today, NOW)
    tomorrow = plan_reminders(seeded_sqlite, reminders, fallback_to=None, as_of=AS_OF + dt.timedelta(days=1),
                              now=NOW + dt.timedelta(days=1), zone=zone, max_deals=2)
    kari = next(m for m in tomorrow.messages if not m.fallback)
    assert [d.title for o in kari.owners for d in o.deals] == titles[2:4]
    assert kari.more == 2


def test_default_cap_is_25():
    """Without a setting, a reminder lists at most 25 deals."""
    notify, _ = load_notify_settings({}, {}, {})
    assert notify.max_deals_per_reminder == 25
