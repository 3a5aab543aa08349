"""Movement from real connectors: a CSV export through the CLI, and the fake HubSpot and Pipedrive APIs.

Each CRM gets hand-made deals, a first sync, one change of each class, a second
sync; every deal must land in its class with the right from/to and value, and
the bridge must add up. The fakes' random changes then hold the bridge too.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot, make_connector
from sales_velocity.kernel.testing.fake_pipedrive import FakePipedrive, FakeTime
from sales_velocity.metrics.movement import compute_movement
from sales_velocity.metrics.settings import MetricsSettings
from sales_velocity.scheduler import main
from sales_velocity.sync.engine import sync_source
from tests.metrics.movement_helpers import assert_bridge, by_deal

UTC = dt.UTC
EUR = MetricsSettings(timezone="Europe/Oslo", currency="EUR", rates={"USD": Decimal("0.9")})

# --------------------------------------------------------------------------- CSV through the CLI

HEADER = ("id,title,amount,currency,stage,status,owner,created_at,closed_at,expected_close_date,"
          "stage_history\n")
REF = "ref,Reference,100,NOK,Negotiation,open,Kari,2026-10-01,,2026-12-01,Qualified@2026-10-01; Proposal@2026-10-05; Negotiation@2026-10-10\n"  # noqa: E501
CSV_BEFORE = HEADER + REF + """\
prog,Progressing,1000,NOK,Qualified,open,Kari,2026-10-01,,2026-11-30,
back,Going back,2000,NOK,Negotiation,open,Kari,2026-10-01,,2026-11-30,
win,Winner,3000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
lose,Loser,4000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
gone,Vanishing,5000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
push,Pushed,6000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-28,
pull,Pulled in,7000,NOK,Proposal,open,Ola,2026-10-01,,2026-12-20,
up,Growing,8000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
down,Shrinking,9000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
move,Reassigned,10000,NOK,Proposal,open,Kari,2026-10-01,,2026-11-30,
"""
CSV_AFTER = HEADER + REF + """\
prog,Progressing,1000,NOK,Proposal,open,Kari,2026-10-01,,2026-11-30,
back,Going back,2000,NOK,Qualified,open,Kari,2026-10-01,,2026-11-30,
win,Winner,3000,NOK,Won,won,Ola,2026-10-01,2026-11-24,2026-11-30,
lose,Loser,4000,NOK,Lost,lost,Ola,2026-10-01,2026-11-24,2026-11-30,
push,Pushed,6000,NOK,Proposal,open,Ola,2026-10-01,,2027-01-10,
pull,Pulled in,7000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-27,
up,Growing,9000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
down,Shrinking,8500,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
move,Reassigned,10000,NOK,Proposal,open,Ola,2026-10-01,,2026-11-30,
new,Newcomer,11000,NOK,Qualified,open,Kari,2026-11-24,,2026-12-31,
"""


def velocity(args: list[str], now: dt.datetime) -> tuple[int, str]:
    """The CLI in-process with a pinned clock."""
    out = io.StringIO()
    code = main(args, env={}, out=out, now=lambda: now)
    return code, out.getvalue()


class TestCsv:
    def test_every_class_through_the_cli(self, tmp_path: Path) -> None:
        """Two syncs of an export a week apart; `velocity movement --format json` shows each class."""
        feed = tmp_path / "deals.csv"
        config = tmp_path / "velocity.toml"
        config.write_text('timezone = "Europe/Oslo"\ncurrency = "NOK"\n[store]\nurl = "sqlite:///v.db"\n'
                          '[[sources]]\nname = "export"\nkind = "csv"\npath = "deals.csv"\n',
                          encoding="utf-8")
        feed.write_text(CSV_BEFORE, encoding="utf-8")
        assert velocity(["-c", str(config), "sync"], dt.datetime(2026, 11, 20, 9, tzinfo=UTC))[0] == 0
        feed.write_text(CSV_AFTER, encoding="utf-8")
        assert velocity(["-c", str(config), "sync"], dt.datetime(2026, 11, 25, 9, tzinfo=UTC))[0] == 0
        code, out = velocity(["-c", str(config), "movement", "--format", "json"],
                             dt.datetime(2026, 11, 26, 9, tzinfo=UTC))
        assert code == 0, out
        data = json.loads(out)
        assert (data["since"], data["until"]) == ("2026-11-20T00:00:00+01:00", "2026-11-27T00:00:00+01:00")
        moves: dict[str, set[tuple[str, str | None, str | None, str]]] = {}
        for d in data["deals"]:
            key = d["id"].split("/", 1)[1]
            moves.setdefault(key, set()).add((d["change"], d["from"], d["to"], d["value"]))
        assert moves == {
            "prog": {("progressed", "Qualified", "Proposal", "1000.0000")},
            "back": {("moved_back", "Negotiation", "Qualified", "2000.0000")},
            "win": {("won", "Proposal", "won", "3000.0000")},
            "lose": {("lost", "Proposal", "lost", "4000.0000")},
            "gone": {("deleted", "Proposal", "deleted", "5000.0000")},
            "push": {("pushed", "2026-11-28", "2027-01-10", "6000.0000")},
            "pull": {("pulled_in", "2026-12-20", "2026-11-27", "7000.0000")},
            "up": {("amount_up", "8000.0000", "9000.0000", "1000.0000")},
            "down": {("amount_down", "9000.0000", "8500.0000", "500.0000")},
            "move": {("reassigned", "Kari", "Ola", "10000.0000")},
            "new": {("added", None, "Qualified", "11000.0000")},
        }
        assert data["open_start"] == {"count": 11, "value": "55100.0000"}
        assert data["open_end"] == {"count": 9, "value": "54600.0000"}  # 55100 - 12000 + 11000 + 1000 - 500
        assert data["pushed"]["slipped_month"] == data["pushed"]["slipped_quarter"] == 1
        total = Decimal(data["open_start"]["value"]) + Decimal(data["added"]["value"])
        total += Decimal(data["amount_up"]["delta"]) - Decimal(data["amount_down"]["delta"])
        total -= Decimal(data["won"]["value"]) + Decimal(data["lost"]["value"])
        total -= Decimal(data["deleted"]["value"])
        assert total == Decimal(data["open_end"]["value"])
        code, out = velocity(["-c", str(config), "movement", "--scope", "owner:Ola", "--format", "csv"],
                             dt.datetime(2026, 11, 26, 9, tzinfo=UTC))
        assert code == 0
        assert "export/move" in out
        assert "export/prog" not in out
        code, _ = velocity(["-c", str(config), "movement", "--scope", "owner:Nobody"],
                           dt.datetime(2026, 11, 26, 9, tzinfo=UTC))
        assert code == 2


# --------------------------------------------------------------------------- HubSpot


@pytest.fixture
def portal() -> Iterator[FakeHubSpot]:
    """A served, empty fake portal."""
    fake = FakeHubSpot()
    with fake.serve():
        yield fake


def _hubspot_deal(fake: FakeHubSpot, name: str, stage: str, amount: str, close: str, owner: str) -> str:
    [key] = fake.add_deals(1, stage=stage, dealname=name, amount=amount, closedate=close,
                           hubspot_owner_id=owner, deal_currency_code="EUR", pipeline="default",
                           createdate=fake.clock.now().isoformat().replace("+00:00", "Z"))
    return key


class TestHubSpot:
    def test_every_class_from_the_fake_portal(self, store: sa.Engine, portal: FakeHubSpot) -> None:
        """Hand-made deals changed between two syncs: each class, from/to by HubSpot's stage order."""
        owners = [o["id"] for o in portal.owners]
        ids = {name: _hubspot_deal(portal, name, stage, amount, "2026-12-15", owners[0])
               for name, stage, amount in [
                   ("prog", "qualifiedtobuy", "1000"), ("back", "decisionmakerboughtin", "2000"),
                   ("win", "contractsent", "3000"), ("lose", "contractsent", "4000"),
                   ("gone", "contractsent", "5000"), ("push", "contractsent", "6000"),
                   ("pull", "contractsent", "7000"), ("up", "contractsent", "8000"),
                   ("down", "contractsent", "9000"), ("move", "contractsent", "10000"),
                   ("still", "contractsent", "500")]}
        connector = make_connector(portal)
        portal.clock.advance(3600)
        sync_source(store, connector, now=portal.clock.now)
        portal.clock.advance(3600)
        since = portal.clock.now()
        portal.modify([ids["prog"]], dealstage="presentationscheduled")  # order 1 -> 2
        portal.modify([ids["back"]], dealstage="presentationscheduled")  # order 3 -> 2
        portal.modify([ids["win"]], dealstage="closedwon", closedate=portal.clock.now().isoformat())
        portal.modify([ids["lose"]], dealstage="closedlost", closedate=portal.clock.now().isoformat())
        portal.archive([ids["gone"]])
        portal.modify([ids["push"]], closedate="2027-02-01")
        portal.modify([ids["pull"]], closedate="2026-11-30")
        portal.modify([ids["up"]], amount="8000.50")
        portal.modify([ids["down"]], amount="8999.99")
        portal.modify([ids["move"]], hubspot_owner_id=owners[1])
        ids["new"] = _hubspot_deal(portal, "new", "appointmentscheduled", "700", "2026-12-31", owners[0])
        portal.clock.advance(3600)
        sync_source(store, connector, now=portal.clock.now)
        m = compute_movement(store, EUR, since=since, until=portal.clock.now() + dt.timedelta(hours=1))
        moves = by_deal(m)
        changes = {name: {c for c, _, _ in moves.get(key, set())} for name, key in ids.items()}
        assert changes == {
            "prog": {"progressed"}, "back": {"moved_back"}, "win": {"won"}, "lose": {"lost"},
            "gone": {"deleted"}, "push": {"pushed"}, "pull": {"pulled_in"}, "up": {"amount_up"},
            "down": {"amount_down"}, "move": {"reassigned"}, "new": {"added"}, "still": set(),
        }
        assert ("progressed", "Qualified To Buy", "Presentation Scheduled") in moves[ids["prog"]]
        assert m.classes["won"].value == Decimal(3000)
        assert m.classes["amount_up"].value == Decimal("0.5")
        assert m.classes["amount_down"].value == Decimal("0.01")
        assert m.open_start.value == Decimal(55500)
        assert m.open_end.value == Decimal(55500) - 12000 + 700 + Decimal("0.5") - Decimal("0.01")
        assert_bridge(m)

    def test_bridge_holds_on_random_portal_changes(self, store: sa.Engine, portal: FakeHubSpot) -> None:
        """300 random deals, 120 random changes of stage, amount, close date, owner, archive: it adds up."""
        rng = random.Random(3)
        keys = portal.add_deals(300)
        connector = make_connector(portal)
        portal.clock.advance(3600)
        sync_source(store, connector, now=portal.clock.now)
        since = portal.clock.now()
        stages = [s["id"] for s in portal.pipelines[0]["stages"]]
        owners = [o["id"] for o in portal.owners]
        for key in rng.sample(keys, 120):
            what = rng.choice(["stage", "amount", "close", "owner", "archive"])
            if what == "stage":
                portal.modify([key], dealstage=rng.choice(stages))
            elif what == "amount":
                portal.modify([key], amount=str(rng.randrange(100, 90000)))
            elif what == "close":
                portal.modify([key], closedate=f"2027-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}")
            elif what == "owner":
                portal.modify([key], hubspot_owner_id=rng.choice(owners))
            else:
                portal.archive([key])
        portal.add_deals(20)
        portal.clock.advance(3600)
        sync_source(store, connector, now=portal.clock.now)
        m = compute_movement(store, EUR, since=since, until=portal.clock.now() + dt.timedelta(hours=1))
        assert len(m.deals) > 60
        assert_bridge(m)


