from __future__ import annotations

import datetime as dt
import io

import pytest
import responses
import sqlalchemy as sa
from structlog.testing import capture_logs

from sales_velocity.notify.job import run_notify
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.sync.store import outbox_table, reminder_state_table
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW, update_deal
from tests.notify.smtp import free_port, smtp_server

HOOK = "https://hooks.example.com/velocity"


def settings(*channels, fallback_to="lead@example.com", remind_every_days=3):
    """Notifier settings with the given raw channel tables."""
    notify = {"locale": "en", "chart": False, "channels": list(channels)}
    if fallback_to:
        notify["fallback_to"] = fallback_to
    return load_notify_settings(notify, {"remind_every_days": remind_every_days}, {})


def email(port, send=("digest", "reminders")):
    """An e-mail channel table for the loopback server."""
    return {
        "kind": "email",
        "name": "mail",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "starttls": False,
        "from": "velocity@example.com",
        "to": ["team@example.com"],
        "send": list(send),
        "timeout_seconds": 2,
    }


def run(engine, notify, reminders, day=0, **kw):
    """run_notify on AS_OF + day, at 07:00 UTC."""
    as_of = AS_OF + dt.timedelta(days=day)
    now = dt.datetime.combine(as_of, dt.time(7), tzinfo=dt.UTC)
    return run_notify(engine, notify, reminders, METRICS, as_of=as_of, now=now, out=io.StringIO(), **kw)


def statuses(engine):
    """(channel, dedupe key prefix, status) of every outbox row."""
    box = outbox_table.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(box.channel, box.dedupe_key, box.status).order_by(box.id)).all()
    return [(c, k.rsplit(":", 1)[0] if k.startswith("reminders") else k, s) for c, k, s in rows]


class TestEmailDelivery:
    def test_digest_and_one_reminder_per_owner(self, seeded):
        """One digest to `to`, one reminder to the owner, the address-less owner's deals to the fallback."""
        with smtp_server() as (inbox, port):
            result = run(seeded, *settings(email(port)))
        assert not result.failed
        assert len(result.sent) == 3
        got = {tuple(r.rcpt_tos): r.message["Subject"] for r in inbox.received}
        assert got == {
            ("team@example.com",): "Sales velocity Nov 26, 2026: NOK 3,750 per day",
            ("kari@example.com",): "2 deals need your attention",  # one of them repeatedly pushed
            ("lead@example.com",): "Stalled deals of sellers without an e-mail address (1)",
        }
        fallback = next(r for r in inbox.received if r.rcpt_tos == ["lead@example.com"]).message
        plain = fallback.get_body(("plain",))
        assert plain is not None
        assert "Ola <Hansen>" in plain.get_content()

    def test_no_fallback_skips_with_reason(self, seeded):
        """Without fallback_to the address-less owner's reminder is skipped on e-mail, saying whose."""
        with smtp_server() as (inbox, port):
            result = run(seeded, *settings(email(port, ["reminders"]), fallback_to=None))
        assert len(inbox.received) == 1
        [(_, key, reason)] = result.skipped
        assert key.startswith("reminders:2026-11-26:fallback:")
        assert "Ola <Hansen>" in reason


class TestReminderDedupe:
    def test_day1_not_day2_again_after_remind_every_days(self, seeded):
        """A reminder goes on day 1, not on day 2, again on day 1 + remind_every_days."""
        notify, reminders = settings({"kind": "stdout", "name": "out", "send": ["reminders"]})
        sent = [len(run(seeded, notify, reminders, day).sent) for day in range(4)]
        assert sent == [2, 0, 0, 2]

    def test_same_day_rerun_sends_nothing(self, seeded):
        """A second run the same day queues and sends nothing again."""
        notify, reminders = settings({"kind": "stdout", "name": "out", "send": ["digest", "reminders"]})
        assert len(run(seeded, notify, reminders).sent) == 3
        again = run(seeded, notify, reminders)
        assert again.sent == []
        assert again.failed == []

    def test_resolved_deal_stops_and_a_new_rule_is_sent_alone(self, seeded):
        """A fixed deal is marked resolved and not reminded; a rule that starts holding goes out at once."""
        notify, reminders = settings({"kind": "stdout", "name": "out", "send": ["reminders"]})
        run(seeded, notify, reminders)
        update_deal(seeded, "a", next_step="Call Monday")
        update_deal(seeded, "c", amount=None)
        out = run(seeded, notify, reminders, 1)
        assert [k.split(":")[2] for _, k in out.sent] == ["demo/o1"]
        with seeded.connect() as conn:
            rows = conn.execute(sa.select(reminder_state_table))
            states = {(r.external_id, r.rule): r.resolved_at for r in rows}
        assert states[("a", "no_next_step")] is not None
        assert states[("c", "missing_amount")] is None
        assert run(seeded, notify, reminders, 2).sent == []


