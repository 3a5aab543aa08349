"""The shared HTTP failure policy: classification, backoff, Retry-After, limiter, requests wrapper."""

from __future__ import annotations

import datetime as dt
import random

import pytest
import requests
import responses
from structlog.testing import capture_logs

from sales_velocity.kernel.errors import AuthError, FatalAPIError, RateLimitError, RetriableAPIError
from sales_velocity.kernel.http import (
    RateLimiter,
    RetryPolicy,
    backoff_delay,
    call_with_retry,
    classify_status,
    new_session,
    parse_retry_after,
    redact_url,
    request,
)


class FakeClock:
    """A monotonic clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        """The current fake time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance time instead of waiting."""
        self.slept.append(seconds)
        self.now += seconds


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "kind"),
        [(429, RateLimitError), (500, RetriableAPIError), (502, RetriableAPIError),
         (0, RetriableAPIError), (401, AuthError), (403, AuthError), (400, FatalAPIError),
         (404, FatalAPIError)],
    )
    def test_status_maps_to_what_the_caller_should_do(self, status: int, kind: type) -> None:
        """Each status maps to exactly one error class: retry, fail the source, or fix the token."""
        error = classify_status(status, what="GET deals")
        assert type(error) is kind

    def test_success_is_not_an_error(self) -> None:
        """2xx and 3xx statuses classify as no error."""
        assert classify_status(200, what="x") is None
        assert classify_status(304, what="x") is None

    def test_auth_hint_is_in_the_message(self) -> None:
        """A 401 says what to fix."""
        error = classify_status(401, what="GET deals", auth_hint="needs scope crm.objects.deals.read")
        assert "crm.objects.deals.read" in str(error)


class TestBackoff:
    def test_delays_grow_and_are_capped(self) -> None:
        """Backoff grows exponentially with jitter in [cap/2, cap] and never passes max_delay."""
        policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=8.0)
        rng = random.Random(1)
        for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
            delay = backoff_delay(attempt, policy, rng)
            assert cap / 2 <= delay <= cap

    def test_retry_after_seconds_and_http_date(self) -> None:
        """Retry-After is read as seconds or as an HTTP-date; junk is ignored."""
        now = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
        assert parse_retry_after("7") == 7.0
        assert parse_retry_after("Thu, 26 Nov 2026 12:00:30 GMT", now) == 30.0
        assert parse_retry_after("soon") is None
        assert parse_retry_after(None) is None


class TestCallWithRetry:
    def test_retries_retriable_errors_then_succeeds(self) -> None:
        """Two 502s then success: three calls, two waits, the result returned."""
        clock = FakeClock()
        bad = RetriableAPIError("x", status=502)
        outcomes: list[Exception | str] = [bad, bad, "ok"]

        def call() -> str:
            item = outcomes.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        with capture_logs() as logs:
            result = call_with_retry(call, policy=RetryPolicy(), what="GET", sleep=clock.sleep)
        assert result == "ok"
        assert len(clock.slept) == 2
        assert [e["event"] for e in logs] == ["http.retry", "http.retry"]

    def test_retry_after_is_honoured_and_clamped(self) -> None:
        """A 429 with Retry-After waits that long, but never more than max_delay."""
        clock = FakeClock()
        errors = [RateLimitError("429", status=429, retry_after=3.0),
                  RateLimitError("429", status=429, retry_after=999.0)]

        def call() -> str:
            if errors:
                raise errors.pop(0)
            return "ok"

        call_with_retry(call, policy=RetryPolicy(max_delay=20.0), what="GET", sleep=clock.sleep)
        assert clock.slept == [3.0, 20.0]

    def test_gives_up_after_max_attempts(self) -> None:
        """Retriable errors are retried a bounded number of times, then raised with the count."""
        clock = FakeClock()
        calls = []

        def call() -> None:
            calls.append(1)
            raise RetriableAPIError("GET: server error (HTTP 503)", status=503)

        with pytest.raises(RetriableAPIError, match="gave up after 3 attempts"):
            call_with_retry(call, policy=RetryPolicy(max_attempts=3), what="GET", sleep=clock.sleep)
        assert len(calls) == 3

    def test_fatal_errors_are_not_retried(self) -> None:
        """An auth error is raised at once."""
        calls = []

        def call() -> None:
            calls.append(1)
            raise AuthError("denied", status=401)

        with pytest.raises(AuthError):
            call_with_retry(call, policy=RetryPolicy(), what="GET", sleep=lambda s: None)
        assert len(calls) == 1

    def test_foreign_exceptions_are_classified(self) -> None:
        """A client library's exception is mapped through ``classify``; unmapped ones propagate."""

        class ClientError(Exception):
            status = 429

        attempts = []

        def call() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise ClientError()
            return "ok"

        def classify(exc: BaseException) -> RetriableAPIError | None:
            return classify_status(429, what="search") if isinstance(exc, ClientError) else None  # type: ignore[return-value]

        assert call_with_retry(call, policy=RetryPolicy(), what="x", classify=classify,
                               sleep=lambda s: None) == "ok"
        empty: dict[str, str] = {}
        with pytest.raises(KeyError):
            call_with_retry(lambda: empty["x"], policy=RetryPolicy(), what="x", classify=classify)


