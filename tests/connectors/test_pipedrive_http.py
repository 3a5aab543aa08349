"""The Pipedrive connector over HTTP, with ``responses`` serving v2-shaped fixture payloads."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import responses
from responses import matchers
from structlog.testing import capture_logs

from sales_velocity.connectors.base import Checkpoint, Deal
from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sales_velocity.kernel.errors import AuthError, BudgetExhaustedError, FatalAPIError, RetriableAPIError
from sales_velocity.kernel.testing.contract import check_connector, check_stream
from sales_velocity.kernel.testing.fake_pipedrive import FIXTURES, FakeTime, fixture

TOKEN = "pd-secret-token-9f8e7d"
ROOT = "https://acme.pipedrive.com"
V2 = f"{ROOT}/api/v2"
NOW = dt.datetime(2025, 6, 10, 12, 0, tzinfo=dt.UTC)
EMPTY = {"success": True, "data": [], "additional_data": {"next_cursor": None}}


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """A ``responses`` mock that fails on unexpected requests."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def fake_time() -> FakeTime:
    """A clock that only ``sleep`` moves."""
    return FakeTime()


def connector(fake_time: FakeTime, **overrides: Any) -> PipedriveConnector:
    """A connector for company 'acme' with fake time."""
    raw: dict[str, Any] = {"name": "pipedrive", "kind": "pipedrive", "api_token": TOKEN,
                           "company_domain": "acme"}
    raw.update(overrides)
    return PipedriveConnector(PipedriveSettings.model_validate(raw), sleep=fake_time.sleep,
                              clock=fake_time.clock, now=lambda: NOW)


def paced_while_reading_the_catalog(pd: PipedriveConnector) -> list[MutableMapping[str, Any]]:
    """Read pipelines, stages and users; return the ``pipedrive.paced`` events it logged."""
    with capture_logs() as logs:
        pd.pipelines()
        pd.owners()
    return [e for e in logs if e["event"] == "pipedrive.paced"]


def add_deal_pages(rsps: responses.RequestsMock, *, archived: Any = None) -> None:
    """Archived list, then deal pages 1 and 2 (the second found by its cursor), then activities."""
    rsps.get(f"{V2}/deals/archived", json=archived or fixture("deals_archived.json"))
    cursor = fixture("deals_page1.json")["additional_data"]["next_cursor"]
    rsps.get(f"{V2}/deals", json=fixture("deals_page2.json"),
             match=[matchers.query_param_matcher({"cursor": cursor}, strict_match=False)])
    rsps.get(f"{V2}/deals", json=fixture("deals_page1.json"))
    rsps.get(f"{V2}/activities", json=fixture("activities.json"))


def query(call: Any) -> dict[str, str]:
    """The query parameters of a recorded call."""
    return dict(call.request.params)


class TestFullPull:
    def test_reads_archived_then_every_deal_page_and_ends_complete(self, rsps, fake_time):
        """A full pull reads both lists, checkpoints per page and ends with a complete checkpoint."""
        add_deal_pages(rsps)
        items = list(connector(fake_time).deals(None))
        deals, rejects, checkpoints = check_stream(items, "pipedrive")
        assert [d.external_id for d in deals] == ["880", "1042", "1043", "1044", "977"]
        assert not rejects
        assert [(c.cursor, c.complete) for c in checkpoints] == [
            (None, False),                        # after the archived list
            ("2025-06-04T07:45:12Z", False),      # after deal page 1
            ("2025-06-06T09:00:12Z", False),      # after deal page 2
            ("2025-06-06T09:00:12Z", True),       # the end: everything was read
        ]
        archived = {d.external_id: d.archived for d in deals}
        assert archived == {"880": True, "1042": False, "1043": False, "1044": False, "977": False}

    def test_asks_for_every_status_sorted_by_update_time_500_a_page(self, rsps, fake_time):
        """The deal lists are filtered and sorted so checkpoints are safe; no updated_since."""
        add_deal_pages(rsps)
        list(connector(fake_time).deals(None))
        deal_calls = [c for c in rsps.calls if c.request.path_url.startswith("/api/v2/deals")]
        assert len(deal_calls) == 3
        for call in deal_calls:
            params = query(call)
            assert params["status"] == "open,won,lost,deleted"
            assert (params["sort_by"], params["sort_direction"]) == ("update_time", "asc")
            assert params["limit"] == "500"
            assert params["include_fields"] == "next_activity_id,last_activity_id"
            assert "updated_since" not in params

    def test_activities_of_open_deals_are_looked_up_in_one_batch(self, rsps, fake_time):
        """Only open deals' activity ids are asked for, and their due times land on the deal."""
        add_deal_pages(rsps)
        deals = {d.external_id: d for d in connector(fake_time).deals(None) if isinstance(d, Deal)}
        activity_calls = [c for c in rsps.calls if c.request.path_url.startswith("/api/v2/activities")]
        assert [query(c)["ids"] for c in activity_calls] == ["5480,5521"]  # not 5490 of the won deal
        assert deals["1042"].next_activity_at == dt.datetime(2025, 6, 10, 15, 0, tzinfo=dt.UTC)
        assert deals["1043"].last_activity_at is None

    def test_activity_lookups_can_be_switched_off(self, rsps, fake_time):
        """``fetch_activities = false`` saves the look-ups."""
        add_deal_pages(rsps)
        list(connector(fake_time, fetch_activities=False).deals(None))
        assert not [c for c in rsps.calls if "/activities" in c.request.url]

    def test_the_token_goes_in_the_header_never_the_url(self, rsps, fake_time):
        """Every request carries x-api-token; no URL contains the token."""
        add_deal_pages(rsps)
        list(connector(fake_time).deals(None))
        assert rsps.calls
        for call in rsps.calls:
            assert call.request.headers["x-api-token"] == TOKEN
            assert TOKEN not in call.request.url


