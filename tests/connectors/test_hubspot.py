"""The HubSpot connector against the stateful fake portal (real HTTP, official client)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs

from sales_velocity.connectors import load_connector_factory
from sales_velocity.connectors.base import Checkpoint, Deal, Rejected, StreamItem
from sales_velocity.connectors.hubspot import HubSpotConnector, HubSpotSettings
from sales_velocity.connectors.hubspot.client import classify_hubspot_error
from sales_velocity.connectors.hubspot.cursor import HubSpotCursor
from sales_velocity.connectors.hubspot.mapping import deal_properties
from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.errors import (
    AuthError,
    BudgetExhaustedError,
    ConfigError,
    FatalAPIError,
    RateLimitError,
    RemoteError,
    RetriableAPIError,
)
from sales_velocity.kernel.http import RetryPolicy
from sales_velocity.kernel.testing.contract import check_connector, check_stream
from sales_velocity.kernel.testing.fake_hubspot import (
    ERRORS,
    TOKEN,
    FakeHubSpot,
    Fault,
    iso,
    make_connector,
)

DAY_S = 86_400


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    """A served fake portal with 250 deals, the clock moved an hour past their creation."""
    portal = FakeHubSpot()
    portal.add_deals(250)
    portal.clock.advance(3600)
    with portal.serve():
        yield portal


def deals_of(items: list[StreamItem]) -> dict[str, Deal]:
    """The stream's deals by id (later versions win)."""
    return {i.external_id: i for i in items if isinstance(i, Deal)}


def last_cursor(items: list[StreamItem]) -> str:
    """The cursor of the stream's last checkpoint."""
    checkpoints = [i for i in items if isinstance(i, Checkpoint)]
    assert checkpoints
    assert checkpoints[-1].cursor
    return checkpoints[-1].cursor


def cursor_now(fake: FakeHubSpot) -> str:
    """A cursor as a finished sync would leave it now (skips a full sync in big tests)."""
    fake.clock.advance(3600)
    cursor = HubSpotCursor(modified_ms=fake.clock.ms, full_ms=fake.clock.ms).encode()
    fake.clock.advance(3600)
    return cursor


def full_then_wait(fake: FakeHubSpot, connector: HubSpotConnector) -> str:
    """Let an hour pass, run a full sync, let another pass, reset the request log.

    The hours keep earlier changes out of the next search's look-back window.
    Returns the cursor.
    """
    fake.clock.advance(3600)
    cursor = last_cursor(list(connector.deals(None)))
    fake.clock.advance(3600)
    fake.counts.clear()
    fake.log.clear()
    return cursor


class TestSettings:
    """Settings validate up front and never show the token."""

    def test_defaults(self) -> None:
        """Only the token is required; the limits default to the Free/Starter tier."""
        settings = HubSpotSettings(name="hs", access_token=TOKEN)
        assert settings.kind == "hubspot"
        assert settings.base_url == "https://api.hubapi.com"
        assert settings.requests_per_10s == 100
        assert settings.search_requests_per_second == 4
        assert settings.lookback_minutes == 5
        assert settings.full_sync_every_days == 7
        assert settings.portal_id is None

    def test_problems_have_key_paths(self) -> None:
        """Missing token, bad URL and bad numbers are reported together by key path."""
        with pytest.raises(ConfigError) as caught:
            validate_settings(HubSpotSettings, {"name": "hs", "kind": "hubspot",
                                                "base_url": "ftp://x", "requests_per_10s": 0},
                              "sources[0]")
        paths = {p.path for p in caught.value.problems}
        assert paths == {"sources[0].access_token", "sources[0].base_url",
                         "sources[0].requests_per_10s"}

    def test_base_url_trailing_slash(self) -> None:
        """A trailing slash is dropped so request paths join cleanly."""
        assert HubSpotSettings(name="hs", access_token=TOKEN,
                               base_url="http://proxy:8080/").base_url == "http://proxy:8080"

    def test_registered_entry_point(self) -> None:
        """``kind = "hubspot"`` loads this connector through the entry point."""
        factory = load_connector_factory("hubspot")
        assert factory is HubSpotConnector
        assert factory.settings_model is HubSpotSettings

    def test_token_not_in_reprs(self) -> None:
        """Neither the settings nor the connector show the token."""
        settings = HubSpotSettings(name="hs", access_token=TOKEN)
        connector = HubSpotConnector(settings)
        for text in (repr(settings), str(settings), settings.model_dump_json(), repr(connector)):
            assert TOKEN not in text


