"""A poison e-mail address fails alone; the digest is never behind a reminder (issue 14, item 6)."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.kernel.addresses import address_problem
from sales_velocity.notify import outbox
from sales_velocity.notify.job import run_notify
from sales_velocity.notify.message import Message, MessageKind
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.sync.store import make_engine, outbox_table, owners_table
from tests.notify.conftest import METRICS
from tests.notify.factory import AS_OF, NOW, add_deal, add_owner
from tests.notify.smtp import smtp_server

POISON = "mallory@example.com\r\nBcc: everyone@example.com"


def settings(port: int):
    """One e-mail channel for digest and reminders, a fallback address."""
    channel = {"kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": port,
               "starttls": False, "from": "velocity@example.com", "to": ["team@example.com"],
               "send": ["digest", "reminders"], "timeout_seconds": 5}
    return load_notify_settings({"locale": "en", "chart": False, "fallback_to": "lead@example.com",
                                 "channels": [channel]}, {}, {})


def run(engine, port: int, day: int = 0):
    """run_notify on AS_OF + day."""
    notify, reminders = settings(port)
    as_of = AS_OF + dt.timedelta(days=day)
    now = dt.datetime.combine(as_of, dt.time(7), tzinfo=dt.UTC)
    return run_notify(engine, notify, reminders, METRICS, as_of=as_of, now=now, out=io.StringIO())


def stalled(engine, deal: str, owner: str) -> None:
    """A deal of ``owner`` without a next step (the no_next_step rule holds)."""
    add_deal(engine, deal, owner_id=owner, next_step=None, next_activity_at=None, title=f"Deal {deal}")


class TestPoisonOwnerAddress:
    def test_crlf_owner_among_good_owners(self, seeded):
        """An owner e-mail with CR/LF (stored by an older version): digest and every reminder go out."""
        add_owner(seeded, "o3", "Mallory", POISON)
        add_owner(seeded, "o4", "Per Persen", "per@example.com")
        stalled(seeded, "m1", "o3")
        stalled(seeded, "p1", "o4")
        with smtp_server() as (inbox, port):
            result = run(seeded, port)
        assert result.failed == []
        to = sorted(tuple(r.rcpt_tos) for r in inbox.received)
        assert to == [("kari@example.com",), ("lead@example.com",), ("per@example.com",),
                      ("team@example.com",)]
        assert all("Bcc" not in r.message and "everyone" not in str(r.message["To"]) for r in inbox.received)
        fallback = next(r for r in inbox.received if r.rcpt_tos == ["lead@example.com"])
        plain = fallback.message.get_body(("plain",))
        assert plain is not None
        assert "Mallory" in plain.get_content()

    def test_unbuildable_row_fails_alone_and_digests_come_first(self, seeded):
        """A queued reminder that cannot be built fails for good; the channel stays up, digests go first."""
        earlier = NOW - dt.timedelta(hours=1)  # queued today by an earlier run (older days are superseded)
        poison = Message(kind="reminders", key=f"reminders:{AS_OF}:demo/o3:abc", subject="Deals",
                         text="t", markdown="m", html="<p>h</p>", slack={"text": "t"}, data={},
                         recipient=POISON)
        with seeded.begin() as conn:
            outbox.enqueue(conn, "mail", poison, earlier)
        with smtp_server() as (inbox, port):
            first = run(seeded, port)
            second = run(seeded, port, day=1)
        assert [k for _, k, _ in first.failed] == [poison.key]
        assert "line break" in first.failed[0][2]
        assert first.skipped == []
        kinds = [r.message["Subject"].startswith("Sales velocity") for r in inbox.received]
        assert kinds[0], "the digest goes before the older reminder rows"
        assert len(first.sent) == 3
        assert second.failed == []  # not retried: it can never go out as it is
        assert ("mail", "digest:2026-11-27") in second.sent
        box = outbox_table.c
        with seeded.connect() as conn:
            row = conn.execute(sa.select(box.status, box.attempts, box.last_error)
                               .where(box.dedupe_key == poison.key)).one()
        assert (row.status, row.attempts) == ("failed", 1)
        assert "cannot be used" in row.last_error

    def test_pending_lists_digests_before_older_reminders(self, seeded):
        """The queue order is digests first, then the rest oldest first."""
        with seeded.begin() as conn:
            queued: list[tuple[MessageKind, str]] = [("reminders", "r:1"), ("digest", "digest:1"),
                                                     ("reminders", "r:2"), ("digest", "digest:2")]
            for n, (kind, key) in enumerate(queued):
                message = Message(kind=kind, key=key, subject="s", text="t", markdown="m", html="h",
                                  slack={}, data={})
                outbox.enqueue(conn, "mail", message, NOW + dt.timedelta(minutes=n))
        keys = [r.dedupe_key for r in outbox.pending(seeded, "mail", ("digest", "reminders"))]
        assert keys == ["digest:1", "digest:2", "r:1", "r:2"]


@pytest.mark.parametrize(("value", "ok"), [
    ("kari@example.com", True),
    ("root@localhost", True),
    ("a@b.com, c@d.com", False),
    ("a@b.com\r\nBcc: c@d.com", False),
    ("a@b.com\n", False),
    ("Kari <a@b.com>", False),
    ("a b@c.com", False),
    ("a@", False),
    ("@b.com", False),
    ("a@b@c.com", False),
    ("ola@bøk.no", False),
    ("", False),
])
def test_address_problem(value, ok):
    """One bare, parseable address with no CR/LF passes; anything else says why not."""
    assert (address_problem(value) is None) == ok


def test_owner_address_with_crlf_is_not_stored_by_the_sync(tmp_path: Path, capsys):
    """A CSV owner e-mail with CR/LF syncs as no address (with a warning); the good owners keep theirs."""
    from tests.test_cli import velocity

    (tmp_path / "deals.csv").write_bytes(
        b"id,title,amount,currency,stage,status,owner,owner_email,created_at\r\n"
        b"1,One,100,NOK,Lead,open,Kari,kari@example.com,2026-11-01\r\n"
        b'2,Two,100,NOK,Lead,open,Mallory,"mallory@example.com\r\nBcc: all@example.com",2026-11-01\r\n'
        b"3,Three,100,NOK,Lead,open,Ola,ola@example.com,2026-11-01\r\n"
    )
    config = tmp_path / "velocity.toml"
    config.write_text('timezone = "UTC"\ncurrency = "NOK"\n[store]\nurl = "sqlite:///velocity.db"\n'
                      '[[sources]]\nname = "csv"\nkind = "csv"\npath = "deals.csv"\n', encoding="utf-8")
    code, out = velocity(["--config", str(config), "sync"])
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert code == 0, out
    engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
    with engine.connect() as conn:
        emails = {r.name: r.email for r in conn.execute(sa.select(owners_table.c.name, owners_table.c.email))}
    engine.dispose()
    assert emails == {"Kari": "kari@example.com", "Mallory": None, "Ola": "ola@example.com"}
    warned = [e for e in logs if e["event"] == "sync.owner_email_rejected"]
    assert [e["owner"] for e in warned] == ["Mallory"]
    assert "line break" in warned[0]["reason"]