class TestIncrementalPull:
    def test_asks_for_changes_since_the_cursor_minus_the_overlap(self, rsps, fake_time):
        """``updated_since`` is the cursor minus 60 s, and the end is not 'complete'."""
        rsps.get(f"{V2}/deals/archived", json=EMPTY)
        rsps.get(f"{V2}/deals", json=fixture("deals_page2.json"))
        items = list(connector(fake_time).deals("2025-06-04T07:45:12Z"))
        for call in rsps.calls:
            assert query(call)["updated_since"] == "2025-06-04T07:44:12Z"
        final = items[-1]
        assert isinstance(final, Checkpoint)
        assert (final.cursor, final.complete) == ("2025-06-06T09:00:12Z", False)

    def test_nothing_changed_keeps_the_cursor(self, rsps, fake_time):
        """An empty answer does not move or drop the cursor."""
        rsps.get(f"{V2}/deals/archived", json=EMPTY)
        rsps.get(f"{V2}/deals", json=EMPTY)
        items = list(connector(fake_time).deals("2025-06-04T07:45:12Z"))
        assert items == [Checkpoint("2025-06-04T07:45:12Z"), Checkpoint("2025-06-04T07:45:12Z"),
                         Checkpoint("2025-06-04T07:45:12Z", complete=False)]
        assert len(rsps.calls) == 2

    def test_an_unreadable_cursor_falls_back_to_a_full_pull(self, rsps, fake_time):
        """A cursor this connector did not write is logged and ignored."""
        rsps.get(f"{V2}/deals/archived", json=EMPTY)
        rsps.get(f"{V2}/deals", json=EMPTY)
        with capture_logs() as logs:
            items = list(connector(fake_time).deals("page-7"))
        assert items[-1] == Checkpoint(None, complete=True)
        assert any(e["event"] == "pipedrive.bad_cursor" for e in logs)


