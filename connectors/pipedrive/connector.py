"""Pipedrive connector: deals from API v2, incrementally, with deletes, archives and rotting.

What it reads (API v2 unless noted; v1 deal lists are deprecated and out of
support, and ``/v1/recents`` only reaches back one month, so neither can carry
the sync):

* pipelines and stages (``/api/v2/pipelines``, ``/api/v2/stages``) with
  ``deal_probability`` and the rotting setting; users from ``/api/v1/users``
  (v2 has no user list);
* deals from ``/api/v2/deals`` with ``status=open,won,lost,deleted`` (deleted
  deals stay visible for 30 days), sorted by ``update_time`` ascending, 500 per
  page, cursor-paginated, and ``/api/v2/deals/archived`` (archived deals are
  not in ``/deals`` since 2025-07-15) with the same filters;
* custom fields by *name* through ``/api/v2/dealFields`` (never hard-coded hashes).

Next/last activity dates: v2 deals no longer carry ``next_activity_date`` or
``last_activity_date``. We ask for ``include_fields=next_activity_id,last_activity_id``
and look the ids up in batches of 100 with ``/api/v2/activities?ids=...`` (one
request per 50 deals at worst). The alternatives are worse: the v1 deal lists
that had the dates are out of support, ``/v1/recents`` only covers a month, and
one ``/v1/deals/{id}`` call per deal would cost far more of the daily budget.
Only open deals are looked up, because only open deals are checked for hygiene;
closed deals keep no activity dates. Set ``fetch_activities = false`` to skip
the look-ups entirely.

The cursor is the highest deal ``update_time`` seen (see ``pipedrive.paging``).
``deals(None)`` reads everything and ends with ``Checkpoint(complete=True)``, so
the engine marks deals that are gone (purged after 30 days) as deleted;
``deals(cursor)`` reads what changed since ``cursor - overlap``. The archived
list is read first, then the deal list with a checkpoint after every page.
Assumption (not documented by Pipedrive): archiving and deleting a deal moves
its ``update_time``; a ``--full`` sync corrects the store if that ever fails.

Rate limits: every request goes through ``kernel.http.request`` (timeouts,
retries with backoff, ``Retry-After``). A client-side limiter keeps under the
burst limit, and the ``x-ratelimit-remaining``/``x-ratelimit-reset`` headers
pause it when the 2-second window is spent. When the company's daily token
budget is spent (a 429 with ``x-daily-ratelimit-token-remaining: 0`` or
``x-daily-requests-left: 0``), the pull stops with ``BudgetExhaustedError``;
the next run resumes from the last checkpoint. A 403 with an HTML page means
Pipedrive blocked the token (after repeated rate-limit violations): that is a
``FatalAPIError``, never retried.

The token travels only in the ``x-api-token`` header, so it cannot reach a URL,
a log line or an error message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import requests
import structlog

from sales_velocity.connectors.base import (
    Checkpoint,
    Deal,
    Owner,
    Pipeline,
    Rejected,
    SourceSettings,
    StreamItem,
)
from sales_velocity.connectors.pipedrive.mapping import (
    CustomField,
    activity_time,
    map_deal,
    map_owner,
    map_pipelines,
    parse_time,
    resolve_custom_fields,
)
from sales_velocity.connectors.pipedrive.paging import CursorPaginator, Watermark, parse_cursor
from sales_velocity.connectors.pipedrive.settings import PipedriveSettings
from sales_velocity.kernel.errors import AuthError, BudgetExhaustedError, FatalAPIError
from sales_velocity.kernel.http import RateLimiter, RetryPolicy, new_session, request

__all__ = ["PAGE_SIZE", "PipedriveConnector", "PipedriveSettings"]

log = structlog.get_logger(__name__)

PAGE_SIZE = 500
"""Items per page on v2 list endpoints (the documented maximum)."""
ACTIVITY_BATCH = 100
"""Ids per ``/api/v2/activities?ids=`` request (the documented maximum)."""
DEAL_STATUSES = "open,won,lost,deleted"
DEAL_INCLUDE_FIELDS = "next_activity_id,last_activity_id"
BURST_WINDOW_SECONDS = 2.0
"""Pipedrive's burst limits count requests per rolling 2-second window."""
MAX_PAUSE_SECONDS = 60.0
ARRIVAL_MARGIN_SECONDS = 0.1
"""Added to each 2-second window: the server counts a call when it arrives, and one call
arriving later than the call 20 before it by more than this is a 429 (0.05 s drew one
in three benchmark runs on a busy machine)."""
MAX_ARRIVAL_MARGIN_SECONDS = 0.4
BUDGET_RECHECK_SECONDS = 900.0
"""After a response said the daily budget is at 0, requests are refused locally this long."""

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _header_number(response: requests.Response, name: str) -> float | None:
    value = response.headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class PipedriveConnector:
    """Reads one Pipedrive company (see the module docstring for what and how).

    Args:
        settings: validated settings.
        session: a ``requests`` session to use (its ``x-api-token`` header is set).
        sleep: how to wait (tests pass a fake).
        clock: monotonic seconds, for the rate limiter.
        now: the current time (aware UTC), for the cursor cap.
    """

    settings_model: ClassVar[type[SourceSettings]] = PipedriveSettings
    kind = "pipedrive"

    def __init__(
        self,
        settings: PipedriveSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Clock = _utcnow,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._session = session or new_session()
        self._session.headers["x-api-token"] = settings.api_token.get_secret_value()
        self._session.headers["Accept"] = "application/json"
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self._limiter = RateLimiter(settings.requests_per_window, BURST_WINDOW_SECONDS,
                                    clock=clock, sleep=sleep, margin=ARRIVAL_MARGIN_SECONDS)
        self._policy = RetryPolicy(max_attempts=settings.max_attempts)
        self._budget_spent_at: float | None = None
        self._activities_allowed = settings.fetch_activities
        self.responses_seen = 0

    def __repr__(self) -> str:
        return f"PipedriveConnector(name={self.name!r}, company_domain={self.settings.company_domain!r})"

    # ----------------------------------------------------------------- HTTP

    def _on_response(self, response: requests.Response) -> None:
        """Pace by the rate-limit headers; stop on a spent budget or a block."""
        self.responses_seen += 1
        status = response.status_code
        daily_tokens = _header_number(response, "x-daily-ratelimit-token-remaining")
        daily_requests = _header_number(response, "x-daily-requests-left")
        if status == 429 and 0 in (daily_tokens, daily_requests):
            raise BudgetExhaustedError(
                f"Pipedrive source {self.name!r}: the company's daily API budget is spent "
                "(HTTP 429, daily remaining 0); it resets at midnight, and the next run "
                "resumes from the last checkpoint",
                status=429,
            )
        if status == 403 and "html" in response.headers.get("Content-Type", "").lower():
            raise FatalAPIError(
                f"Pipedrive source {self.name!r}: the token is blocked (HTTP 403 with an HTML page, "
                "usually after repeated rate-limit violations); not retrying. Wait, then check the "
                "token's API usage in Pipedrive's company settings",
                status=403,
            )
        remaining = _header_number(response, "x-ratelimit-remaining")
        # A window we filled ourselves is already paced exactly by the limiter; the header's
        # whole-second reset would only over-wait. A window full before we filled it means
        # other integrations share the token's budget: then the server's reset rules. Our
        # count is the one at send time: by the time the response is read, our oldest call
        # may have left the window although the server counted it.
        shared = remaining is not None and remaining <= 0 and (
            self._limiter.granted_in_window < self._limiter.max_calls)
        if status == 429 and not shared:
            # our own count said the call fitted: arrivals are more uneven than the margin allows
            self._limiter.margin = min(self._limiter.margin * 2, MAX_ARRIVAL_MARGIN_SECONDS)
        if status == 429 or shared:
            reset = _header_number(response, "x-ratelimit-reset")
            wait = min(reset if reset and reset > 0 else BURST_WINDOW_SECONDS, MAX_PAUSE_SECONDS)
            self._limiter.pause(wait)
            log.info("pipedrive.paced", source=self.name, status=status, wait_s=wait)
        if 200 <= status < 300 and daily_tokens is not None and daily_tokens <= 0:
            self._budget_spent_at = self._clock()

    def _get(self, api: str, path: str, params: Mapping[str, Any] | None = None, *,
             once: bool = False) -> dict[str, Any]:
        """GET one JSON page; ``api`` is ``v1`` or ``v2``; ``once``: one attempt, short timeouts."""
        what = f"Pipedrive GET /api/{api}{path}"
        spent_at = self._budget_spent_at
        if spent_at is not None and self._clock() - spent_at < BUDGET_RECHECK_SECONDS:
            raise BudgetExhaustedError(
                f"Pipedrive source {self.name!r}: the company's daily API budget is spent "
                "(x-daily-ratelimit-token-remaining: 0); the next run resumes from the last checkpoint",
                status=429,
            )
        response = request(
            self._session, "GET", f"{self.settings.root_url}/api/{api}{path}",
            what=what, policy=RetryPolicy(max_attempts=1) if once else self._policy, limiter=self._limiter,
            timeout=(5.0, 15.0) if once else (10.0, self.settings.timeout_seconds),
            auth_hint=f"check api_token for company {self.settings.company_domain!r}",
            on_response=self._on_response, sleep=self._sleep, params=dict(params or {}),
            deadline_s=self.settings.request_deadline_seconds, max_bytes=self.settings.max_response_bytes,
        )
        try:
            body = response.json()
        except ValueError:
            raise FatalAPIError(f"{what}: the answer is not JSON (HTTP {response.status_code})",
                                status=response.status_code) from None
        if not isinstance(body, dict) or body.get("success") is False:
            error = str(body.get("error", ""))[:200] if isinstance(body, dict) else ""
            raise FatalAPIError(f"{what}: the API reported a failure: {error or 'no detail'}",
                                status=response.status_code)
        return body

    def _pages(self, path: str, params: Mapping[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Every page of a v2 list, following ``next_cursor``."""
        pager = CursorPaginator(f"Pipedrive GET /api/v2{path}")
        while not pager.finished:
            query = dict(params)
            if pager.cursor is not None:
                query["cursor"] = pager.cursor
            body = self._get("v2", path, query)
            data = body.get("data") or []
            pager.advance(body)
            yield [item for item in data if isinstance(item, dict)]

    def _list(self, path: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return [item for page in self._pages(path, {"limit": PAGE_SIZE, **(params or {})})
                for item in page]

    # ----------------------------------------------------------------- catalog

    def check(self) -> str:
        """Read one pipeline (a cheap call, tried once) to prove the token and domain work."""
        self._get("v2", "/pipelines", {"limit": 1}, once=True)
        return f"Pipedrive {self.settings.company_domain} ({self.settings.root_url}): token accepted"

    def pipelines(self) -> list[Pipeline]:
        """Pipelines with their stages (probability and rotting days)."""
        return map_pipelines(self._list("/pipelines"), self._list("/stages"))

    def owners(self) -> list[Owner]:
        """Every user of the company, with e-mail (from ``/api/v1/users``)."""
        users = self._get("v1", "/users").get("data") or []
        return [map_owner(user) for user in users if isinstance(user, dict) and "id" in user]

    def custom_fields(self) -> tuple[CustomField, ...]:
        """The configured custom fields, resolved by name (no call when none are configured).

        Read once per pull, so a renamed field is noticed on the next sync.

        Raises:
            FatalAPIError: a configured name matches no custom deal field, or several.
        """
        if not self.settings.custom_fields:
            return ()
        try:
            resolved = resolve_custom_fields(self.settings.custom_fields, self._list("/dealFields"))
        except LookupError as exc:
            raise FatalAPIError(f"Pipedrive source {self.name!r}: custom_fields: {exc}") from None
        log.debug("pipedrive.custom_fields", source=self.name,
                  fields={c.name: c.canonical for c in resolved})
        return resolved

    # ----------------------------------------------------------------- deals

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """Stream deals changed since the cursor (``None``: all, ending in a complete checkpoint)."""
        try:
            resume = parse_cursor(since)
        except ValueError:
            log.warning("pipedrive.bad_cursor", source=self.name, cursor=since)
            resume = None
        mark = Watermark(resume, cap=self._now())
        full = resume is None
        params: dict[str, Any] = {
            "status": DEAL_STATUSES, "sort_by": "update_time", "sort_direction": "asc",
            "limit": PAGE_SIZE, "include_fields": DEAL_INCLUDE_FIELDS,
        }
        updated_since = mark.updated_since(dt.timedelta(seconds=self.settings.overlap_seconds))
        if updated_since is not None:
            params["updated_since"] = updated_since
        custom = self.custom_fields()
        self._activities_allowed = self.settings.fetch_activities
        counts = {"deals": 0, "archived": 0, "rejected": 0, "pages": 0}
        started = self.responses_seen
        log.info("pipedrive.pull", source=self.name, full=full, updated_since=updated_since)
        for page in self._pages("/deals/archived", params):
            yield from self._page_items(page, archived=True, custom=custom, mark=mark, counts=counts)
        yield Checkpoint(mark.cursor())
        for page in self._pages("/deals", params):
            yield from self._page_items(page, archived=False, custom=custom, mark=mark, counts=counts)
            yield Checkpoint(mark.cursor())
        if not mark.in_order:
            log.warning("pipedrive.unsorted", source=self.name,
                        detail="deals arrived out of update_time order; cursor moved only at the end")
        log.info("pipedrive.pulled", source=self.name, full=full, responses=self.responses_seen - started,
                 **counts)
        yield Checkpoint(mark.cursor(final=True), complete=full)

    def _page_items(
        self,
        page: list[dict[str, Any]],
        *,
        archived: bool,
        custom: Iterable[CustomField],
        mark: Watermark,
        counts: dict[str, int],
    ) -> Iterator[Deal | Rejected]:
        counts["pages"] += 1
        activities = self._activity_times(page)
        for raw in page:
            item = map_deal(raw, source=self.name, company_domain=self.settings.company_domain,
                            archived=archived, custom_fields=custom, activities=activities)
            if isinstance(item, Deal):
                counts["archived" if item.archived else "deals"] += 1
                mark.observe(item.updated_at, ordered=not archived)
            else:
                counts["rejected"] += 1
                with contextlib.suppress(ValueError):
                    mark.observe(parse_time(raw.get("update_time")), ordered=not archived)
            yield item

    def _activity_times(self, page: Iterable[Mapping[str, Any]]) -> dict[int, dt.datetime | None]:
        """Due times of the next/last activities of the page's open deals."""
        if not self._activities_allowed:
            return {}
        wanted = sorted({
            int(raw[key]) for raw in page
            if raw.get("status") == "open" and not raw.get("is_deleted")
            for key in ("next_activity_id", "last_activity_id") if isinstance(raw.get(key), int)
        })
        found: dict[int, dt.datetime | None] = {}
        for start in range(0, len(wanted), ACTIVITY_BATCH):
            ids = ",".join(str(i) for i in wanted[start:start + ACTIVITY_BATCH])
            try:
                activities = self._list("/activities", {"ids": ids})
            except AuthError as exc:
                if exc.status != 403:
                    raise
                log.warning("pipedrive.activities_forbidden", source=self.name,
                            detail="the token may not read activities; activity dates are left empty")
                self._activities_allowed = False
                return {}
            for activity in activities:
                try:
                    found[int(activity["id"])] = activity_time(activity)
                except (KeyError, TypeError, ValueError):
                    log.warning("pipedrive.bad_activity", source=self.name, activity=activity.get("id"))
        return found
