"""A digest per team: channel scopes and exclude_pipelines, against figures computed here in plain Python."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.notify.job import run_notify
from sales_velocity.notify.settings import load_notify_settings
from sales_velocity.sync.store import outbox_table
from tests.notify.factory import AS_OF, NOW, add_deal, add_owner, add_pipeline, add_sync_run, days_ago

METRICS = MetricsSettings(timezone="UTC", currency="NOK", exclude_pipelines=("Renewals",))
# (id, pipeline, owner, status, amount, days ago closed, cycle days, stalled)
DEALS: list[tuple[Any, ...]] = [
    ("n-won-1", "new", "o1", "won", 100000, 10, 40, False),
    ("n-won-2", "new", "o2", "won", 50000, 20, 20, False),
    ("n-lost-1", "new", "o1", "lost", 70000, 30, 15, False),
    ("r-won-1", "ren", "o1", "won", 30000, 15, 10, False),
    ("r-lost-1", "ren", "o2", "lost", 20000, 25, 12, False),
    ("r-lost-2", "ren", "o1", "lost", 20000, 26, 12, False),
    ("n-open-1", "new", "o1", "open", 40000, None, None, True),
    ("n-open-2", "new", "o1", "open", 45000, None, None, False),
    ("n-open-3", "new", "o2", "open", 35000, None, None, True),
    ("r-open-1", "ren", "o1", "open", 25000, None, None, True),
    ("r-open-2", "ren", "o2", "open", 15000, None, None, False),
    ("r-open-3", "ren", "o2", "open", 10000, None, None, True),
]
OWNERS = {"o1": "kari@example.com", "o2": "ola@example.com"}


def seed(engine) -> None:
    """Two pipelines, two owners, the deals above; stalled ones have no next step."""
    add_sync_run(engine)
    add_pipeline(engine, "new", "New Business")
    add_pipeline(engine, "ren", "Renewals")
    add_owner(engine, "o1", "Kari Nordmann", OWNERS["o1"])
    add_owner(engine, "o2", "Ola Hansen", OWNERS["o2"])
    for ident, pipeline, owner, status, amount, closed_ago, cycle, stalled in DEALS:
        values = {"pipeline_id": pipeline, "owner_id": owner, "status": status, "amount": Decimal(amount),
                  "title": ident, "created_at": days_ago(60)}
        if closed_ago is not None:
            values.update(closed_at=days_ago(closed_ago), created_at=days_ago(closed_ago + cycle),
                          stage_id="won" if status == "won" else "lead")
        if stalled:
            values.update(next_step=None, next_activity_at=None)
        add_deal(engine, ident, **values)


def expected(keep) -> dict[str, Any]:
    """Velocity and levers of the deals ``keep`` selects, by the definitions, in plain Python."""
    chosen = [d for d in DEALS if keep(d)]
    won = [d for d in chosen if d[3] == "won"]
    lost = [d for d in chosen if d[3] == "lost"]
    n = sum(1 for d in chosen if d[3] == "open")
    p = Decimal(len(won)) / Decimal(len(won) + len(lost))
    value = sum(Decimal(d[4]) for d in won) / len(won)
    cycle = Decimal(sum(d[6] for d in won)) / len(won)
    velocity = (Decimal(n) * Decimal(value) * p / Decimal(cycle)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    stalled = sorted(d[0] for d in chosen if d[7])
    return {"velocity": velocity, "opportunities": n, "won": len(won), "lost": len(lost), "stalled": stalled}


def channel(name, path, scope=None):
    """A JSON file channel for the digest, with an optional scope."""
    table = {"kind": "file", "name": name, "path": str(path), "format": "json", "send": ["digest"]}
    if scope:
        table["scope"] = scope
    return table


@pytest.fixture
def store_with_teams(sqlite_store):
    """The seeded SQLite store."""
    seed(sqlite_store)
    return sqlite_store


def digest_of(path) -> dict[str, Any]:
    """The data of the one digest file in ``path``."""
    files = list(path.glob("digest*.json"))
    assert len(files) == 1
    data: dict[str, Any] = json.loads(files[0].read_text(encoding="utf-8"))["data"]
    return data


class TestScopes:
    def test_two_scopes_two_correct_digests(self, store_with_teams, tmp_path):
        """New Business and Kari's deals each get their own velocity, levers, hygiene and worst deals."""
        notify, reminders = load_notify_settings({"chart": False, "channels": [
            channel("nb", tmp_path / "nb", {"pipelines": ["New Business"]}),
            channel("kari", tmp_path / "kari", {"owners": ["kari@example.com"]}),
            channel("all", tmp_path / "all"),
        ]}, {}, {})
        result = run_notify(store_with_teams, notify, reminders, METRICS, as_of=AS_OF, now=NOW,
                            out=io.StringIO())
        assert not result.failed
        cases = {
            "nb": expected(lambda d: d[1] == "new"),
            # a scope without pipelines is "all" of its owners: exclude_pipelines holds there too
            "kari": expected(lambda d: d[2] == "o1" and d[1] != "ren"),
            "all": expected(lambda d: d[1] != "ren"),  # exclude_pipelines leaves Renewals out of "all"
        }
        assert cases["nb"]["velocity"] != cases["kari"]["velocity"]
        for name, want in cases.items():
            data = digest_of(tmp_path / name)
            overall = data["overall"]
            assert Decimal(overall["velocity"]) == want["velocity"], name
            assert (overall["opportunities"], overall["won"], overall["lost"]) == (
                str(want["opportunities"]), want["won"], want["lost"]), name
            assert data["hygiene"]["open_deals"] == want["opportunities"], name
            assert sorted(d["id"] for d in data["worst_deals"]) == want["stalled"], name
        assert digest_of(tmp_path / "nb")["scope"] == {"pipelines": ["New Business"], "owners": []}
        assert digest_of(tmp_path / "all")["scope"] is None

    def test_scope_trend_is_its_own(self, store_with_teams, tmp_path):
        """The 7-day change of a scope compares with the scope's own velocity a week ago."""
        notify, reminders = load_notify_settings({"chart": False, "channels": [
            channel("nb", tmp_path / "nb", {"pipelines": ["New Business"]})]}, {}, {})
        run_notify(store_with_teams, notify, reminders, METRICS, as_of=AS_OF, now=NOW, out=io.StringIO())
        data = digest_of(tmp_path / "nb")
        week = next(t for t in data["trends"] if t["days"] == 7)
        # a week ago: the deals closed 7 or more days before AS_OF had closed; the open ones were open
        before = [d for d in DEALS if d[1] == "new"]
        won = [d for d in before if d[3] == "won" and d[5] >= 7]
        lost = [d for d in before if d[3] == "lost" and d[5] >= 7]
        n = sum(1 for d in before if d[3] == "open")
        p = Decimal(len(won)) / (len(won) + len(lost))
        value = sum(Decimal(d[4]) for d in won) / len(won)
        cycle = Decimal(sum(d[6] for d in won)) / len(won)
        previous = (Decimal(n) * Decimal(value) * p / Decimal(cycle)).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert Decimal(week["previous"]) == previous


