"""The one place that owns HTTP failure handling for every connector.

* ``classify_status`` maps an HTTP status to what the caller should do
  (``RateLimitError``/``RetriableAPIError`` retry, ``AuthError``/``FatalAPIError`` fail).
* ``call_with_retry`` runs any call (a ``requests`` call or the HubSpot client)
  with bounded attempts, exponential backoff with full jitter and ``Retry-After``
  honoured (seconds or HTTP-date, clamped to the policy's maximum).
* ``RateLimiter`` keeps a client under a documented "N requests per period".
* ``new_session``/``request`` give ``requests`` a default timeout on every call
  and classify the response. ``request`` also gives every call a **total
  deadline** (``deadline_s``, enforced on the socket by ``kernel.watchdog``, so a
  server trickling a byte every few seconds cannot hold it open), a **maximum
  response size** (``max_bytes``), and follows redirects itself: only to the
  same scheme, host and port (or http to https on the same host), never to
  another host, where the session's credential headers (Pipedrive's
  ``x-api-token``, a webhook's ``X-Api-Key``; ``requests`` strips only
  ``Authorization``) would go along. A redirect to another host is refused
  with ``CrossHostRedirectError``.

Time is a parameter: ``sleep`` and ``clock`` are injectable, so tests never wait.
Messages never include request headers or query strings, so a token in either
cannot leak (``redact_url`` strips credentials from URLs that are logged).
"""

from __future__ import annotations

import collections
import datetime as dt
import email.utils
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
import structlog

from sales_velocity.kernel.errors import (
    AuthError,
    FatalAPIError,
    RateLimitError,
    RemoteError,
    RetriableAPIError,
)
from sales_velocity.kernel.watchdog import RequestDeadlineError, guard_session, watched

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT",
    "CrossHostRedirectError",
    "RateLimiter",
    "RequestDeadlineError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "backoff_delay",
    "call_with_retry",
    "classify_status",
    "new_session",
    "parse_retry_after",
    "redact_url",
    "request",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
"""(connect, read) seconds for every request that does not set its own."""

DEFAULT_DEADLINE = 120.0
"""Seconds a request may take in all (connect, headers, body), whatever the read timeout."""
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest response body read (decoded), 64 MiB."""
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 16

SECRET_QUERY_KEYS = frozenset({"api_token", "token", "access_token", "apikey", "api_key", "hapikey"})


class CrossHostRedirectError(FatalAPIError):
    """The server redirected to another scheme, host or port; not followed, so no credential goes along."""


class ResponseTooLargeError(FatalAPIError):
    """A response body was larger than the request's ``max_bytes``."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts in all, and the backoff curve between them."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter.

    The cap grows as ``base * 2**(attempt-1)`` up to ``max_delay``; the wait is
    uniform in ``[cap/2, cap]`` so concurrent clients spread out but still back off.
    """
    cap = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    return (rng or random).uniform(cap / 2, cap)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP-date; ``None`` if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


def classify_status(
    status: int,
    *,
    what: str,
    retry_after: float | None = None,
    auth_hint: str = "",
    detail: str = "",
) -> RemoteError | None:
    """Map an HTTP status to the error the caller should raise, or ``None`` for success.

    Args:
        status: the HTTP status code (0 for "no response").
        what: what was being requested, for the message (no URL with secrets).
        retry_after: seconds the server asked us to wait, if any.
        auth_hint: appended to 401/403 messages (e.g. the scope the token needs).
        detail: a short, secret-free detail from the response body.
    """
    suffix = f": {detail}" if detail else ""
    if 200 <= status < 400:
        return None
    if status == 429:
        return RateLimitError(
            f"{what}: rate limited (HTTP 429){suffix}", status=status, retry_after=retry_after
        )
    if status in (401, 403):
        hint = f"; {auth_hint}" if auth_hint else ""
        return AuthError(f"{what}: access denied (HTTP {status}){hint}{suffix}", status=status)
    if status == 0 or status in (408, 425) or (status >= 500 and status not in (501, 505)):
        return RetriableAPIError(
            f"{what}: server error (HTTP {status}){suffix}", status=status, retry_after=retry_after
        )
    return FatalAPIError(f"{what}: request failed (HTTP {status}){suffix}", status=status)


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    classify: Callable[[BaseException], RemoteError | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    deadline_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it succeeds, retrying only retriable failures.

    ``classify`` turns a foreign exception (e.g. the HubSpot client's
    ``ApiException``) into one of ours; ``RetriableAPIError`` is retried, any
    other ``RemoteError`` is raised at once, ``None`` re-raises the original.
    With ``deadline_s``, no retry starts (and no wait begins) that would end
    past ``deadline_s`` after the first attempt began (``clock`` seconds).

    Raises:
        RetriableAPIError: the last retriable failure after ``max_attempts``, or
            when the next attempt would start past the deadline.
        RemoteError: a non-retriable failure, immediately.
    """
    attempt = 0
    started = clock()
    while True:
        attempt += 1
        try:
            return fn()
        except RemoteError as exc:
            error: RemoteError = exc
        except Exception as exc:
            mapped = classify(exc) if classify else None
            if mapped is None:
                raise
            error = mapped
            error.__cause__ = None
        if not isinstance(error, RetriableAPIError) or attempt >= policy.max_attempts:
            if isinstance(error, RetriableAPIError):
                error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
            raise error
        wait = backoff_delay(attempt, policy, rng)
        if error.retry_after is not None:
            wait = min(max(error.retry_after, 0.0), policy.max_delay)
        if deadline_s is not None and clock() - started + wait >= deadline_s:
            error.args = (f"{error.args[0]} (gave up after {attempt} attempts: the next would start "
                          f"past the request's total deadline of {deadline_s:g} s)",)
            raise error
        log.warning("http.retry", what=what, attempt=attempt, wait_s=round(wait, 3),
                    status=error.status, error=str(error))
        sleep(wait)


