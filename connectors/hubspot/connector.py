"""HubSpot connector: pipelines, owners and deals through the official client.

Requests go through ``hubspot-api-client`` (``HubSpot(access_token=...,
host=base_url)``) with the client's own retries off; every call runs inside
``kernel.http.call_with_retry`` (429/5xx/connection errors retried with
backoff and ``Retry-After``; 401/403 fail at once) behind two client-side
limiters: one for the app's requests per 10 s, one for the search API's
requests per second. A 429 whose ``policyName`` is ``DAILY`` is not retried: the
daily budget is spent and the next run resumes from the cursor.

How deals are pulled (``deals(since)``; cursor rules in ``hubspot.cursor``):

* **Full sweep** (no cursor, a full sweep to resume, or the periodic
  reconciliation every ``full_sync_every_days``): the list endpoint, 100 deals
  per page, then the archived list (``archived=true``: those deals are
  ``deleted``). A checkpoint after every page records the list position, so a
  crash resumes the sweep (and then searches for changes since it began, which
  the pages listed before the crash cannot show). An uninterrupted sweep ends
  with ``complete=True`` (deals the store has that HubSpot no longer lists at all
  become deleted); the cursor is the sweep's start time.
* **Incremental** (a cursor): first the archived list, yielding only deals
  archived since ``cursor - lookback`` as deleted (the list is HubSpot's recycle
  bin, so this costs one request per 100 recently deleted deals, and running
  it *before* the search means a crash can never move the cursor past a delete
  not yet recorded); then the search walk from ``cursor - lookback``, 200 per
  page, checkpointing after every page at the last fully delivered modification
  time, and finally at this sync's start. A sync with nothing changed costs four
  requests: pipelines, owners, one archived page, one search page.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import structlog
from hubspot import HubSpot
from hubspot.crm.deals import Filter, FilterGroup, PublicObjectSearchRequest

from sales_velocity.connectors.base import (
    Checkpoint,
    Deal,
    Owner,
    Pipeline,
    Rejected,
    SourceSettings,
    StreamItem,
)
from sales_velocity.connectors.hubspot.client import (
    DEALS_SCOPE_HINT,
    OWNERS_SCOPE_HINT,
    classify_hubspot_error,
    json_body,
    modified_ms,
    ms_of,
    next_after,
)
from sales_velocity.connectors.hubspot.cursor import (
    FullSweep,
    HubSpotCursor,
    ModifiedWalk,
    SearchQuery,
    WalkError,
)
from sales_velocity.connectors.hubspot.mapping import (
    Catalog,
    DealMapper,
    deal_properties,
    parse_owner,
    parse_pipelines,
    to_ms,
)
from sales_velocity.connectors.hubspot.settings import HubSpotSettings
from sales_velocity.kernel.errors import FatalAPIError
from sales_velocity.kernel.http import (
    DEFAULT_TIMEOUT,
    RateLimiter,
    RetryPolicy,
    call_with_retry,
)
from sales_velocity.kernel.watchdog import guard_pool_manager, watched

__all__ = [
    "LIST_PAGE_SIZE",
    "OWNERS_PAGE_SIZE",
    "SEARCH_PAGE_SIZE",
    "HubSpotConnector",
    "HubSpotSettings",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)

LIST_PAGE_SIZE = 100
"""``GET /crm/v3/objects/deals``: the maximum page without ``propertiesWithHistory``."""
SEARCH_PAGE_SIZE = 200
"""``POST /crm/v3/objects/deals/search``: the maximum page."""
OWNERS_PAGE_SIZE = 100
PIPELINES_TTL_S = 600.0
"""``deals()`` reuses pipelines fetched by ``pipelines()`` this recently (seconds)."""
DEFAULT_RETRY_POLICY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=60.0)
CHECK_POLICY = RetryPolicy(max_attempts=1)  # `velocity check`: a person is waiting; try once
CHECK_TIMEOUT = (5.0, 15.0)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class HubSpotConnector:
    """Reads pipelines, owners and deals from one HubSpot portal (see the module docstring)."""

    settings_model: ClassVar[type[SourceSettings]] = HubSpotSettings
    kind = "hubspot"

    def __init__(
        self,
        settings: HubSpotSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = _utcnow,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._sleep, self._clock, self._now = sleep, clock, now
        self._policy, self._rng = retry_policy, rng
        client = HubSpot(
            access_token=settings.access_token.get_secret_value(),
            host=settings.base_url,
            retry=False,  # our loop retries; urllib3 must not retry behind it
        )
        self._deals_api = client.crm.deals.basic_api
        self._search_api = client.crm.deals.search_api
        self._pipelines_api = client.crm.pipelines.pipelines_api
        self._owners_api = client.crm.owners.owners_api
        for api in (self._deals_api, self._search_api, self._pipelines_api, self._owners_api):
            guard_pool_manager(api.api_client.rest_client.pool_manager)  # total deadlines (watched)
        self._limiter = RateLimiter(settings.requests_per_10s, 10.0, clock=clock, sleep=sleep)
        self._search_limiter = RateLimiter(
            settings.search_requests_per_second, 1.0, clock=clock, sleep=sleep
        )
        self._catalog: tuple[float, Catalog] | None = None
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests sent (retries included), by endpoint: for logs and tests."""

    def __repr__(self) -> str:
        return f"HubSpotConnector(name={self.name!r}, base_url={self.settings.base_url!r})"

    # ------------------------------------------------------------------ requests

    def _call(self, endpoint: str, fn: Callable[[], T], *, search: bool = False,
              auth_hint: str = DEALS_SCOPE_HINT, policy: RetryPolicy | None = None) -> T:
        what = f"HubSpot {endpoint}"
        secret = self.settings.access_token.get_secret_value()
        deadline = self.settings.request_deadline_seconds
        started = time.monotonic()

        def attempt() -> T:
            self._limiter.acquire()
            if search:
                self._search_limiter.acquire()
            self.requests[endpoint] += 1
            left = max(deadline - (time.monotonic() - started), 0.001)
            with watched(left, what, deadline_s=deadline):
                return fn()

        return call_with_retry(
            attempt, policy=policy or self._policy, what=what, sleep=self._sleep, rng=self._rng,
            deadline_s=deadline,
            classify=lambda exc: classify_hubspot_error(exc, what=what, auth_hint=auth_hint,
                                                        secret=secret),
        )

    def _list_page(self, properties: list[str], after: str | None, *,
                   archived: bool) -> dict[str, Any]:
        endpoint = "GET /crm/v3/objects/deals" + ("?archived=true" if archived else "")
        return self._call(endpoint, lambda: self._json(self._deals_api.get_page(
            # live deals are the default: send ``archived`` only when it is true
            limit=LIST_PAGE_SIZE, after=after, properties=properties, archived=archived or None,
            _request_timeout=DEFAULT_TIMEOUT, _preload_content=False,
        )))

    def _json(self, response: Any) -> dict[str, Any]:
        return json_body(response, max_bytes=self.settings.max_response_bytes)

    def _search(self, query: SearchQuery, properties: list[str]) -> dict[str, Any]:
        request = PublicObjectSearchRequest(
            filter_groups=[FilterGroup(filters=[
                Filter(property_name=name, operator=op, value=value)
                for name, op, value in query.filters
            ])],
            sorts=[{"propertyName": query.sort, "direction": "ASCENDING"}],
            properties=properties,
            limit=SEARCH_PAGE_SIZE,
        )
        return self._call("POST /crm/v3/objects/deals/search", lambda: self._json(
            self._search_api.do_search(public_object_search_request=request,
                                       _request_timeout=DEFAULT_TIMEOUT, _preload_content=False),
        ), search=True)

    # ------------------------------------------------------------------ catalog

    def pipelines(self) -> list[Pipeline]:
        """Return the deal pipelines with their stages (won/lost from stage metadata)."""
        return list(self._fetch_catalog().pipelines)

    def _fetch_catalog(self) -> Catalog:
        page = self._call("GET /crm/v3/pipelines/deals", lambda: self._pipelines_api.get_all(
            object_type="deals", _request_timeout=DEFAULT_TIMEOUT,
        ))
        catalog = parse_pipelines(page.results or [])
        self._catalog = (self._clock(), catalog)
        return catalog

    def _current_catalog(self) -> Catalog:
        if self._catalog is not None and self._clock() - self._catalog[0] < PIPELINES_TTL_S:
            return self._catalog[1]
        return self._fetch_catalog()

    def owners(self) -> list[Owner]:
        """Return the active owners; ``hubspot_owner_id`` on deals is an owner's ``id``."""
        owners: dict[str, Owner] = {}
        after: str | None = None

        def fetch() -> Any:
            return self._owners_api.get_page(limit=OWNERS_PAGE_SIZE, after=after,
                                             _request_timeout=DEFAULT_TIMEOUT)

        while True:
            page = self._call("GET /crm/v3/owners/", fetch, auth_hint=OWNERS_SCOPE_HINT)
            for result in page.results or []:
                owner = parse_owner(result)
                owners[owner.external_id] = owner
            after = next_after(page, after)
            if after is None:
                return list(owners.values())

    def check(self) -> str:
        """Read one deal to prove the token works (one attempt, short timeouts); return what answered."""
        self._call("GET /crm/v3/objects/deals", lambda: self._deals_api.get_page(
            limit=1, properties=["hs_object_id"], _request_timeout=CHECK_TIMEOUT,
        ), policy=CHECK_POLICY)
        portal = f" portal {self.settings.portal_id}" if self.settings.portal_id else ""
        return f"HubSpot{portal} at {self.settings.base_url}: token accepted, deals readable"

    # ------------------------------------------------------------------ deals

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """Stream deals changed since the cursor ``since`` (``None``: a full sweep).

        Raises:
            FatalAPIError: the stored cursor is unreadable, or the search answered
                out of order; other ``RemoteError``s as classified.
        """
        start_ms = to_ms(self._now())
        try:
            cursor = HubSpotCursor.decode(since) if since else None
        except ValueError as exc:
            raise FatalAPIError(
                f"HubSpot source {self.name!r}: stored cursor unreadable ({exc}); "
                "run a full sync (velocity sync --full)"
            ) from None
        catalog = self._current_catalog()
        mapper = DealMapper(self.name, catalog, self.settings.portal_id)
        properties = deal_properties(catalog.stages)
        if cursor is None or (cursor.modified_ms is None and cursor.sweep is None):
            yield from self._full_sweep(mapper, properties, FullSweep(start_ms), complete=True)
        elif cursor.sweep is not None:
            # finish the interrupted sweep, then search for what changed on the pages the
            # first attempt had already listed (everything since the sweep's start)
            log.info("hubspot.sweep.resume", source=self.name, after=cursor.sweep.after)
            yield from self._full_sweep(mapper, properties, cursor.sweep, complete=False)
            catch_up = HubSpotCursor(modified_ms=cursor.sweep.start_ms,
                                     full_ms=cursor.sweep.start_ms)
            yield from self._incremental(mapper, properties, catch_up, start_ms, archived=False)
        elif self._full_due(cursor, start_ms):
            log.info("hubspot.sweep.periodic", source=self.name, full_ms=cursor.full_ms)
            yield from self._full_sweep(mapper, properties, FullSweep(start_ms), complete=True)
        else:
            yield from self._incremental(mapper, properties, cursor, start_ms)

    def _full_due(self, cursor: HubSpotCursor, start_ms: int) -> bool:
        days = self.settings.full_sync_every_days
        if days is None:
            return False
        return start_ms - (cursor.full_ms or 0) >= days * 86_400_000

    def _full_sweep(self, mapper: DealMapper, properties: list[str], sweep: FullSweep, *,
                    complete: bool) -> Iterator[StreamItem]:
        counts: collections.Counter[str] = collections.Counter()
        while not sweep.live_done:
            page = self._list_page(properties, sweep.after, archived=False)
            for result in page.get("results") or []:
                item = mapper.map(str(result["id"]), result.get("properties") or {})
                counts[type(item).__name__] += 1
                yield item
            after = next_after(page, sweep.after)
            sweep = replace(sweep, after=after, live_done=after is None)
            yield Checkpoint(HubSpotCursor(sweep=sweep).encode())
        counts["deleted"] += yield from self._archived(mapper, properties, since_ms=None)
        # everything changed before the sweep started has been listed; later changes
        # are found by the next search (from start - lookback)
        cursor = HubSpotCursor(modified_ms=sweep.start_ms, full_ms=sweep.start_ms)
        log.info("hubspot.deals.swept", source=self.name, complete=complete,
                 deals=counts["Deal"], rejected=counts["Rejected"], deleted=counts["deleted"],
                 requests=sum(self.requests.values()))
        yield Checkpoint(cursor.encode(), complete=complete)

    def _archived(self, mapper: DealMapper, properties: list[str], *,
                  since_ms: int | None) -> Generator[StreamItem, None, int]:
        """Yield archived deals as deleted (only those archived at/after ``since_ms``)."""
        after: str | None = None
        yielded = 0
        while True:
            page = self._list_page(properties, after, archived=True)
            for result in page.get("results") or []:
                archived_ms = ms_of(result.get("archivedAt"))
                if since_ms is not None and archived_ms is not None and archived_ms < since_ms:
                    continue
                yielded += 1
                yield mapper.map(str(result["id"]), result.get("properties") or {}, deleted=True)
            after = next_after(page, after)
            if after is None:
                return yielded

    def _incremental(self, mapper: DealMapper, properties: list[str], cursor: HubSpotCursor,
                     start_ms: int, *, archived: bool = True) -> Iterator[StreamItem]:
        covered = cursor.modified_ms or 0
        since_ms = covered - self.settings.lookback_minutes * 60_000
        deleted = 0
        if archived:
            deleted = yield from self._archived(mapper, properties, since_ms=since_ms)
            if deleted:
                yield Checkpoint(cursor.encode())
        walk = ModifiedWalk(since_ms, SEARCH_PAGE_SIZE)
        changed = rejected = 0
        while not walk.finished:
            page = self._search(walk.query(), properties)
            results = page.get("results") or []
            keys = []
            for result in results:
                ms = modified_ms(result)
                keys.append((str(result["id"]), walk.covered_ms if ms is None else ms))
            try:
                new = walk.advance(keys)
            except WalkError as exc:
                raise FatalAPIError(f"HubSpot search: {exc}") from None
            for index in new:
                item = mapper.map(keys[index][0], results[index].get("properties") or {})
                rejected += isinstance(item, Rejected)
                changed += isinstance(item, Deal)
                yield item
            # sorted ascending: everything before the walk's anchor is delivered (never
            # beyond this run's start, never behind the stored cursor)
            advanced = max(covered, min(walk.covered_ms, start_ms))
            if not walk.finished and (new or advanced != covered):
                covered = advanced
                yield Checkpoint(replace(cursor, modified_ms=covered).encode())
        covered = max(covered, start_ms)  # a finished walk saw every change indexed by the start
        log.info("hubspot.deals.searched", source=self.name, changed=changed, rejected=rejected,
                 deleted=deleted, requests=sum(self.requests.values()))
        yield Checkpoint(replace(cursor, modified_ms=covered).encode())