class TestErrors:
    def test_a_bad_token_fails_at_once_with_a_hint(self, rsps, fake_time):
        """401 is an AuthError, not retried, and the message says what to check."""
        rsps.get(f"{V2}/deals/archived", json=fixture("error_401.json"), status=401)
        with pytest.raises(AuthError, match="HTTP 401") as caught:
            list(connector(fake_time).deals(None))
        assert "check api_token for company 'acme'" in str(caught.value)
        assert TOKEN not in str(caught.value)
        assert len(rsps.calls) == 1

    def test_a_403_html_page_is_a_block_not_a_retry_loop(self, rsps, fake_time):
        """Cloudflare's HTML 403 stops the source with 'blocked' after one request."""
        html = (FIXTURES / "blocked_403.html").read_text()
        rsps.get(f"{V2}/deals/archived", body=html, status=403, content_type="text/html")
        with pytest.raises(FatalAPIError, match="blocked") as caught:
            list(connector(fake_time).deals(None))
        assert not isinstance(caught.value, AuthError)
        assert len(rsps.calls) == 1
        assert fake_time.sleeps == []

    def test_a_429_waits_for_the_reset_header_and_retries(self, rsps, fake_time):
        """A burst 429 pauses for ``x-ratelimit-reset`` seconds, then the request succeeds."""
        headers = {"x-ratelimit-limit": "40", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"}
        rsps.get(f"{V2}/pipelines", json=fixture("error_429.json"), status=429, headers=headers)
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"))
        rsps.get(f"{V2}/stages", json=fixture("stages.json"))
        with capture_logs() as logs:
            pipelines = connector(fake_time).pipelines()
        assert [p.external_id for p in pipelines] == ["1", "2"]
        assert sum(fake_time.sleeps) == pytest.approx(2)  # backoff, then the rest of the reset
        assert [e["event"] for e in logs if e["event"] in ("pipedrive.paced", "http.retry")] == [
            "pipedrive.paced", "http.retry"]

    def test_an_empty_burst_window_pauses_the_next_request(self, rsps, fake_time):
        """``x-ratelimit-remaining: 0`` on a success makes the next call wait for the reset."""
        headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1.5"}
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"), headers=headers)
        rsps.get(f"{V2}/stages", json=fixture("stages.json"))
        connector(fake_time).pipelines()
        assert fake_time.sleeps == [pytest.approx(1.5)]

    def test_a_window_we_filled_ourselves_is_paced_by_the_limiter_alone(self, rsps, fake_time):
        """When our own calls filled the window, the header's whole-second reset adds no extra wait."""
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"), headers={"x-ratelimit-remaining": "1"})
        rsps.get(f"{V2}/stages", json=fixture("stages.json"),
                 headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"})
        rsps.get(f"{ROOT}/api/v1/users", json=fixture("users.json"))
        assert paced_while_reading_the_catalog(connector(fake_time, requests_per_window=2)) == []
        assert fake_time.sleeps == [pytest.approx(2.1)]  # the limiter: the window plus its margin

    def test_a_slow_response_does_not_make_our_own_full_window_look_shared(self, rsps, fake_time):
        """Our window count is taken at send time: latency that ages our oldest call out adds no pause."""
        def slow_full_window(request: Any) -> tuple[int, dict[str, str], str]:
            fake_time.now += 1.5  # the server answers late; our first call has left the window since
            return 200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}, json.dumps(
                fixture("stages.json"))

        def pipelines(request: Any) -> tuple[int, dict[str, str], str]:
            fake_time.now += 0.6
            return 200, {"x-ratelimit-remaining": "1"}, json.dumps(fixture("pipelines.json"))

        rsps.add_callback(responses.GET, f"{V2}/pipelines", callback=pipelines)
        rsps.add_callback(responses.GET, f"{V2}/stages", callback=slow_full_window)
        rsps.get(f"{ROOT}/api/v1/users", json=fixture("users.json"))
        assert paced_while_reading_the_catalog(connector(fake_time, requests_per_window=2)) == []
        assert fake_time.sleeps == []  # at the third call our first one is 2.1 s old: no wait at all

    def test_a_429_in_a_window_we_filled_widens_the_arrival_margin(self, rsps, fake_time):
        """A 429 although our own count said the call fitted doubles the window margin."""
        limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"), headers={"x-ratelimit-remaining": "1"})
        rsps.get(f"{V2}/stages", json=fixture("error_429.json"), status=429, headers=limited)
        rsps.get(f"{V2}/stages", json=fixture("stages.json"))
        pd = connector(fake_time, requests_per_window=2)
        pd.pipelines()
        assert pd._limiter.margin == pytest.approx(0.2)  # 0.1 doubled

    def test_a_spent_daily_budget_stops_with_a_clear_message(self, rsps, fake_time):
        """The daily-budget 429 is not retried: BudgetExhaustedError says the next run resumes."""
        headers = {"x-daily-ratelimit-token-remaining": "0", "x-ratelimit-remaining": "39"}
        rsps.get(f"{V2}/deals/archived", json=fixture("error_429.json"), status=429, headers=headers)
        with pytest.raises(BudgetExhaustedError, match="daily API budget is spent") as caught:
            list(connector(fake_time).deals("2025-06-04T07:45:12Z"))
        assert "next run resumes" in str(caught.value)
        assert len(rsps.calls) == 1

    def test_the_old_daily_header_also_counts(self, rsps, fake_time):
        """A 429 with ``x-daily-requests-left: 0`` is a spent budget too."""
        rsps.get(f"{V2}/pipelines", json=fixture("error_429.json"), status=429,
                 headers={"x-daily-requests-left": "0"})
        with pytest.raises(BudgetExhaustedError):
            connector(fake_time).pipelines()

    def test_the_page_that_spends_the_budget_is_kept(self, rsps, fake_time):
        """When a success reports 0 tokens left, its deals and checkpoint still come first."""
        rsps.get(f"{V2}/deals/archived", json=fixture("deals_archived.json"),
                 headers={"x-daily-ratelimit-token-remaining": "0"})
        stream = connector(fake_time).deals(None)
        got = [next(stream), next(stream)]
        with pytest.raises(BudgetExhaustedError):
            next(stream)
        assert [type(i).__name__ for i in got] == ["Deal", "Checkpoint"]
        assert len(rsps.calls) == 1

    def test_a_spent_budget_is_checked_again_later(self, rsps, fake_time):
        """A long-lived connector refuses calls for a while, then asks the API again."""
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"),
                 headers={"x-daily-ratelimit-token-remaining": "0"})
        rsps.get(f"{V2}/stages", json=fixture("stages.json"))
        conn = connector(fake_time)
        with pytest.raises(BudgetExhaustedError):
            conn.pipelines()
        with pytest.raises(BudgetExhaustedError):
            conn.owners()
        assert len(rsps.calls) == 1
        fake_time.now += 901
        rsps.get(f"{ROOT}/api/v1/users", json=fixture("users.json"))
        assert len(conn.owners()) == 2

    def test_server_errors_are_retried_then_reported(self, rsps, fake_time):
        """5xx is retried with backoff up to max_attempts, then a RetriableAPIError."""
        rsps.get(f"{V2}/pipelines", json={"success": False, "error": "Internal"}, status=502)
        with pytest.raises(RetriableAPIError, match="gave up after 3 attempts"):
            connector(fake_time, max_attempts=3).pipelines()
        assert len(rsps.calls) == 3
        assert len(fake_time.sleeps) == 2

    def test_a_success_that_is_not_json_is_fatal(self, rsps, fake_time):
        """A 200 with an HTML page (a proxy) is reported, not parsed."""
        rsps.get(f"{V2}/pipelines", body="<html>login</html>", content_type="text/html")
        with pytest.raises(FatalAPIError, match="not JSON"):
            connector(fake_time).pipelines()

    def test_a_missing_custom_field_fails_before_any_deal_is_read(self, rsps, fake_time):
        """A configured name that is not a custom field stops the pull with the names that exist."""
        rsps.get(f"{V2}/dealFields", json=fixture("deal_fields.json"))
        conn = connector(fake_time, custom_fields={"Nxt step": "next_step"})
        with pytest.raises(FatalAPIError, match="custom_fields: no custom deal field is named 'Nxt step'"):
            list(conn.deals(None))
        assert [c.request.path_url.split("?")[0] for c in rsps.calls] == ["/api/v2/dealFields"]

    def test_forbidden_activities_leave_dates_empty(self, rsps, fake_time):
        """A token without activity access still syncs deals, without activity dates."""
        rsps.get(f"{V2}/deals/archived", json=EMPTY)
        rsps.get(f"{V2}/deals", json=fixture("deals_page1.json") | {"additional_data": {"next_cursor": None}})
        rsps.get(f"{V2}/activities", json={"success": False, "error": "Scope missing"}, status=403)
        with capture_logs() as logs:
            deals = [d for d in connector(fake_time).deals(None) if isinstance(d, Deal)]
        assert deals[0].next_activity_at is None
        assert any(e["event"] == "pipedrive.activities_forbidden" for e in logs)