class RateLimiter:
    """A sliding-window limiter: at most ``max_calls`` per ``period`` seconds.

    Thread-safe. ``acquire()`` blocks (via the injected ``sleep``) until a call
    is allowed; ``margin`` seconds are added to each window, because the server
    counts a request when it arrives, a little after we counted it.
    ``pause(seconds)`` makes every caller wait, e.g. when headers say the
    window's budget is spent. ``granted_in_window`` is how many of our calls were
    in the window when the last one was let through (that one included): what
    the server should count for it, whatever the response's latency.
    """

    def __init__(
        self,
        max_calls: int,
        period: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.05,
    ) -> None:
        if max_calls < 1 or period <= 0:
            raise ValueError("max_calls must be >= 1 and period > 0")
        self.max_calls = max_calls
        self.period = period
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._calls: collections.deque[float] = collections.deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.granted_in_window = 0

    def acquire(self) -> None:
        """Block until one more call fits in the window, then record it."""
        while True:
            with self._lock:
                now = self._clock()
                while self._calls and self._calls[0] <= now - self.period:
                    self._calls.popleft()
                wait = max(0.0, self._paused_until - now)
                if not wait and len(self._calls) >= self.max_calls:
                    wait = self._calls[0] + self.period + self.margin - now
                if wait <= 0:
                    self._calls.append(now)
                    self.granted_in_window = len(self._calls)
                    return
            self._sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