class TestCatalogAndCheck:
    """Pipelines, owners and the connection check."""

    def test_contract(self, fake: FakeHubSpot) -> None:
        """Pipelines and owners are well-formed per the connector contract."""
        check_connector(make_connector(fake))

    def test_owners_are_paged(self, fake: FakeHubSpot) -> None:
        """More owners than a page are all returned, once each."""
        fake.owners += [{"id": str(90_000 + i), "email": f"seller{i}@example.com",
                         "firstName": "Seller", "lastName": str(i), "type": "PERSON",
                         "archived": False, "createdAt": iso(0), "updatedAt": iso(0)}
                        for i in range(150)]
        owners = make_connector(fake).owners()
        assert len(owners) == 153 == len({o.external_id for o in owners})
        assert fake.counts["owners"] == 2

    def test_deals_reuse_fresh_pipelines(self, fake: FakeHubSpot) -> None:
        """A sync asks for pipelines once: ``deals()`` reuses what ``pipelines()`` just read."""
        connector = make_connector(fake)
        connector.pipelines()
        list(connector.deals(None))
        assert fake.counts["pipelines"] == 1

    def test_check(self, fake: FakeHubSpot) -> None:
        """``check()`` makes one cheap read and says what answered."""
        assert "token accepted" in make_connector(fake).check()
        assert sum(fake.counts.values()) == 1


class TestFullSync:
    """No cursor: the list endpoint, then the archived list."""

    def test_all_live_and_archived_deals(self, fake: FakeHubSpot) -> None:
        """Every live deal comes once, archived ones as deleted, ending complete."""
        archived = fake.live_ids()[:7]
        fake.archive(archived)
        items = list(make_connector(fake).deals(None))
        deals, rejects, checkpoints = check_stream(items, "hubspot")
        assert not rejects
        assert len(deals) == 250 == len({d.external_id for d in deals})
        assert {d.external_id for d in deals if d.status == "deleted"} == set(archived)
        assert checkpoints[-1].complete
        assert not any(c.complete for c in checkpoints[:-1])
        expected = fake.expected()
        assert {d.external_id: (d.status, d.stage) for d in deals} == expected

    def test_request_shape(self, fake: FakeHubSpot) -> None:
        """Pages of 100 asking exactly for the needed properties; live pages, then archived."""
        connector = make_connector(fake)
        list(connector.deals(None))
        lists = [r for r in fake.log if r.endpoint in ("deals", "archived")]
        assert [r.endpoint for r in lists] == ["deals"] * 3 + ["archived"]
        stage_ids = [s["id"] for p in fake.pipelines for s in p["stages"]]
        for request in lists:
            assert request.args["limit"] == ["100"]
            assert request.args["properties"] == deal_properties(stage_ids)
        assert "archived" not in lists[0].args  # live deals are the default
        assert lists[-1].args["archived"][0].lower() == "true"
        assert fake.counts["search"] == 0

    def test_cursor_is_sweep_start(self, fake: FakeHubSpot) -> None:
        """The final cursor is the sweep's start, which also dates the last full sweep."""
        start_ms = fake.clock.ms
        cursor = HubSpotCursor.decode(last_cursor(list(make_connector(fake).deals(None))))
        assert cursor.modified_ms == start_ms
        assert cursor.full_ms == start_ms
        assert cursor.sweep is None

    def test_crashed_sweep_resumes(self, fake: FakeHubSpot) -> None:
        """A sweep that dies mid-way resumes from its last page, losing nothing."""
        connector = make_connector(fake)
        fake.break_after(2, status=500, endpoint="deals")
        seen: list[StreamItem] = []
        with pytest.raises(RetriableAPIError, match="gave up after 6 attempts"):
            seen.extend(connector.deals(None))
        assert len(deals_of(seen)) == 200
        fake.heal()
        fake.counts.clear()
        fake.modify(fake.live_ids()[:2], amount="8")  # on a page listed before the crash
        resumed = list(connector.deals(last_cursor(seen)))
        assert set(deals_of(resumed)) == (
            set(fake.expected()) - set(deals_of(seen)) | set(fake.live_ids()[:2]))
        assert fake.counts["deals"] == 1
        assert fake.counts["search"] == 1
        assert not any(i.complete for i in resumed if isinstance(i, Checkpoint))
        assert HubSpotCursor.decode(last_cursor(resumed)).sweep is None