class TestCatalogAndContract:
    def test_owners_pipelines_and_check(self, rsps, fake_time):
        """Users with e-mail, pipelines with stages, and a one-call check; the contract holds."""
        rsps.get(f"{ROOT}/api/v1/users", json=fixture("users.json"))
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"))
        rsps.get(f"{V2}/stages", json=fixture("stages.json"))
        conn = connector(fake_time)
        check_connector(conn)
        assert [o.email for o in conn.owners()] == ["kari@example.com", "ola@example.com"]
        before = len(rsps.calls)
        assert conn.check() == "Pipedrive acme (https://acme.pipedrive.com): token accepted"
        assert len(rsps.calls) == before + 1
        assert query(rsps.calls[-1]) == {"limit": "1"}

    def test_the_custom_fields_are_resolved_once_per_pull(self, rsps, fake_time):
        """The deal fields are read once per pull (a renamed field is noticed next time)."""
        rsps.get(f"{V2}/dealFields", json=fixture("deal_fields.json"))
        rsps.get(f"{V2}/deals/archived", json=EMPTY)
        rsps.get(f"{V2}/deals", json=EMPTY)
        conn = connector(fake_time, custom_fields={"Next step": "next_step"})
        list(conn.deals(None))
        list(conn.deals(None))
        assert sum(1 for c in rsps.calls if "dealFields" in c.request.url) == 2


class TestSecrets:
    def test_the_token_appears_in_no_log_line_or_error(self, rsps, fake_time):
        """Across a retried 429, a success and a 401, no log or message holds the token."""
        rsps.get(f"{V2}/pipelines", json=fixture("error_429.json"), status=429,
                 headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"})
        rsps.get(f"{V2}/pipelines", json=fixture("pipelines.json"))
        rsps.get(f"{V2}/stages", json=fixture("stages.json"))
        rsps.get(f"{V2}/deals/archived", json=fixture("error_401.json"), status=401)
        conn = connector(fake_time)
        with capture_logs() as logs:
            conn.pipelines()
            with pytest.raises(AuthError) as caught:
                list(conn.deals(None))
        assert logs
        assert TOKEN not in json.dumps(logs, default=str)
        assert TOKEN not in str(caught.value)
        assert TOKEN not in repr(caught.value)
        assert TOKEN not in repr(conn)
