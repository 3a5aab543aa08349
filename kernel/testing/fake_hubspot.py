"""A stateful fake HubSpot portal, served over real HTTP for ``hubspot-api-client``.

``responses`` cannot see the official client (it talks urllib3), so tests run this
werkzeug app on 127.0.0.1 in a thread and point the connector's ``base_url`` at
it. It behaves like the parts of HubSpot the sync uses:

* ``GET /crm/v3/pipelines/deals``, ``GET /crm/v3/owners/`` (paged by ``after``);
* ``GET /crm/v3/objects/deals``: ``limit`` <= 100, ``after`` = next id,
  repeated ``properties``, ``archived`` (case-insensitive: the client sends
  ``False``) returning *only* archived deals;
* ``POST /crm/v3/objects/deals/search``: AND-ed filters in OR-ed groups, one
  sort, ``limit`` <= 200, numeric offset ``after``, and HubSpot's HTTP 400 once
  a query pages past 10,000 results; ties in the sort come back in an arbitrary
  order (``shuffle_ties``), as HubSpot promises nothing about them;
* HubSpot's error bodies (``payloads/hubspot/errors.json``): 401, 403
  missing scope, 429 ``RATE_LIMIT`` with ``policyName`` (with or without
  ``Retry-After``), 5xx.

Tests change the portal between (or during) syncs (``add_deals``, ``modify``,
``archive``, ``purge``), inject faults (``fail_next``, ``break_after``,
``storm``), optionally enforce HubSpot's rate limits on the shared ``FakeClock``,
and count requests per endpoint (``counts``).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sales_velocity.kernel.testing import PAYLOADS

if TYPE_CHECKING:
    from sales_velocity.connectors.hubspot import HubSpotConnector

FIXTURES = PAYLOADS / "hubspot"
TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
BASE_TIME = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
SEARCH_CAP = 10_000
DATETIME_PROPS = {"createdate", "closedate", "hs_lastmodifieddate", "notes_next_activity_date",
                  "notes_last_updated"}
ALWAYS_RETURNED = ("hs_object_id", "createdate", "hs_lastmodifieddate")
ERRORS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "errors.json").read_text())


def ms_of(value: dt.datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return (value - EPOCH) // dt.timedelta(milliseconds=1)


def iso(ms: int) -> str:
    """HubSpot's ISO form: milliseconds, ``Z``; whole seconds drop the fraction."""
    value = EPOCH + dt.timedelta(milliseconds=ms)
    if ms % 1000 == 0:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class FakeClock:
    """Shared fake time: the connector sleeps on it, the portal stamps changes with it."""

    def __init__(self, start: dt.datetime = BASE_TIME) -> None:
        self.ms = ms_of(start)
        self.slept = 0.0
        self.sleeps = 0

    def now(self) -> dt.datetime:
        """The current time, aware UTC."""
        return EPOCH + dt.timedelta(milliseconds=self.ms)

    def monotonic(self) -> float:
        """Seconds, for rate limiters."""
        return self.ms / 1000

    def sleep(self, seconds: float) -> None:
        """Advance time instead of waiting."""
        self.ms += max(1, round(seconds * 1000))
        self.slept += seconds
        self.sleeps += 1

    def advance(self, seconds: float) -> None:
        """Let time pass."""
        self.ms += round(seconds * 1000)

    def stamp(self) -> int:
        """The time of a new change: 1 ms after the previous one (so none share a time)."""
        self.ms += 1
        return self.ms


