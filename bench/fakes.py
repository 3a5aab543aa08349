"""HubSpot and Pipedrive end to end against local fake servers that enforce the real rate limits.

The fakes are the stateful servers of the connector tests
(``sales_velocity.kernel.testing.fake_hubspot`` and ``fake_pipedrive``),
served over real HTTP on 127.0.0.1:

* HubSpot: the fake's own enforcement, 100 requests per rolling 10 s and 5
  search requests per second (HubSpot's Free/Starter limits), answering 429
  like HubSpot;
* Pipedrive: ``RateLimitedPipedrive`` adds what the test fake lacks: a rolling
  2-second burst window of 20 requests (the smallest plan, the connector's
  default), 429 beyond it, and truthful ``x-ratelimit-remaining`` and
  ``x-ratelimit-reset`` headers.

Waiting is simulated, working is real: ``SimClock`` is real elapsed time plus
every ``sleep`` the connector asked for (which returns at once). Servers and
connectors share it, so "sync wall time" is the time a real run would take if
every wait were slept, without the benchmark sleeping through minutes of rate
limits. The floor is the least time the limit allows for the requests the sync
needed: with at most ``M`` requests in any rolling ``W`` seconds, ``R``
requests take at least ``(ceil(R / M) - 1) * W`` seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from werkzeug.wrappers import Request, Response

from sales_velocity.sync.engine import sync_source

__all__ = ["SimClock", "floor_seconds", "run_hubspot", "run_pipedrive"]

HUBSPOT_PER_10S = 100
HUBSPOT_SEARCH_PER_S = 5
PIPEDRIVE_PER_2S = 20


class SimClock:
    """Real elapsed time plus simulated sleeps (see the module docstring)."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self._t0 = time.perf_counter()
        self.slept = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """Seconds since the clock started, sleeps included."""
        return time.perf_counter() - self._t0 + self.slept

    def sleep(self, seconds: float) -> None:
        """Let simulated time pass at once."""
        with self._lock:
            self.slept += max(0.0, seconds)

    def now(self) -> dt.datetime:
        """The current simulated time, aware UTC."""
        return self.start + dt.timedelta(seconds=self.monotonic())


def floor_seconds(requests: int, max_calls: int, window_s: float) -> float:
    """The least time ``requests`` take with at most ``max_calls`` per rolling ``window_s``."""
    return max(0, math.ceil(requests / max_calls) - 1) * window_s


def _result(name: str, clock: SimClock, run: Callable[[], Any], served: Callable[[], Counter[str]],
            floors: Callable[[Counter[str]], float]) -> dict[str, Any]:
    before = served().copy()
    start, slept = clock.monotonic(), clock.slept
    real = time.perf_counter()
    result = run()
    real = time.perf_counter() - real
    wall = clock.monotonic() - start
    counts = served() - before
    floor = floors(counts)
    if result.status != "ok":
        raise RuntimeError(f"{name} sync failed: {result.error}")
    return {
        "wall_s": round(wall, 2), "real_s": round(real, 2), "waited_s": round(clock.slept - slept, 2),
        "requests": sum(v for k, v in counts.items() if not k.startswith("429")),
        "rate_limited_429": sum(v for k, v in counts.items() if k.startswith("429")),
        "floor_s": round(floor, 2),
        "ratio_to_floor": round(wall / floor, 3) if floor else None,
        "seen": result.seen, "inserted": result.inserted, "updated": result.updated,
        "by_endpoint": dict(sorted((k, v) for k, v in counts.items() if not k.startswith("429"))),
    }


# --------------------------------------------------------------------------- HubSpot


def _hubspot_clock(sim: SimClock) -> Any:
    from sales_velocity.kernel.testing.fake_hubspot import FakeClock, ms_of

    class HubSpotSimClock(FakeClock):
        """The fake portal's clock in milliseconds, driven by ``SimClock``."""

        def __init__(self) -> None:
            self._offset = ms_of(sim.start)
            self.slept = 0.0
            self.sleeps = 0

        @property
        def ms(self) -> int:
            return self._offset + int(sim.monotonic() * 1000)

        @ms.setter
        def ms(self, value: int) -> None:
            self._offset += value - self.ms

        def sleep(self, seconds: float) -> None:
            sim.sleep(seconds)
            self.slept += seconds
            self.sleeps += 1

    return HubSpotSimClock()


