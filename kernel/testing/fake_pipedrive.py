"""A stateful fake of the Pipedrive API (the parts the connector reads), served on 127.0.0.1.

It holds deals, stages, pipelines, users, deal fields and activities in memory
and answers like API v2 (and v1 for users): cursor pagination with opaque
cursors, ``updated_since``, ``status`` filters, ``sort_by=update_time``, the
archived-deal list, ``ids`` look-ups of activities, token costs and the
rate-limit headers. Tests change the company between syncs (``update_deal``,
``delete_deal``, ``archive_deal``, ``purge_deal``), script failures
(``fail``: 429 with Pipedrive's headers, 5xx, a 403 HTML block) and count the
requests it served.

Time on the server is ``FakePipedrive.now``; tests move it with ``advance``.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from sales_velocity.kernel.testing import PAYLOADS

FIXTURES = PAYLOADS / "pipedrive"
NEXT_STEP_KEY = "5f2d8c7a1e0b4c3d9a8b7c6d5e4f3a2b1c0d9e8f"
PURGE_AFTER = dt.timedelta(days=30)
TOKEN_COST = {
    "/api/v2/deals": 10, "/api/v2/deals/archived": 20, "/api/v2/stages": 5,
    "/api/v2/pipelines": 5, "/api/v2/dealFields": 10, "/api/v2/activities": 10, "/api/v1/users": 20,
}


def fixture(name: str) -> Any:
    """Load a JSON payload from payloads/pipedrive."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC)


class FakeTime:
    """A monotonic clock and a ``sleep`` that only moves it (and records each wait)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        """Seconds on the fake monotonic clock."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Record the wait and move the clock; never really sleeps."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


@dataclass
class Failure:
    """A scripted failure: after ``skip`` matching requests, the next ``times`` fail."""

    path: str
    status: int
    times: int = 1
    skip: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    content_type: str = "application/json"