class RealClock(FakeClock):
    """Wall-clock time for the portal, when the connector under test uses real time (the CLI).

    Changes are stamped with the wall clock, so several may share a millisecond.
    """

    def __init__(self) -> None:
        super().__init__()
        self._floor = 0

    @property
    def ms(self) -> int:
        """Now in epoch ms, never before the last stamp."""
        return max(time.time_ns() // 1_000_000, self._floor)

    @ms.setter
    def ms(self, value: int) -> None:
        self._floor = value

    def stamp(self) -> int:
        """Now, never before an earlier stamp."""
        return self.ms


@dataclass
class FakeDeal:
    """One deal in the portal; ``modified_ms`` drives search (the property may be corrupted)."""

    id: int
    props: dict[str, str | None]
    modified_ms: int
    created_ms: int
    archived_ms: int | None = None


@dataclass(frozen=True)
class Fault:
    """One scripted error response."""

    status: int
    retry_after: str | None = None
    body: dict[str, Any] | None = None


@dataclass
class _Rule:
    endpoint: str | None
    decide: Callable[[], Fault | None]


@dataclass
class Recorded:
    """One request as the portal saw it."""

    endpoint: str
    method: str
    args: dict[str, list[str]]
    body: Any
    status: int = 200


@dataclass
class _Limits:
    per_10s: int
    search_per_s: int
    retry_after: str | None
    calls: deque[int] = field(default_factory=deque)
    searches: deque[int] = field(default_factory=deque)


class FakeHubSpot:
    """The fake portal: state, fault injection and the WSGI app (see the module docstring)."""

    def __init__(
        self, *, clock: FakeClock | None = None, token: str = TOKEN, seed: int = 7,
        shuffle_ties: bool = True, scopes: Iterable[str] = ("crm.objects.deals.read",
                                                             "crm.objects.owners.read"),
    ) -> None:
        self.clock = clock or FakeClock()
        self.token = token
        self.scopes = set(scopes)
        self.shuffle_ties = shuffle_ties
        self.rng = random.Random(seed)
        self.pipelines: list[dict[str, Any]] = json.loads(
            (FIXTURES / "pipelines.json").read_text())["results"]
        self.owners: list[dict[str, Any]] = json.loads(
            (FIXTURES / "owners.json").read_text())["results"]
        self.deals: dict[int, FakeDeal] = {}
        self.purged: set[int] = set()
        self.next_id = 9_000_000_001
        self.counts: Counter[str] = Counter()
        self.log: list[Recorded] = []
        self.rules: list[_Rule] = []
        self.limits: _Limits | None = None
        self.rate_limited = 0
        self.on_request: list[Callable[[str], None]] = []
        self.lock = threading.RLock()
        self.url = ""

    # ------------------------------------------------------------------ stages

    def stage(self, stage_id: str) -> dict[str, Any]:
        """The stage with this id (with its pipeline id under ``pipeline``)."""
        for p in self.pipelines:
            for s in p["stages"]:
                if s["id"] == stage_id:
                    return {**s, "pipeline": p["id"]}
        raise KeyError(stage_id)

    def stage_status(self, stage_id: str | None) -> str:
        """open/won/lost by the stage's metadata."""
        if stage_id is None:
            return "open"
        meta = self.stage(stage_id)["metadata"]
        if meta["isClosed"] == "true":
            return "won" if Decimal(meta["probability"]) == 1 else "lost"
        return "open"

    # ------------------------------------------------------------------ changing the portal

    def _stamp(self, same_time: bool) -> int:
        return self.clock.ms if same_time else self.clock.stamp()

    def add_deals(self, n: int, *, same_time: bool = False, stage: str | None = None,
                  **props: str | None) -> list[str]:
        """Create ``n`` deals with varied, realistic properties; return their ids."""
        ids = []
        with self.lock:
            for _ in range(n):
                now = self._stamp(same_time)
                deal_id = self.next_id
                self.next_id += 1
                pipeline = self.pipelines[0] if self.rng.random() < 0.8 else self.pipelines[1]
                stage_id = stage or self.rng.choice(pipeline["stages"])["id"]
                pipeline_id = self.stage(stage_id)["pipeline"]
                created = now - self.rng.randrange(1, 200) * 86_400_000 - self.rng.randrange(86_400_000)
                first_stage = next(p for p in self.pipelines if p["id"] == pipeline_id)["stages"][0]["id"]
                close_ms = created + self.rng.randrange(10, 120) * 86_400_000
                values: dict[str, str | None] = {
                    "dealname": f"Deal {deal_id}",
                    "amount": self.rng.choice(["1500.00", "50000.5", "12000", "", None, "999.99",
                                               "250000", "0.59999999999999997779"]),
                    "deal_currency_code": self.rng.choice(["USD", "EUR", None]),
                    "pipeline": pipeline_id,
                    "dealstage": stage_id,
                    "createdate": iso(created),
                    "closedate": self.rng.choice([iso(close_ms), iso(close_ms)[:10], None]),
                    "hubspot_owner_id": self.rng.choice([o["id"] for o in self.owners] + [None]),
                    "notes_next_activity_date": self.rng.choice([iso(now + 86_400_000), None]),
                    "notes_last_updated": self.rng.choice([iso(now - 3_600_000), None]),
                    "hs_next_step": self.rng.choice(["Call back", "Send quote", None, ""]),
                    f"hs_v2_date_entered_{first_stage}": iso(created),
                    "hs_object_id": str(deal_id),
                }
                if stage_id != first_stage:
                    values[f"hs_v2_date_entered_{stage_id}"] = iso(now - self.rng.randrange(86_400_000))
                values["hs_lastmodifieddate"] = iso(now)
                values.update(props)
                deal = FakeDeal(deal_id, values, now, created)
                self._derive(deal, props)
                self.deals[deal_id] = deal
                ids.append(str(deal_id))
        return ids

    def _derive(self, deal: FakeDeal, explicit: Iterable[str]) -> None:
        """Recompute the calculated closed flags, unless a test set them on purpose."""
        status = self.stage_status(deal.props.get("dealstage"))
        flags = {"hs_is_closed": "true" if status in ("won", "lost") else "false",
                 "hs_is_closed_won": "true" if status == "won" else "false"}
        deal.props.update({k: v for k, v in flags.items() if k not in explicit})

    def modify(self, ids: Iterable[str], *, same_time: bool = False, **props: str | None) -> None:
        """Change properties (a new ``dealstage`` also stamps its stage-entry date).

        ``hs_lastmodifieddate`` is stamped with the clock unless given (e.g. corrupted).
        """
        with self.lock:
            for key in ids:
                deal = self.deals[int(key)]
                now = self._stamp(same_time)
                stage = props.get("dealstage")
                if stage is not None and stage != deal.props.get("dealstage"):
                    deal.props[f"hs_v2_date_entered_{stage}"] = iso(now)
                    deal.props["pipeline"] = self.stage(stage)["pipeline"]
                deal.props["hs_lastmodifieddate"] = iso(now)
                deal.props.update(props)
                deal.modified_ms = now
                self._derive(deal, props)

    def archive(self, ids: Iterable[str]) -> None:
        """Delete deals to the recycle bin (listed with ``archived=true`` only)."""
        with self.lock:
            for key in ids:
                deal = self.deals[int(key)]
                deal.archived_ms = self._stamp(False)

    def purge(self, ids: Iterable[str]) -> None:
        """Delete deals for good: gone from every endpoint."""
        with self.lock:
            for key in ids:
                del self.deals[int(key)]
                self.purged.add(int(key))

    def live_ids(self) -> list[str]:
        """Ids of the deals that are not archived."""
        return [str(d.id) for d in self.deals.values() if d.archived_ms is None]

    def expected(self) -> dict[str, tuple[str, str | None]]:
        """What a store in sync holds: id -> (status, stage) for every deal ever created."""
        out = {}
        for d in self.deals.values():
            status = "deleted" if d.archived_ms is not None else self.stage_status(d.props.get("dealstage"))
            out[str(d.id)] = (status, d.props.get("dealstage"))
        return out

    # ------------------------------------------------------------------ faults and limits

    def fail_next(self, endpoint: str | None, *faults: int | Fault, after: int = 0) -> None:
        """After ``after`` more matching requests, answer the next ones with ``faults``."""
        queue = deque(f if isinstance(f, Fault) else Fault(f) for f in faults)
        skip = [after]

        def decide() -> Fault | None:
            if skip[0] > 0:
                skip[0] -= 1
                return None
            return queue.popleft() if queue else None

        self.rules.append(_Rule(endpoint, decide))

    def break_after(self, n: int, status: int = 500, endpoint: str | None = None) -> None:
        """Let ``n`` more matching requests through, then fail every later one until ``heal``."""
        left = [n]

        def decide() -> Fault | None:
            if left[0] > 0:
                left[0] -= 1
                return None
            return Fault(status)

        self.rules.append(_Rule(endpoint, decide))

    def storm(self, rate: float, statuses: tuple[int, ...] = (429, 502), *, seed: int = 1,
              max_in_a_row: int = 3, endpoint: str | None = None,
              retry_after: str | None = None) -> None:
        """Fail a share ``rate`` of matching requests at random (never more than ``max_in_a_row``)."""
        rng = random.Random(seed)
        streak = [0]

        def decide() -> Fault | None:
            if streak[0] < max_in_a_row and rng.random() < rate:
                streak[0] += 1
                status = rng.choice(statuses)
                return Fault(status, retry_after if status == 429 else None)
            streak[0] = 0
            return None

        self.rules.append(_Rule(endpoint, decide))

    def heal(self) -> None:
        """Drop every fault rule."""
        with self.lock:
            self.rules.clear()

    def enforce_limits(self, per_10s: int = 100, search_per_s: int = 5,
                       retry_after: str | None = None) -> None:
        """Answer 429 like HubSpot when requests exceed these rates on the fake clock."""
        self.limits = _Limits(per_10s, search_per_s, retry_after)

    # ------------------------------------------------------------------ HTTP

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """The WSGI entry point."""
        request = Request(environ)
        with self.lock:
            response = self._handle(request)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        endpoint = _endpoint(request)
        body = request.get_json(silent=True) if request.method == "POST" else None
        record = Recorded(endpoint, request.method, request.args.to_dict(flat=False), body)
        self.log.append(record)
        self.counts[endpoint] += 1
        for hook in list(self.on_request):
            hook(endpoint)
        response = self._respond(request, endpoint, body)
        record.status = response.status_code
        return response

    def _respond(self, request: Request, endpoint: str, body: Any) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized")
        needed = "crm.objects.owners.read" if endpoint == "owners" else "crm.objects.deals.read"
        if needed not in self.scopes:
            return _error(403, "missing_scopes")
        for rule in self.rules:
            if rule.endpoint in (None, endpoint):
                fault = rule.decide()
                if fault is not None:
                    return _fault(fault)
        limited = self._rate_limited(endpoint)
        if limited is not None:
            return limited
        if endpoint == "pipelines":
            return _json({"results": self.pipelines})
        if endpoint == "owners":
            return self._owners(request)
        if endpoint in ("deals", "archived"):
            return self._list(request, archived=endpoint == "archived")
        if endpoint == "search":
            return self._search(body)
        return _error(404, "not_found")

    def _rate_limited(self, endpoint: str) -> Response | None:
        limits = self.limits
        if limits is None:
            return None
        now = self.clock.ms
        while limits.calls and limits.calls[0] <= now - 10_000:
            limits.calls.popleft()
        while limits.searches and limits.searches[0] <= now - 1_000:
            limits.searches.popleft()
        if len(limits.calls) >= limits.per_10s:
            self.rate_limited += 1
            return _fault(Fault(429, limits.retry_after, ERRORS["rate_limit_ten_secondly"]))
        if endpoint == "search":
            if len(limits.searches) >= limits.search_per_s:
                self.rate_limited += 1
                return _fault(Fault(429, limits.retry_after, ERRORS["rate_limit_secondly"]))
            limits.searches.append(now)
        limits.calls.append(now)
        return None

    def _owners(self, request: Request) -> Response:
        limit = int(request.args.get("limit", 100))
        start = int(request.args.get("after") or 0)
        page = self.owners[start:start + limit]
        out: dict[str, Any] = {"results": page}
        if start + limit < len(self.owners):
            out["paging"] = {"next": {"after": str(start + limit), "link": f"?after={start + limit}"}}
        return _json(out)

    def _list(self, request: Request, *, archived: bool) -> Response:
        limit = int(request.args.get("limit", 10))
        if limit > 100:
            return _error(400, "search_cap", message="limit must be at most 100")
        after = int(request.args.get("after") or 0)
        properties = _properties(request.args.getlist("properties"))
        rows = sorted(
            (d for d in self.deals.values()
             if (d.archived_ms is not None) == archived and d.id >= after),
            key=lambda d: d.id,
        )
        out: dict[str, Any] = {"results": [self._object(d, properties) for d in rows[:limit]]}
        if len(rows) > limit:
            nxt = str(rows[limit].id)
            out["paging"] = {"next": {"after": nxt, "link": f"{self.url}/crm/v3/objects/deals?after={nxt}"}}
        return _json(out)

    def _search(self, body: Any) -> Response:
        if not isinstance(body, dict):
            return _error(400, "search_cap", message="Invalid input JSON")
        limit = int(body.get("limit") or 10)
        after = int(body.get("after") or 0)
        if limit > 200:
            return _error(400, "search_cap", message="limit must be at most 200")
        if after + limit > SEARCH_CAP:
            return _error(400, "search_cap")
        groups = body.get("filterGroups") or []
        if len(groups) > 5 or any(len(g.get("filters") or []) > 10 for g in groups):
            return _error(400, "search_cap", message="too many filters")
        rows = [d for d in self.deals.values()
                if d.archived_ms is None and (not groups or any(_matches(d, g) for g in groups))]
        sorts = body.get("sorts") or [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
        sort = sorts[0] if isinstance(sorts[0], dict) else {"propertyName": sorts[0]}
        prop = sort.get("propertyName", "hs_object_id")
        salt = self.rng.random() if self.shuffle_ties else 0.0
        rows.sort(key=lambda d: (_sort_value(d, prop), zlib.crc32(f"{d.id}{salt}".encode())),
                  reverse=sort.get("direction") == "DESCENDING")
        properties = _properties(body.get("properties") or [])
        page = rows[after:after + limit]
        out: dict[str, Any] = {"total": len(rows),
                               "results": [self._object(d, properties) for d in page]}
        if after + limit < len(rows):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return _json(out)

    def _object(self, deal: FakeDeal, properties: list[str]) -> dict[str, Any]:
        wanted = list(properties) + [p for p in ALWAYS_RETURNED if p not in properties]
        out: dict[str, Any] = {
            "id": str(deal.id),
            "properties": {p: deal.props.get(p) for p in wanted},
            "createdAt": iso(deal.created_ms),
            "updatedAt": iso(deal.modified_ms),
            "archived": deal.archived_ms is not None,
        }
        if deal.archived_ms is not None:
            out["archivedAt"] = iso(deal.archived_ms)
        return out

    # ------------------------------------------------------------------ serving

    @contextmanager
    def serve(self) -> Iterator[FakeHubSpot]:
        """Serve the portal on 127.0.0.1 (a free port) for the duration of the block."""
        server = make_server("127.0.0.1", 0, self, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{server.server_port}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            thread.join(timeout=5)
            server.server_close()


class _QuietHandler(WSGIRequestHandler):
    """No access log lines on stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Stay quiet."""


def _endpoint(request: Request) -> str:
    path = request.path.rstrip("/")
    if path == "/crm/v3/pipelines/deals":
        return "pipelines"
    if path == "/crm/v3/owners":
        return "owners"
    if path == "/crm/v3/objects/deals/search" and request.method == "POST":
        return "search"
    if path == "/crm/v3/objects/deals" and request.method == "GET":
        archived = request.args.get("archived", "false").lower() == "true"
        return "archived" if archived else "deals"
    return f"{request.method} {path}"


def _properties(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out.extend(p for p in value.split(",") if p)
    return out


def _sort_value(deal: FakeDeal, prop: str) -> Any:
    if prop == "hs_lastmodifieddate":
        return deal.modified_ms
    if prop == "hs_object_id":
        return deal.id
    value = deal.props.get(prop)
    return (value is None, value or "")


def _value(deal: FakeDeal, prop: str) -> Any:
    """A deal's property as the search compares it: ms for dates, numbers for numbers."""
    if prop == "hs_lastmodifieddate":
        return deal.modified_ms
    if prop == "hs_object_id":
        return deal.id
    raw = deal.props.get(prop)
    if raw is None or raw == "":
        return None
    if prop in DATETIME_PROPS or prop.startswith("hs_v2_date_entered_"):
        try:
            return ms_of(dt.datetime.fromisoformat(raw))
        except ValueError:
            return None
    try:
        return Decimal(raw)
    except ArithmeticError:
        return raw


def _matches(deal: FakeDeal, group: dict[str, Any]) -> bool:
    return all(_holds(_value(deal, f["propertyName"]), f) for f in group.get("filters") or [])


def _holds(actual: Any, f: dict[str, Any]) -> bool:
    """Whether one filter holds for a property value (``None``: no value)."""
    op = f["operator"]
    if op in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
        return bool((actual is not None) == (op == "HAS_PROPERTY"))
    if actual is None:
        return False
    if op == "IN":
        return bool(actual in {_coerce(actual, v) for v in f.get("values") or []})
    wanted = _coerce(actual, f.get("value"))
    if op == "BETWEEN":
        return bool(wanted <= actual <= _coerce(actual, f.get("highValue")))
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "EQ": lambda a, b: a == b, "NEQ": lambda a, b: a != b,
        "GT": lambda a, b: a > b, "GTE": lambda a, b: a >= b,
        "LT": lambda a, b: a < b, "LTE": lambda a, b: a <= b,
    }
    return bool(compare[op](actual, wanted))


def _coerce(actual: Any, value: Any) -> Any:
    if isinstance(actual, int):
        return int(value)
    if isinstance(actual, Decimal):
        return Decimal(str(value))
    return str(value)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data), status=status, headers=headers,
                    content_type="application/json;charset=utf-8")


def _error(status: int, kind: str, message: str | None = None) -> Response:
    body = dict(ERRORS[kind])
    if message:
        body["message"] = message
    return _json(body, status)


def _fault(fault: Fault) -> Response:
    kind = {401: "unauthorized", 403: "missing_scopes", 429: "rate_limit_ten_secondly",
            502: "bad_gateway", 404: "not_found", 400: "search_cap"}.get(fault.status, "server_error")
    body = fault.body or ERRORS[kind]
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    return _json(body, fault.status, headers)


def make_connector(fake: FakeHubSpot, **settings: Any) -> HubSpotConnector:
    """A connector on ``fake``'s URL and clock, limiters set high unless overridden."""
    values: dict[str, Any] = {
        "name": "hubspot", "access_token": fake.token, "base_url": fake.url,
        "portal_id": 1234567, "requests_per_10s": 1000, "search_requests_per_second": 50,
    }
    values.update(settings)
    from sales_velocity.connectors.hubspot import HubSpotConnector, HubSpotSettings

    return HubSpotConnector(
        HubSpotSettings(**values), sleep=fake.clock.sleep, clock=fake.clock.monotonic,
        now=fake.clock.now, rng=random.Random(0),
    )