class TestRateLimiter:
    def test_keeps_under_the_rate(self) -> None:
        """Ten calls at 4 per second take at least two seconds of (fake) time."""
        clock = FakeClock()
        limiter = RateLimiter(4, 1.0, clock=clock, sleep=clock.sleep)
        stamps = []
        for _ in range(10):
            limiter.acquire()
            stamps.append(clock.now)
        assert stamps[-1] >= 2.0
        for i in range(len(stamps) - 4):
            assert stamps[i + 4] - stamps[i] >= 1.0

    def test_counts_our_calls_in_the_window_when_each_is_granted(self) -> None:
        """granted_in_window counts the calls of the last rolling window, the granted one included."""
        clock = FakeClock()
        limiter = RateLimiter(3, 1.0, clock=clock, sleep=clock.sleep)
        counts = []
        for step in (0.0, 0.2, 0.2, 0.7, 0.5):
            clock.now += step
            limiter.acquire()
            counts.append(limiter.granted_in_window)
        assert counts == [1, 2, 3, 3, 2]  # at 1.1 s the first call has left; at 1.6 s the next two

    def test_pause_holds_every_caller(self) -> None:
        """After pause(5), the next call waits five seconds."""
        clock = FakeClock()
        limiter = RateLimiter(100, 10.0, clock=clock, sleep=clock.sleep)
        limiter.pause(5.0)
        limiter.acquire()
        assert clock.now == 5.0


class TestRequest:
    @responses.activate
    def test_retries_5xx_and_returns_the_good_response(self) -> None:
        """A 502 then a 200: the wrapper retries with a timeout and returns the 200."""
        responses.get("https://crm.test/deals", status=502)
        responses.get("https://crm.test/deals", json={"ok": True})
        response = request(new_session(), "GET", "https://crm.test/deals", what="GET deals",
                           policy=RetryPolicy(), sleep=lambda s: None)
        assert response.json() == {"ok": True}
        assert len(responses.calls) == 2

    @responses.activate
    def test_html_403_is_a_clear_fatal_error(self) -> None:
        """A 403 with an HTML body (a block page) fails at once and says so."""
        responses.get("https://crm.test/deals", status=403, body="<html>blocked</html>",
                      content_type="text/html")
        with pytest.raises(AuthError, match="HTML response"):
            request(new_session(), "GET", "https://crm.test/deals", what="GET deals",
                    policy=RetryPolicy(), sleep=lambda s: None)
        assert len(responses.calls) == 1

    @responses.activate
    def test_connection_errors_are_retriable(self) -> None:
        """A connection error is retried like a 5xx and reported without the URL's query."""
        responses.get("https://crm.test/deals", body=requests.ConnectionError("reset"))
        with pytest.raises(RetriableAPIError, match="ConnectionError"):
            request(new_session(), "GET", "https://crm.test/deals?api_token=s3cr3t", what="GET deals",
                    policy=RetryPolicy(max_attempts=2), sleep=lambda s: None)

    def test_redact_url_masks_tokens_and_userinfo(self) -> None:
        """Credentials in query strings and userinfo never survive redaction."""
        url = "https://user:pw@acme.pipedrive.com/api/v1/users?api_token=s3cr3t&limit=5"
        redacted = redact_url(url)
        assert "s3cr3t" not in redacted
        assert "pw" not in redacted
        assert "limit=5" in redacted