class TestIncrementalSync:
    """A cursor: archived list for deletes, then the keyset search walk."""

    def test_nothing_changed_costs_a_handful(self, fake: FakeHubSpot) -> None:
        """With no change, a sync is one archived page and one search page (plus pipelines)."""
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        connector.pipelines()
        start_ms = fake.clock.ms
        items = list(connector.deals(cursor))
        assert deals_of(items) == {}
        assert fake.counts == {"pipelines": 1, "archived": 1, "search": 1}
        assert HubSpotCursor.decode(last_cursor(items)).modified_ms == start_ms

    def test_changes_and_deletes(self, fake: FakeHubSpot) -> None:
        """Modified deals come back with their new values, archived ones as deleted, once."""
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        ids = fake.live_ids()
        fake.modify(ids[:5], amount="777.70")
        fake.modify(ids[5:6], dealstage="closedwon", closedate="2026-11-26T10:00:00Z")
        fake.archive(ids[10:13])
        items = list(make_connector(fake).deals(cursor))
        deals, _, _ = check_stream(items, "hubspot")
        by_id = deals_of(items)
        assert set(by_id) == set(ids[:6]) | set(ids[10:13])
        assert len(deals) == 9
        assert all(by_id[i].amount == Decimal("777.70") for i in ids[:5])
        won = by_id[ids[5]]
        assert (won.status, won.stage) == ("won", "closedwon")
        assert won.closed_at == dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
        assert {by_id[i].status for i in ids[10:13]} == {"deleted"}
        assert next(r.endpoint for r in fake.log if r.endpoint != "pipelines") == "archived"

    def test_old_archives_are_not_repeated(self, fake: FakeHubSpot) -> None:
        """Deals archived before the cursor's look-back are not yielded again."""
        fake.archive(fake.live_ids()[:3])
        fake.clock.advance(3600)
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        assert deals_of(list(connector.deals(cursor))) == {}

    def test_search_request_shape(self, fake: FakeHubSpot) -> None:
        """Search asks GTE cursor minus look-back, ascending, 200 per page, no offset."""
        connector = make_connector(fake, lookback_minutes=5)
        cursor = full_then_wait(fake, connector)
        list(connector.deals(cursor))
        (search,) = [r for r in fake.log if r.endpoint == "search"]
        body = search.body
        since = HubSpotCursor.decode(cursor).modified_ms
        assert since is not None
        assert body["limit"] == 200
        assert "after" not in body
        assert body["sorts"] == [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}]
        assert body["filterGroups"] == [{"filters": [
            {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(since - 300_000)},
        ]}]

    def test_more_than_ten_thousand_changes(self) -> None:
        """10,500 changed deals all arrive, once each, without touching the 10,000 cap."""
        fake = FakeHubSpot()
        fake.add_deals(10_600)
        with fake.serve():
            connector = make_connector(fake)
            cursor = cursor_now(fake)
            changed = fake.live_ids()[:10_500]
            fake.modify(changed, hs_next_step="Renegotiate")
            items = list(connector.deals(cursor))
        deals, _, checkpoints = check_stream(items, "hubspot")
        assert len(deals) == 10_500 == len({d.external_id for d in deals})
        assert {d.next_step for d in deals} == {"Renegotiate"}
        assert all(r.status == 200 for r in fake.log)
        assert max(int(r.body.get("after") or 0) for r in fake.log if r.endpoint == "search") == 0
        assert len(checkpoints) >= 50

    def test_more_than_ten_thousand_on_one_timestamp(self) -> None:
        """10,200 deals changed in the same millisecond are all delivered, and the walk ends."""
        fake = FakeHubSpot()
        fake.add_deals(10_300)
        with fake.serve():
            connector = make_connector(fake)
            cursor = cursor_now(fake)
            fake.clock.advance(1)
            changed = fake.live_ids()[:10_200]
            fake.modify(changed, same_time=True, amount="1")
            items = list(connector.deals(cursor))
        deals, _, _ = check_stream(items, "hubspot")
        assert {d.external_id for d in deals} == set(changed)
        assert all(r.status == 200 for r in fake.log)
        assert fake.counts["search"] <= 10_200 // 200 + 4

    def test_changes_during_the_walk_are_not_skipped(self, fake: FakeHubSpot) -> None:
        """Deals modified while the search pages are read still arrive in their final version."""
        fake.add_deals(500)
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        ids = fake.live_ids()
        fake.modify(ids[:600], amount="1")
        calls = {"search": 0}

        def meddle(endpoint: str) -> None:
            if endpoint == "search":
                calls["search"] += 1
                if calls["search"] == 2:  # change delivered and undelivered deals mid-walk
                    fake.modify(ids[:5] + ids[590:595], amount="2")

        fake.on_request.append(meddle)
        items = list(connector.deals(cursor))
        by_id = deals_of(items)
        assert set(by_id) == set(ids[:600])
        assert {i for i, d in by_id.items() if d.amount == Decimal(2)} == set(ids[:5] + ids[590:595])

    def test_late_indexed_change_within_lookback(self, fake: FakeHubSpot) -> None:
        """A change stamped just before the cursor (indexed late) is caught by the look-back."""
        connector = make_connector(fake, lookback_minutes=5)
        cursor = full_then_wait(fake, connector)
        since = HubSpotCursor.decode(cursor).modified_ms
        assert since is not None
        late = fake.live_ids()[0]
        fake.modify([late], amount="5")
        fake.deals[int(late)].modified_ms = since - 120_000
        fake.deals[int(late)].props["hs_lastmodifieddate"] = iso(since - 120_000)
        start_ms = fake.clock.ms
        items = list(connector.deals(cursor))
        assert deals_of(items)[late].amount == Decimal(5)
        assert HubSpotCursor.decode(last_cursor(items)).modified_ms == start_ms

    def test_cursor_capped_at_sync_start(self, fake: FakeHubSpot) -> None:
        """A modification stamped in the future (clock skew) cannot push the cursor past now."""
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        ahead = fake.live_ids()[0]
        fake.modify([ahead], amount="6")
        fake.deals[int(ahead)].modified_ms = fake.clock.ms + 3_600_000
        fake.deals[int(ahead)].props["hs_lastmodifieddate"] = iso(fake.clock.ms + 3_600_000)
        start_ms = fake.clock.ms
        items = list(connector.deals(cursor))
        assert ahead in deals_of(items)
        assert HubSpotCursor.decode(last_cursor(items)).modified_ms == start_ms

    def test_periodic_full_sweep(self, fake: FakeHubSpot) -> None:
        """After ``full_sync_every_days`` a cursor sync becomes a complete sweep again."""
        connector = make_connector(fake, full_sync_every_days=7)
        cursor = full_then_wait(fake, connector)
        fake.clock.advance(8 * DAY_S)
        items = list(connector.deals(cursor))
        assert fake.counts["deals"] == 3
        assert fake.counts["search"] == 0
        assert len(deals_of(items)) == 250
        assert items[-1] == Checkpoint(items[-1].cursor, complete=True)  # type: ignore[union-attr]

    def test_no_periodic_sweep_when_disabled(self, fake: FakeHubSpot) -> None:
        """Without ``full_sync_every_days`` syncs stay incremental."""
        connector = make_connector(fake, full_sync_every_days=None)
        cursor = full_then_wait(fake, connector)
        fake.clock.advance(400 * DAY_S)
        list(connector.deals(cursor))
        assert fake.counts["deals"] == 0
        assert fake.counts["search"] == 1

    def test_unreadable_cursor(self, fake: FakeHubSpot) -> None:
        """A corrupt stored cursor fails clearly and says how to recover."""
        with pytest.raises(FatalAPIError, match=r"--full"):
            list(make_connector(fake).deals("not-a-cursor"))