# --------------------------------------------------------------------------- Pipedrive


@pytest.fixture
def company() -> Iterator[tuple[FakePipedrive, str]]:
    """A served, empty fake Pipedrive company."""
    fake = FakePipedrive()
    with fake.serve() as url:
        yield fake, url


def _pipedrive(fake: FakePipedrive, url: str) -> PipedriveConnector:
    time = FakeTime()
    raw = {"name": "pipedrive", "kind": "pipedrive", "api_token": fake.token, "company_domain": "acme",
           "base_url": url}
    return PipedriveConnector(PipedriveSettings.model_validate(raw), sleep=time.sleep, clock=time.clock,
                              now=lambda: fake.now)


class TestPipedrive:
    def test_every_class_from_the_fake_company(self, store: sa.Engine,
                                                company: tuple[FakePipedrive, str]) -> None:
        """Hand-made deals changed between two syncs; stage order by order_nr; archive is deleted."""
        fake, url = company
        made = {name: fake.add_deal(title=name, stage_id=stage, value=value,
                                    expected_close_date="2026-12-15")["id"]
                for name, stage, value in [
                    ("prog", 1, 1000), ("back", 3, 2000), ("win", 3, 3000), ("lose", 3, 4000),
                    ("gone", 3, 5000), ("archive", 3, 5500), ("push", 3, 6000), ("pull", 3, 7000),
                    ("up", 3, 8000), ("down", 3, 9000), ("move", 3, 10000), ("usd", 3, 100)]}
        fake.update_deal(made["usd"], currency="USD")
        connector = _pipedrive(fake, url)
        fake.advance(3600)
        sync_source(store, connector, now=lambda: fake.now)
        since = fake.advance(3600)
        fake.update_deal(made["prog"], stage_id=2)
        fake.update_deal(made["back"], stage_id=2)
        fake.update_deal(made["win"], status="won", value=3300)
        fake.update_deal(made["lose"], status="lost")
        fake.delete_deal(made["gone"])
        fake.archive_deal(made["archive"])
        fake.update_deal(made["push"], expected_close_date="2027-01-05")
        fake.update_deal(made["pull"], expected_close_date="2026-12-01")
        fake.update_deal(made["up"], value=8100)
        fake.update_deal(made["down"], value=8900)
        fake.update_deal(made["move"], owner_id=12)
        fake.update_deal(made["usd"], value=200)
        made["new"] = fake.add_deal(title="new", value=400)["id"]
        fake.advance(3600)
        sync_source(store, connector, now=lambda: fake.now)
        m = compute_movement(store, EUR, since=since, until=fake.advance(3600))
        moves = by_deal(m)
        changes = {name: {c for c, _, _ in moves.get(str(key), set())} for name, key in made.items()}
        assert changes == {
            "prog": {"progressed"}, "back": {"moved_back"}, "win": {"won", "amount_up"}, "lose": {"lost"},
            "gone": {"deleted"}, "archive": {"deleted"}, "push": {"pushed"}, "pull": {"pulled_in"},
            "up": {"amount_up"}, "down": {"amount_down"}, "move": {"reassigned"}, "usd": {"amount_up"},
            "new": {"added"},
        }
        assert ("progressed", "Qualified", "Demo") in moves[str(made["prog"])]
        assert ("deleted", "Proposal", "archived") in moves[str(made["archive"])]
        assert ("reassigned", "Kari Nordmann", "Ola Hansen") in moves[str(made["move"])]
        assert m.classes["won"].value == Decimal(3300)  # won at the amount it was won with
        assert m.classes["amount_up"].value == Decimal(300) + 100 + Decimal(90)  # win, up, usd 90 -> 180
        start = Decimal(1000 + 2000 + 3000 + 4000 + 5000 + 5500 + 6000 + 7000 + 8000 + 9000 + 10000) + 90
        assert m.open_start.value == start
        assert m.open_end.value == (start + 300 + 100 + 90 - 100 - 3300 - 4000 - 5000 - 5500 + 400)
        assert_bridge(m)

    def test_bridge_holds_on_random_company_changes(self, store: sa.Engine,
                                                     company: tuple[FakePipedrive, str]) -> None:
        """200 deals and 100 random changes (stage, status, value, date, owner, delete): it adds up."""
        fake, url = company
        rng = random.Random(5)
        ids = [fake.add_deal(stage_id=rng.choice([1, 2, 3, 4]), value=rng.randrange(0, 50000),
                             owner_id=rng.choice([11, 12]))["id"] for _ in range(200)]
        connector = _pipedrive(fake, url)
        fake.advance(3600)
        sync_source(store, connector, now=lambda: fake.now)
        since = fake.advance(60)
        for deal_id in rng.sample(ids, 100):
            fake.advance(60)
            what = rng.choice(["stage", "won", "lost", "value", "date", "owner", "delete", "archive"])
            if what == "stage":
                fake.update_deal(deal_id, stage_id=rng.choice([1, 2, 3, 4]))
            elif what in ("won", "lost"):
                fake.update_deal(deal_id, status=what)
            elif what == "value":
                fake.update_deal(deal_id, value=rng.randrange(0, 50000))
            elif what == "date":
                fake.update_deal(deal_id, expected_close_date=f"2027-0{rng.randrange(1, 9)}-15")
            elif what == "owner":
                fake.update_deal(deal_id, owner_id=rng.choice([11, 12]))
            elif what == "delete":
                fake.delete_deal(deal_id)
            else:
                fake.archive_deal(deal_id)
        fake.advance(3600)
        sync_source(store, connector, now=lambda: fake.now)
        m = compute_movement(store, EUR, since=since, until=fake.advance(3600))
        assert len(m.deals) > 50
        assert_bridge(m)