def redact_url(url: str) -> str:
    """Return ``url`` with credential-like query parameters and userinfo masked."""
    parts = urlsplit(url)
    query = [
        (k, "***" if k.lower() in SECRET_QUERY_KEYS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def new_session(headers: Mapping[str, str] | None = None, user_agent: str | None = None) -> requests.Session:
    """Return a ``requests.Session`` with our User-Agent and the given default headers."""
    session = guard_session(requests.Session())
    session.headers["User-Agent"] = user_agent or "sales-velocity/0.1"
    if headers:
        session.headers.update(headers)
    return session


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    policy: RetryPolicy,
    limiter: RateLimiter | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    auth_hint: str = "",
    on_response: Callable[[requests.Response], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    deadline_s: float = DEFAULT_DEADLINE,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    clock: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> requests.Response:
    """Send one request with timeout, deadline, size cap, limiter, retries and status classification.

    ``on_response`` sees every response (also failed ones) before it is
    classified, e.g. to pace by rate-limit headers. The request, its retries and
    the waits between them included, must be answered in full within
    ``deadline_s`` (``clock`` seconds); its body may hold at most ``max_bytes``;
    redirects are followed only within the same origin (see the module docstring).

    Raises:
        RequestDeadlineError: an attempt ran past ``deadline_s`` (not retried).
        ResponseTooLargeError: the body was larger than ``max_bytes``.
        CrossHostRedirectError: the server redirected to another host.
        RemoteError: classified failure after retries (see ``classify_status``).
    """
    guard_session(session)
    started = clock()

    def attempt() -> requests.Response:
        if limiter is not None:
            limiter.acquire()
        try:
            with watched(max(deadline_s - (clock() - started), 0.001), what, deadline_s=deadline_s):
                response = _send(session, method, url, what=what, timeout=timeout,
                                 max_bytes=max_bytes, **kwargs)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise RetriableAPIError(f"{what}: {type(exc).__name__}", status=0) from None
        if on_response is not None:
            on_response(response)
        error = classify_status(
            response.status_code,
            what=what,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            auth_hint=auth_hint,
            detail=_short_detail(response),
        )
        if error is not None:
            raise error
        return response

    return call_with_retry(attempt, policy=policy, what=what, sleep=sleep, deadline_s=deadline_s,
                           clock=clock)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _may_follow(current: str, target: str) -> bool:
    """Same scheme, host and port; or an upgrade from http to https on the same host."""
    here, there = _origin(current), _origin(target)
    if here == there:
        return True
    return (here[0], there[0]) == ("http", "https") and here[1] == there[1] and here[2] == 80 \
        and there[2] == 443


def _send(session: requests.Session, method: str, url: str, *, what: str,
          timeout: tuple[float, float], max_bytes: int, **kwargs: Any) -> requests.Response:
    """One attempt: follow same-origin redirects, refuse others, read at most ``max_bytes``."""
    kwargs.pop("allow_redirects", None)
    for _hop in range(MAX_REDIRECTS + 1):
        response = session.request(method, url, timeout=timeout, allow_redirects=False, stream=True,
                                   **kwargs)
        location = response.headers.get("Location")
        if response.status_code not in _REDIRECTS or not location:
            _read_body(response, what=what, max_bytes=max_bytes)
            return response
        response.close()
        target = urljoin(url, location)
        if not _may_follow(url, target):
            scheme, host, port = _origin(target)
            raise CrossHostRedirectError(
                f"{what}: the server redirected to another host ({scheme}://{host}:{port}); "
                "not followed, so the credentials stay with the configured host: set the URL "
                "to where it points", status=response.status_code)
        if response.status_code == 303 or (response.status_code in (301, 302)
                                           and method.upper() not in ("GET", "HEAD")):
            method = "GET"
            for body in ("json", "data", "files"):
                kwargs.pop(body, None)
        kwargs.pop("params", None)  # the Location carries the query
        url = target
    raise FatalAPIError(f"{what}: more than {MAX_REDIRECTS} redirects", status=0)


def _read_body(response: requests.Response, *, what: str, max_bytes: int) -> None:
    """Read a streamed body into ``response.content``, refusing more than ``max_bytes``."""
    size = response.headers.get("Content-Length", "")
    too_large = ResponseTooLargeError(
        f"{what}: the response is larger than the maximum of {max_bytes:,} bytes; not read",
        status=response.status_code)
    if size.isdigit() and int(size) > max_bytes:
        response.close()
        raise too_large
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            response.close()
            raise too_large
        chunks.append(chunk)
    response._content = b"".join(chunks)  # what .content, .text and .json() read
    response._content_consumed = True  # type: ignore[attr-defined]


def _short_detail(response: requests.Response) -> str:
    """A short, secret-free description of an error body (JSON ``error``/``message``)."""
    if response.status_code < 400:
        return ""
    content_type = response.headers.get("Content-Type", "")
    if "json" in content_type:
        try:
            body = response.json()
        except ValueError:
            return ""
        if isinstance(body, dict):
            for key in ("error", "message", "error_info"):
                if isinstance(body.get(key), str):
                    return str(body[key])[:200]
        return ""
    if "html" in content_type:
        if response.status_code == 403:
            return "HTML response (blocked by the server or a proxy)"
        return "HTML response"
    return ""