class TestBadRecords:
    """Unreadable deals are reported with their id; the rest are kept."""

    def test_malformed_amounts_and_dates(self, fake: FakeHubSpot) -> None:
        """Bad amount and bad dates reject exactly those deals, in full and incremental syncs."""
        bad_amount = fake.add_deals(1, amount="12abc")[0]
        bad_close = fake.add_deals(1, closedate="end of Q3")[0]
        connector = make_connector(fake)
        fake.clock.advance(3600)
        items = list(connector.deals(None))
        deals, rejects, _ = check_stream(items, "hubspot")
        assert len(deals) == 250
        assert {(r.where, r.external_id) for r in rejects} == {
            (f"deal {bad_amount}", bad_amount), (f"deal {bad_close}", bad_close)}
        reasons = " | ".join(r.reason for r in rejects)
        assert "amount '12abc' is not a number" in reasons
        assert "closedate 'end of Q3' is not an ISO date" in reasons
        cursor = last_cursor(items)
        fake.clock.advance(3600)
        good = fake.live_ids()[0]
        fake.modify([good, bad_amount], notes_last_updated="03/04/2026")
        items = list(connector.deals(cursor))
        assert {r.external_id for r in items if isinstance(r, Rejected)} == {good, bad_amount}

    def test_corrupt_modification_date(self, fake: FakeHubSpot) -> None:
        """A deal whose hs_lastmodifieddate is unreadable is rejected; the walk still ends."""
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        ids = fake.live_ids()
        fake.modify(ids[:3], amount="3")
        fake.modify(ids[1:2], hs_lastmodifieddate="garbage")
        items = list(connector.deals(cursor))
        assert [r.external_id for r in items if isinstance(r, Rejected)] == [ids[1]]
        assert set(deals_of(items)) == {ids[0], ids[2]}