class TestOutage:
    def test_newer_digest_supersedes_and_reminders_are_replanned(self, store_with_teams, tmp_path):
        """Day 1 not delivered (channel down): day 2 sends one digest and re-planned reminders."""
        target = tmp_path / "out"
        target.write_text("not a folder", encoding="utf-8")  # the channel is down on day 1
        table = {"kind": "file", "name": "f", "path": str(target), "format": "json",
                 "send": ["digest", "reminders"]}
        notify, reminders = load_notify_settings({"chart": False, "fallback_to": "lead@example.com",
                                                  "channels": [table]}, {"remind_every_days": 3}, {})
        yesterday = AS_OF - dt.timedelta(days=1)
        first = run_notify(store_with_teams, notify, reminders, METRICS, as_of=yesterday,
                           now=NOW - dt.timedelta(days=1), out=io.StringIO())
        assert first.failed
        target.unlink()
        second = run_notify(store_with_teams, notify, reminders, METRICS, as_of=AS_OF, now=NOW,
                            out=io.StringIO())
        assert not second.failed
        box = outbox_table.c
        with store_with_teams.connect() as conn:
            rows = conn.execute(sa.select(box.dedupe_key, box.status).order_by(box.id)).all()
        old = [status for key, status in rows if yesterday.isoformat() in key]
        new = [status for key, status in rows if AS_OF.isoformat() in key]
        assert old
        assert set(old) == {"superseded"}
        assert new
        assert set(new) == {"sent"}
        assert [p.name for p in target.glob("digest*")] == [f"digest_{AS_OF.isoformat()}.json"]
        # re-planned, not replayed: today's reminders list every stalled deal again
        listed = sorted(deal["id"] for f in target.glob("reminders*.json")
                        for owner in json.loads(f.read_text(encoding="utf-8"))["data"]["owners"]
                        for deal in owner["deals"])
        assert listed == sorted(d[0] for d in DEALS if d[7])
        assert sorted(k for _, k, _ in second.skipped) == sorted(k for k, s in rows if s == "superseded")