class TestFaults:
    def test_smtp_down_then_delivered_once(self, seeded):
        """SMTP down on run 1 keeps the messages pending; run 2 delivers each exactly once."""
        port = free_port()
        notify, reminders = settings(email(port))
        first = run(seeded, notify, reminders)
        assert len(first.failed) == 1
        assert len(first.skipped) == 2
        assert first.sent == []
        assert {s for _, _, s in statuses(seeded)} == {"pending"}
        with smtp_server(port) as (inbox, _):
            second = run(seeded, notify, reminders)
            third = run(seeded, notify, reminders)
        assert len(second.sent) == 3
        assert third.sent == []
        assert len(inbox.received) == 3

    @responses.activate
    def test_a_down_channel_does_not_block_the_others(self, seeded):
        """The webhook failing with 503 leaves the e-mail channel delivering; the run reports the failure."""
        responses.post(HOOK, status=503)
        hook = {"kind": "webhook", "name": "hook", "url": HOOK, "max_attempts": 1}
        with smtp_server() as (inbox, port), capture_logs() as logs:
            result = run(seeded, *settings(hook, email(port)))
        assert [c for c, _, _ in result.failed] == ["hook"]
        assert len(inbox.received) == 3
        summary = {e["channel"]: e for e in logs if e["event"] == "notify.channel"}
        assert (summary["hook"]["failed"], summary["mail"]["sent"]) == (1, 3)

    def test_interrupted_send_is_not_repeated(self, seeded):
        """A row left `sending` by a dead run becomes `unknown` and is not sent again."""
        notify, reminders = settings({"kind": "stdout", "name": "out", "send": ["digest"]})
        out = io.StringIO()
        run_notify(seeded, notify, reminders, METRICS, as_of=AS_OF, now=NOW, out=out)
        with seeded.begin() as conn:
            conn.execute(sa.update(outbox_table).values(status="sending"))
        with capture_logs() as logs:
            result = run(seeded, notify, reminders)
        assert result.channels[0].unknown == ["digest:2026-11-26"]
        assert result.sent == []
        assert statuses(seeded) == [("out", "digest:2026-11-26", "unknown")]
        assert any(e["event"] == "notify.outbox.interrupted" for e in logs)

    def test_old_pending_messages_expire(self, seeded):
        """A message still pending after expire_after_days is dropped, not delivered late."""
        notify, reminders = settings(email(free_port(), ["digest"]))
        run(seeded, notify, reminders)
        with smtp_server(notify.channels[0].settings.smtp_port) as (inbox, _):
            result = run(seeded, notify, reminders, day=8)
        assert [k for _, k, _ in result.skipped] == ["digest:2026-11-26"]
        assert [r.message["Subject"][:24] for r in inbox.received] == ["Sales velocity Dec 4, 20"]


class TestDryRun:
    def test_prints_and_records_nothing(self, seeded):
        """--dry-run prints what would be sent and writes neither the outbox nor reminder state."""
        notify, reminders = settings({"kind": "stdout", "name": "out", "send": ["digest", "reminders"]})
        out = io.StringIO()
        result = run_notify(seeded, notify, reminders, METRICS, as_of=AS_OF, now=NOW, out=out, dry_run=True)
        assert result.dry_run
        assert result.sent == []
        assert len(result.skipped) == 3
        assert "[dry run] would send digest:2026-11-26 on out (stdout)" in out.getvalue()
        with seeded.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar() == 0
            assert conn.execute(sa.select(sa.func.count()).select_from(reminder_state_table)).scalar() == 0

    @pytest.mark.parametrize("only", ["digest", "reminders"])
    def test_only_one_kind(self, seeded, only):
        """--only limits the run to the digest or the reminders."""
        notify, reminders = settings({"kind": "stdout", "name": "out", "send": ["digest", "reminders"]})
        result = run(seeded, notify, reminders, only=only)
        assert {k.split(":")[0] for _, k in result.sent} == {only}