class TestFailures:
    """429s, 5xx, auth and connection failures."""

    def test_storm_mid_pagination(self, fake: FakeHubSpot) -> None:
        """A storm of 429s and 502s loses nothing and repeats nothing (full and incremental)."""
        fake.add_deals(450)
        fake.clock.advance(3600)
        clean = deals_of(list(make_connector(fake).deals(None)))
        fake.storm(0.4, (429, 502), seed=5)
        connector = make_connector(fake)
        items = list(connector.deals(None))
        deals, _, _ = check_stream(items, "hubspot")
        assert deals_of(items) == clean
        assert len(deals) == len(clean)
        cursor = last_cursor(items)
        fake.clock.advance(3600)
        changed = fake.live_ids()[:420]
        fake.modify(changed, amount="9")
        stormy = list(connector.deals(cursor))
        deals, _, _ = check_stream(stormy, "hubspot")
        assert sorted(d.external_id for d in deals) == sorted(changed)
        assert sum(1 for r in fake.log if r.status != 200) >= 5

    def test_retry_after_is_honoured(self, fake: FakeHubSpot) -> None:
        """A 429 with Retry-After waits exactly that long, then goes on."""
        fake.fail_next("deals", Fault(429, retry_after="7"), after=1)
        connector = make_connector(fake)
        slept_before = fake.clock.slept
        list(connector.deals(None))
        assert fake.clock.slept - slept_before == pytest.approx(7.0)
        assert fake.counts["deals"] == 4

    def test_backoff_without_retry_after(self, fake: FakeHubSpot) -> None:
        """A 429 without Retry-After backs off exponentially (with jitter)."""
        fake.fail_next("search", 429, 429, 429)
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        slept_before = fake.clock.slept
        list(connector.deals(cursor))
        assert 0.5 + 1 + 2 <= fake.clock.slept - slept_before <= 1 + 2 + 4
        assert fake.counts["search"] == 4

    def test_daily_limit_is_not_retried(self, fake: FakeHubSpot) -> None:
        """The daily limit fails the source at once: the next run resumes."""
        fake.fail_next("deals", Fault(429, body=ERRORS["rate_limit_daily"]))
        with pytest.raises(BudgetExhaustedError, match="daily request limit"):
            list(make_connector(fake).deals(None))
        assert fake.counts["deals"] == 1

    def test_persistent_5xx_gives_up(self, fake: FakeHubSpot) -> None:
        """Bounded attempts: a server that keeps failing ends the pull with a retriable error."""
        fake.break_after(0, status=502, endpoint="pipelines")
        with pytest.raises(RetriableAPIError, match=r"HTTP 502.*gave up after 6 attempts"):
            make_connector(fake).pipelines()
        assert fake.counts["pipelines"] == 6

    def test_search_cap_error_is_fatal(self, fake: FakeHubSpot) -> None:
        """HubSpot's 400 for the 10,000 cap is not retried."""
        fake.fail_next("search", 400)
        connector = make_connector(fake)
        cursor = full_then_wait(fake, connector)
        with pytest.raises(FatalAPIError, match=r"HTTP 400.*10,000"):
            list(connector.deals(cursor))

    @pytest.mark.parametrize("call", ["pipelines", "deals", "check"])
    def test_bad_token(self, fake: FakeHubSpot, call: str) -> None:
        """A rejected token fails at once with a clear message, never the token."""
        connector = make_connector(fake, access_token="pat-na1-wrong-token")
        run = (lambda: list(connector.deals(None))) if call == "deals" else getattr(connector, call)
        with pytest.raises(AuthError) as caught:
            run()
        message = str(caught.value)
        assert "HTTP 401" in message
        assert "token rejected or missing scope crm.objects.deals.read" in message
        assert "pat-na1-wrong-token" not in message
        assert sum(fake.counts.values()) == 1

    def test_missing_scope(self, fake: FakeHubSpot) -> None:
        """A token without the owners scope names that scope."""
        fake.scopes.discard("crm.objects.owners.read")
        with pytest.raises(AuthError, match=r"HTTP 403.*crm\.objects\.owners\.read"):
            make_connector(fake).owners()

    def test_connection_refused(self) -> None:
        """No server: connection errors are retried, then reported without a traceback chain."""
        settings = HubSpotSettings(name="hs", access_token=TOKEN, base_url="http://127.0.0.1:9")
        sleeps: list[float] = []
        connector = HubSpotConnector(settings, sleep=sleeps.append,
                                     retry_policy=RetryPolicy(max_attempts=3))
        with pytest.raises(RetriableAPIError, match="connection failed") as caught:
            connector.pipelines()
        assert len(sleeps) == 2
        assert caught.value.__cause__ is None


