"""Overlapping notifier runs: rows claimed with holder and time (issue 14, item 11)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter

import sqlalchemy as sa
from structlog.testing import capture_logs

from sales_velocity.notify import outbox
from sales_velocity.notify.message import Message
from sales_velocity.sync.lock import HOST
from sales_velocity.sync.store import outbox_table
from tests.notify.factory import AS_OF, NOW, add_deal, add_owner
from tests.notify.receivers import webhook_receiver


def queue(engine, key: str, claimed_by: str | None, claimed_at: dt.datetime | None) -> None:
    """A digest row left ``sending`` by ``claimed_by``."""
    message = Message(kind="digest", key=key, subject="s", text="t", markdown="m", html="h", slack={},
                      data={})
    with engine.begin() as conn:
        outbox.enqueue(conn, "out", message, NOW)
        conn.execute(sa.update(outbox_table).where(outbox_table.c.dedupe_key == key)
                     .values(status="sending", claimed_by=claimed_by, claimed_at=claimed_at))


def states(engine) -> dict[str, str]:
    """Dedupe key -> status."""
    box = outbox_table.c
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(box.dedupe_key, box.status)).all())


def test_only_rows_of_gone_holders_become_unknown(seeded):
    """A live holder's row is left alone; a dead pid, a stale other host or no holder make it unknown."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        queue(seeded, "live", f"{HOST}:{live.pid}:run1", NOW)
        queue(seeded, "dead", f"{HOST}:{dead.pid}:run2", NOW)
        queue(seeded, "far-fresh", "other-host:1:run3", NOW - dt.timedelta(minutes=5))
        queue(seeded, "far-stale", "other-host:1:run4", NOW - dt.timedelta(hours=3))
        queue(seeded, "mine-earlier", f"{HOST}:{os.getpid()}:run5", NOW)
        queue(seeded, "legacy", None, None)
        with capture_logs() as logs:
            found = outbox.recover_interrupted(seeded, ["out"], holder=f"{HOST}:{os.getpid()}:run6", now=NOW)
    finally:
        live.kill()
        live.wait()
    assert sorted(r.dedupe_key for r in found) == ["dead", "far-stale", "legacy", "mine-earlier"]
    assert states(seeded) == {"live": "sending", "dead": "unknown", "far-fresh": "sending",
                              "far-stale": "unknown", "mine-earlier": "unknown", "legacy": "unknown"}
    warned = sorted(e["key"] for e in logs if e["event"] == "notify.outbox.interrupted")
    assert warned == ["dead", "far-stale", "legacy", "mine-earlier"]


def test_claim_records_holder_and_time(seeded):
    """claim() writes who took the row and when."""
    message = Message(kind="digest", key="k", subject="s", text="t", markdown="m", html="h", slack={},
                      data={})
    with seeded.begin() as conn:
        outbox.enqueue(conn, "out", message, NOW)
    row = outbox.pending(seeded, "out", ("digest",))[0]
    assert outbox.claim(seeded, row.id, holder="h:1:r", now=NOW)
    assert not outbox.claim(seeded, row.id, holder="h:2:r", now=NOW)
    box = outbox_table.c
    with seeded.connect() as conn:
        got = conn.execute(sa.select(box.claimed_by, box.claimed_at, box.status)).one()
    assert got.claimed_by == "h:1:r"
    assert got.claimed_at.replace(tzinfo=dt.UTC) == NOW
    assert got.status == "sending"


def test_two_notify_processes_at_once_send_each_message_once(seeded_file, sqlite_store, tmp_path):
    """A second `velocity notify` started mid-send warns of nothing and sends nothing twice."""
    for n in range(5):  # more sellers: the first run is busy for ~10 s, so the second overlaps it
        add_owner(sqlite_store, f"s{n}", f"Seller {n}", f"seller{n}@example.com")
        add_deal(sqlite_store, f"s{n}", owner_id=f"s{n}", next_step=None, next_activity_at=None)
    with webhook_receiver(delay=1.5) as hook:
        config = seeded_file(f"""fallback_to = "lead@example.com"
[[notify.channels]]
kind = "webhook"
name = "hook"
url = "{hook.url}"
send = ["digest", "reminders"]
timeout_seconds = 20
""")
        command = [sys.executable, "-m", "sales_velocity.scheduler", "--config", str(config), "notify",
                   "--as-of", AS_OF.isoformat()]
        env = {**os.environ, "NO_COLOR": "1"}
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert hook.first.wait(60), "the first run never posted"
        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outputs = [p.communicate(timeout=120) for p in (first, second)]
        codes = [first.returncode, second.returncode]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
    rows = states(engine)
    engine.dispose()
    assert codes == [0, 0], outputs
    assert len(rows) == 8  # the digest, seven sellers' reminders (one is the fallback's)
    assert set(rows.values()) == {"sent"}
    posted = Counter(body["key"] for body in hook.bodies)
    assert posted == Counter(dict.fromkeys(rows, 1))
    for out, err in outputs:
        assert "interrupted" not in err
        assert "may or may not" not in out
        assert "channel hook: sent " in out, "both runs delivered part of the queue: they overlapped"