@dataclass
class FakePipedrive:
    """The company behind the fake API; all state is public for tests to inspect."""

    token: str = "pd-test-token-5c1e0f"
    now: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC))
    deals: dict[int, dict[str, Any]] = field(default_factory=dict)
    activities: dict[int, dict[str, Any]] = field(default_factory=dict)
    pipelines: list[dict[str, Any]] = field(default_factory=lambda: fixture("pipelines.json")["data"])
    stages: list[dict[str, Any]] = field(default_factory=lambda: fixture("stages.json")["data"])
    users: list[dict[str, Any]] = field(default_factory=lambda: fixture("users.json")["data"])
    deal_fields: list[dict[str, Any]] = field(default_factory=lambda: fixture("deal_fields.json")["data"])
    daily_tokens: int | None = None
    """Tokens left today (``None``: unlimited). Spent by each request's cost."""
    ratelimit_remaining: int = 39
    failures: list[Failure] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    """Every request served, as ``"GET /api/v2/deals?..."``."""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ----------------------------------------------------------------- changing the company

    def advance(self, seconds: float = 60) -> dt.datetime:
        """Move server time forward."""
        self.now += dt.timedelta(seconds=seconds)
        return self.now

    def add_deal(self, **fields: Any) -> dict[str, Any]:
        """Create a deal (v2 shape) at the current server time; returns it."""
        deal_id = fields.pop("id", None) or next(self._ids)
        stamp = _stamp(self.now)
        deal: dict[str, Any] = {
            "id": deal_id, "title": f"Deal {deal_id}", "creator_user_id": 11, "owner_id": 11,
            "value": 1000, "person_id": None, "org_id": None, "stage_id": 1, "pipeline_id": 1,
            "currency": "EUR", "archive_time": None, "add_time": stamp, "update_time": stamp,
            "stage_change_time": None, "status": "open", "is_archived": False, "is_deleted": False,
            "probability": None, "lost_reason": None, "visible_to": 3, "close_time": None,
            "won_time": None, "lost_time": None, "expected_close_date": None, "label_ids": [],
            "next_activity_id": None, "last_activity_id": None, "custom_fields": {NEXT_STEP_KEY: None},
        }
        deal.update(fields)
        with self._lock:
            self.deals[deal_id] = deal
        return deal

    def add_activity(self, deal_id: int, due_date: str, due_time: str | None = None,
                     *, done: bool = False) -> int:
        """Add an activity to a deal; it becomes the deal's next (undone) or last (done) one."""
        activity_id = next(self._ids) + 100_000
        self.activities[activity_id] = {
            "id": activity_id, "subject": "Call", "type": "call", "owner_id": 11, "is_deleted": False,
            "deal_id": deal_id, "due_date": due_date, "due_time": due_time, "done": done,
            "add_time": _stamp(self.now), "update_time": _stamp(self.now),
        }
        self.update_deal(deal_id, **{"last_activity_id" if done else "next_activity_id": activity_id})
        return activity_id

    def update_deal(self, deal_id: int, **changes: Any) -> dict[str, Any]:
        """Change a deal; ``update_time`` (and ``stage_change_time`` on a move) follow."""
        with self._lock:
            deal = self.deals[deal_id]
            stamp = _stamp(self.now)
            if "stage_id" in changes and changes["stage_id"] != deal["stage_id"]:
                deal["stage_change_time"] = stamp
            if changes.get("status") in ("won", "lost"):
                deal[f"{changes['status']}_time"] = deal["close_time"] = stamp
            deal.update(changes)
            deal["update_time"] = stamp
            return deal

    def delete_deal(self, deal_id: int) -> None:
        """Soft-delete: ``status=deleted``, visible with ``status=deleted`` for 30 days."""
        self.update_deal(deal_id, status="deleted", is_deleted=True)

    def archive_deal(self, deal_id: int) -> None:
        """Archive: the deal leaves ``/deals`` and shows up in ``/deals/archived``."""
        self.update_deal(deal_id, is_archived=True, archive_time=_stamp(self.now))

    def purge_deal(self, deal_id: int) -> None:
        """Remove a deal for good (what happens 30 days after a delete)."""
        with self._lock:
            del self.deals[deal_id]

    def fail(self, path: str, status: int, *, times: int = 1, skip: int = 0,
             headers: Mapping[str, str] | None = None, body: str = "",
             content_type: str = "application/json") -> None:
        """Script a failure on ``path`` (after ``skip`` good answers, ``times`` times)."""
        self.failures.append(Failure(path, status, times, skip, dict(headers or {}), body, content_type))

    def rate_limit(self, path: str, *, skip: int = 0, reset: int = 2) -> None:
        """Answer one 429 on ``path`` with Pipedrive's burst headers."""
        self.fail(path, 429, skip=skip, body=(FIXTURES / "error_429.json").read_text(),
                  headers={"x-ratelimit-limit": "40", "x-ratelimit-remaining": "0",
                           "x-ratelimit-reset": str(reset)})

    def requests_to(self, path: str) -> int:
        """How many requests went to ``path`` (query ignored)."""
        return sum(1 for line in self.log if line.split(" ", 1)[1].split("?", 1)[0] == path)

    # ----------------------------------------------------------------- the server

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run the fake on 127.0.0.1 in a thread; yields its base URL."""
        server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(timeout=5)

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI entry point."""
        request = Request(environ)
        response = self._answer(request)
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        with self._lock:
            query = request.query_string.decode()
            self.log.append(f"{request.method} {request.path}" + (f"?{query}" if query else ""))
            headers = {"x-ratelimit-limit": "40", "x-ratelimit-remaining": str(self.ratelimit_remaining),
                       "x-ratelimit-reset": "2"}
            if request.headers.get("x-api-token") != self.token or "api_token" in request.args:
                return self._json({"success": False, "error": "unauthorized access", "errorCode": 401},
                                  401, headers)
            for failure in self.failures:
                if failure.path == request.path and failure.times > 0:
                    if failure.skip > 0:
                        failure.skip -= 1
                        continue
                    failure.times -= 1
                    return Response(failure.body, failure.status, {**headers, **failure.headers},
                                    content_type=failure.content_type)
            if self.daily_tokens is not None:
                if self.daily_tokens <= 0:
                    body = fixture("error_429.json")
                    return self._json(body, 429, {**headers, "x-daily-ratelimit-token-remaining": "0"})
                self.daily_tokens = max(0, self.daily_tokens - TOKEN_COST.get(request.path, 10))
                headers["x-daily-ratelimit-token-remaining"] = str(self.daily_tokens)
            handlers: dict[str, Callable[[], Any]] = {
                "/api/v2/deals": lambda: self._deals(request, archived=False),
                "/api/v2/deals/archived": lambda: self._deals(request, archived=True),
                "/api/v2/pipelines": lambda: self._page(request, self.pipelines, "id"),
                "/api/v2/stages": lambda: self._page(request, self.stages, "id"),
                "/api/v2/dealFields": lambda: self._page(request, self.deal_fields, "field_code"),
                "/api/v2/activities": lambda: self._activities(request),
                "/api/v1/users": lambda: {"success": True, "data": self.users},
            }
            handler = handlers.get(request.path)
            if handler is None:
                unknown = {"success": False, "error": "Unknown method", "errorCode": 404}
                return self._json(unknown, 404, headers)
            return self._json(handler(), 200, headers)

    @staticmethod
    def _json(body: Any, status: int, headers: Mapping[str, str]) -> Response:
        return Response(json.dumps(body), status, dict(headers), content_type="application/json")

    def _deals(self, request: Request, *, archived: bool) -> dict[str, Any]:
        statuses = set(request.args.get("status", "open,won,lost").split(","))
        since = request.args.get("updated_since")
        cutoff = self.now - PURGE_AFTER
        rows = []
        for deal in self.deals.values():
            if bool(deal["is_archived"]) != archived or deal["status"] not in statuses:
                continue
            if deal["is_deleted"] and _parse(deal["update_time"]) < cutoff:
                continue
            if since and _parse(deal["update_time"]) < _parse(since):
                continue
            rows.append(deal)
        return self._page(request, rows, request.args.get("sort_by", "id"))

    def _activities(self, request: Request) -> dict[str, Any]:
        ids = [int(i) for i in request.args.get("ids", "").split(",") if i]
        if len(ids) > 100:
            return {"success": False, "error": "ids: at most 100"}
        wanted = set(ids) if ids else set(self.activities)
        return self._page(request, [a for i, a in self.activities.items() if i in wanted], "id")

    @staticmethod
    def _page(request: Request, rows: list[dict[str, Any]], sort_by: str) -> dict[str, Any]:
        """Sort by ``(sort_by, id)``, start after the cursor's position, cut at ``limit``."""
        limit = min(int(request.args.get("limit", 100)), 500)
        key_name = "id" if sort_by not in ("update_time", "add_time", "field_code") else sort_by
        tie = "field_code" if key_name == "field_code" else "id"

        def key(row: Mapping[str, Any]) -> tuple[Any, Any]:
            return (row[key_name], row[tie])

        ordered = sorted(rows, key=key)
        if request.args.get("cursor"):
            position = json.loads(base64.urlsafe_b64decode(request.args["cursor"] + "=="))
            after = (position["fieldValue"], position["id"])
            ordered = [row for row in ordered if key(row) > after]
        page = ordered[:limit]
        next_cursor = None
        if len(ordered) > limit:
            last = page[-1]
            position = {"field": key_name, "fieldValue": last[key_name], "sortDirection": "asc",
                        "id": last[tie]}
            next_cursor = base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")
        return {"success": True, "data": [dict(row) for row in page],
                "additional_data": {"next_cursor": next_cursor}}