class TestSecrets:
    """The token appears in no log line and no error."""

    def test_token_never_logged_or_raised(self, fake: FakeHubSpot) -> None:
        """Through retries, rejects and an auth failure, no event or message holds the token."""
        fake.storm(0.5, (429, 502), seed=2)
        fake.add_deals(1, amount=f"bad {TOKEN}")
        errors: list[str] = []
        with capture_logs() as logs:
            list(make_connector(fake).deals(None))
            fake.token = "another"
            for call in ("pipelines", "owners", "check"):
                try:
                    getattr(make_connector(fake, access_token=TOKEN), call)()
                except RemoteError as exc:
                    errors.append(str(exc))
                    errors.append(repr(exc))
        assert len(errors) == 6
        assert any(log.get("event") == "http.retry" for log in logs)
        dump = json.dumps(logs, default=str) + "\n".join(errors)
        assert TOKEN not in dump

    def test_server_echoing_the_token_is_masked(self, fake: FakeHubSpot) -> None:
        """Even an error body that echoes the token is masked in our message."""
        fake.fail_next("pipelines", Fault(401, body={"message": f"bad token {TOKEN}"}))
        with pytest.raises(AuthError) as caught:
            make_connector(fake).pipelines()
        assert TOKEN not in str(caught.value)
        assert "bad token ***" in str(caught.value)