def run_hubspot(engine: sa.Engine, deals: int, seed: int) -> dict[str, Any]:
    """Full sync, no-change re-sync and 1 %-changed re-sync of ``deals`` deals from a fake HubSpot."""
    from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot, make_connector

    sim = SimClock(dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC))
    fake = FakeHubSpot(clock=_hubspot_clock(sim), seed=seed, shuffle_ties=False)
    ids = fake.add_deals(deals)
    sim.sleep(3600)  # the portal's history is older than the sync's look-back
    fake.enforce_limits(per_10s=HUBSPOT_PER_10S, search_per_s=HUBSPOT_SEARCH_PER_S)

    def served() -> Counter[str]:
        return Counter(e.endpoint if e.status != 429 else f"429 {e.endpoint}" for e in fake.log)

    def floors(counts: Counter[str]) -> float:
        total = sum(v for k, v in counts.items() if not k.startswith("429"))
        return max(floor_seconds(total, HUBSPOT_PER_10S, 10.0),
                   floor_seconds(counts["search"], HUBSPOT_SEARCH_PER_S, 1.0))

    with fake.serve():
        connector = make_connector(fake, requests_per_10s=HUBSPOT_PER_10S,
                                   search_requests_per_second=HUBSPOT_SEARCH_PER_S - 1)

        def sync() -> Any:
            return sync_source(engine, connector, now=fake.clock.now)

        limit = f"{HUBSPOT_PER_10S}/10s, search {HUBSPOT_SEARCH_PER_S}/s"
        out: dict[str, Any] = {"deals": deals, "limit": limit}
        out["full"] = _result("hubspot", sim, sync, served, floors)
        sim.sleep(60)
        out["no_change"] = _result("hubspot", sim, sync, served, floors)
        changed = random.Random(seed).sample(ids, max(1, deals // 100))
        fake.modify(changed, amount="4242.42")
        sim.sleep(60)
        out["one_percent"] = _result("hubspot", sim, sync, served, floors)
    return out


# --------------------------------------------------------------------------- Pipedrive


def _rate_limited_pipedrive(sim: SimClock) -> Any:
    from sales_velocity.kernel.testing.fake_pipedrive import FakePipedrive

    class RateLimitedPipedrive(FakePipedrive):
        """The test fake plus Pipedrive's rolling 2-second burst limit on ``SimClock``."""

        calls: deque[float]
        statuses: Counter[str]

        def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
            request = Request(environ)
            endpoint = request.path
            with self._lock:
                now = sim.monotonic()
                while self.calls and self.calls[0] <= now - 2.0:
                    self.calls.popleft()
                reset = max(1, math.ceil(self.calls[0] + 2.0 - now)) if self.calls else 2
                if len(self.calls) >= PIPEDRIVE_PER_2S:
                    self.statuses[f"429 {endpoint}"] += 1
                    limited = Response(
                        '{"success": false, "error": "Request over limit", "errorCode": 429}', 429,
                        {"x-ratelimit-limit": str(PIPEDRIVE_PER_2S), "x-ratelimit-remaining": "0",
                         "x-ratelimit-reset": str(reset)}, content_type="application/json")
                    return limited(environ, start_response)
                self.calls.append(now)
                self.ratelimit_remaining = PIPEDRIVE_PER_2S - len(self.calls)
                self.statuses[endpoint] += 1
            response = self._answer(request)
            response.headers["x-ratelimit-limit"] = str(PIPEDRIVE_PER_2S)
            response.headers["x-ratelimit-reset"] = str(reset)
            return response(environ, start_response)

    fake = RateLimitedPipedrive(now=sim.start)
    fake.calls = deque()
    fake.statuses = Counter()
    return fake


def _add_pipedrive_deals(fake: Any, deals: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    stages = [s for s in fake.stages if s["id"] != 6]
    start = fake.now - dt.timedelta(days=400)
    ids = []
    for i in range(deals):
        stamp = start + dt.timedelta(seconds=i * 400 * 86_400 // max(deals, 1))
        stage = rng.choice(stages)
        status = rng.choices(["open", "won", "lost"], [0.3, 0.25, 0.45])[0]
        add = (stamp - dt.timedelta(days=rng.randrange(1, 120))).strftime("%Y-%m-%dT%H:%M:%SZ")
        iso = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        deal = fake.add_deal(
            title=f"Deal {i}", value=rng.choice([1000, 25000, 0, 4999.5, None]),
            currency=rng.choice(["EUR", "USD"]), stage_id=stage["id"], pipeline_id=stage["pipeline_id"],
            owner_id=rng.choice([11, 12]), status=status, add_time=add, update_time=iso,
            stage_change_time=iso, close_time=iso if status != "open" else None,
            won_time=iso if status == "won" else None, lost_time=iso if status == "lost" else None,
        )
        ids.append(deal["id"])
        if status == "open" and rng.random() < 0.5:
            saved = fake.now
            fake.now = stamp
            fake.add_activity(deal["id"], (stamp + dt.timedelta(days=3)).date().isoformat())
            fake.now = saved
    return ids


def _quiet_werkzeug() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def run_pipedrive(engine: sa.Engine, deals: int, seed: int) -> dict[str, Any]:
    """Full sync, no-change re-sync and 1 %-changed re-sync of ``deals`` deals from a fake Pipedrive."""
    from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings

    _quiet_werkzeug()
    sim = SimClock(dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC))
    fake = _rate_limited_pipedrive(sim)
    ids = _add_pipedrive_deals(fake, deals, seed)

    def served() -> Counter[str]:
        return Counter(fake.statuses)

    def floors(counts: Counter[str]) -> float:
        total = sum(v for k, v in counts.items() if not k.startswith("429"))
        return floor_seconds(total, PIPEDRIVE_PER_2S, 2.0)

    with fake.serve() as url:
        settings = PipedriveSettings.model_validate({
            "name": "pipedrive", "kind": "pipedrive", "api_token": fake.token, "company_domain": "acme",
            "base_url": url, "requests_per_window": PIPEDRIVE_PER_2S,
        })
        connector = PipedriveConnector(settings, sleep=sim.sleep, clock=sim.monotonic, now=sim.now)

        def sync() -> Any:
            return sync_source(engine, connector, now=sim.now)

        out: dict[str, Any] = {"deals": deals, "limit": f"{PIPEDRIVE_PER_2S}/2s"}
        out["full"] = _result("pipedrive", sim, sync, served, floors)
        sim.sleep(120)
        out["no_change"] = _result("pipedrive", sim, sync, served, floors)
        sim.sleep(120)
        fake.now = sim.now()
        for deal_id in random.Random(seed).sample(ids, max(1, deals // 100)):
            fake.update_deal(deal_id, value=4242.42)
        sim.sleep(1)
        out["one_percent"] = _result("pipedrive", sim, sync, served, floors)
    return out


@contextmanager
def crm_store(url: str | None, workdir: Path, label: str) -> Iterator[sa.Engine]:
    """A scratch store for one CRM's end-to-end run (kept apart from the main data)."""
    from bench.measure import open_store

    with open_store(url, workdir, label) as engine:
        yield engine