class TestRateLimits:
    """The client-side limiters keep under HubSpot's limits."""

    def _run(self, fake: FakeHubSpot, **settings: Any) -> list[StreamItem]:
        fake.add_deals(2750)
        connector = make_connector(fake, **settings)
        cursor = full_then_wait(fake, connector)
        fake.modify(fake.live_ids()[:1500], amount="3")
        return list(connector.deals(cursor))

    def test_limiter_keeps_under_the_limits(self, fake: FakeHubSpot) -> None:
        """Configured at the portal's limits, a sync never sees a 429."""
        fake.enforce_limits(per_10s=10, search_per_s=2)
        items = self._run(fake, requests_per_10s=10, search_requests_per_second=2)
        assert len(deals_of(items)) == 1500
        assert fake.rate_limited == 0
        assert fake.clock.sleeps > 0

    @pytest.mark.parametrize("retry_after", [None, "10"])
    def test_429_from_a_stricter_portal_is_absorbed(self, fake: FakeHubSpot,
                                                    retry_after: str | None) -> None:
        """Configured too high, the sync meets 429s, waits them out and still completes."""
        fake.enforce_limits(per_10s=10, search_per_s=2, retry_after=retry_after)
        items = self._run(fake, requests_per_10s=1000, search_requests_per_second=50)
        assert len(deals_of(items)) == 1500
        assert fake.rate_limited > 0


class TestClassify:
    """Every API area's exception class is classified by shape."""

    @pytest.mark.parametrize("area", ["deals", "pipelines", "owners"])
    @pytest.mark.parametrize(
        ("status", "retry_after", "error", "retried_after"),
        [(429, "3", RateLimitError, 3.0), (429, None, RateLimitError, None),
         (502, None, RetriableAPIError, None), (401, None, AuthError, None),
         (530, None, AuthError, None), (404, None, FatalAPIError, None)],
    )
    def test_each_area(self, area: str, status: int, retry_after: str | None,
                       error: type[RemoteError], retried_after: float | None) -> None:
        """Unrelated ApiException classes of deals, pipelines and owners map alike."""
        module = importlib.import_module(f"hubspot.crm.{area}")
        exc = module.ApiException(status=status, reason="x")
        exc.body = json.dumps(ERRORS["rate_limit_ten_secondly"]).encode()
        exc.headers = {"Retry-After": retry_after} if retry_after else {}
        mapped = classify_hubspot_error(exc, what="HubSpot x")
        assert type(mapped) is error
        if isinstance(mapped, RetriableAPIError):
            assert mapped.retry_after == retried_after

    def test_foreign_errors_are_not_ours(self) -> None:
        """A bug (not an API failure) is re-raised as it is."""
        assert classify_hubspot_error(KeyError("x"), what="HubSpot x") is None

    def test_masks_before_cutting(self) -> None:
        """A token echoed at the 200-character cut is still masked, not half shown."""
        exc = importlib.import_module("hubspot.crm.deals").ApiException(status=400, reason="x")
        exc.body = json.dumps({"message": "x" * 190 + TOKEN})
        exc.headers = {}
        mapped = classify_hubspot_error(exc, what="HubSpot x", secret=TOKEN)
        assert mapped is not None
        assert TOKEN[:10] not in str(mapped)
