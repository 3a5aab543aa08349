"""What the HubSpot client hands back, made safe: errors classified, pages read as JSON.

* ``classify_hubspot_error`` turns any of the client's per-area ``ApiException``
  classes (recognised by shape: ``status``, ``headers``, ``body``) and urllib3's
  connection errors into our error tree, for ``kernel.http.call_with_retry``.
* ``json_body`` reads a raw deal page (``_preload_content=False``): the client's
  model deserialisation parses every timestamp with dateutil and cost more than
  the rest of the sync, so deal pages are read as plain JSON.
* ``next_after`` follows ``paging.next.after`` and refuses a repeated token.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import urllib3

from sales_velocity.connectors.hubspot.mapping import parse_datetime, to_ms
from sales_velocity.kernel.errors import (
    AuthError,
    BudgetExhaustedError,
    FatalAPIError,
    RemoteError,
    RetriableAPIError,
)
from sales_velocity.kernel.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    CrossHostRedirectError,
    ResponseTooLargeError,
    classify_status,
    parse_retry_after,
)

__all__ = [
    "DEALS_SCOPE_HINT",
    "OWNERS_SCOPE_HINT",
    "classify_hubspot_error",
    "json_body",
    "modified_ms",
    "ms_of",
    "next_after",
]

DEALS_SCOPE_HINT = "token rejected or missing scope crm.objects.deals.read"
OWNERS_SCOPE_HINT = "token rejected or missing scope crm.objects.owners.read"


def classify_hubspot_error(
    exc: BaseException, *, what: str, auth_hint: str = DEALS_SCOPE_HINT, secret: str = ""
) -> RemoteError | None:
    """Turn a HubSpot client or urllib3 failure into one of our errors (``None``: not ours).

    Every API area of the client has its own ``ApiException`` class, so they are
    recognised by shape (``status``, ``headers``, ``body``), not by type. The
    message keeps HubSpot's ``message`` and ``policyName`` (with ``secret``
    masked), never headers.
    """
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return RetriableAPIError(f"{what}: connection failed ({type(exc).__name__})", status=0)
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or not hasattr(exc, "body"):
        return None
    body = _error_body(getattr(exc, "body", None))
    message = str(body.get("message") or "")
    if secret:
        message = message.replace(secret, "***")
    message = message[:200]
    policy = str(body.get("policyName") or "")
    detail = f"{message} [{policy}]" if policy else message
    if status == 429 and policy.upper() == "DAILY":
        return BudgetExhaustedError(f"{what}: HubSpot daily request limit reached: {message}",
                                    status=status)
    if 300 <= status < 400:  # urllib3 follows no redirect for the client (retries off)
        headers = getattr(exc, "headers", None) or {}
        location = headers.get("Location", "") if hasattr(headers, "get") else ""
        parts = urlsplit(str(location))
        to = f" to {parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":") if parts.hostname else ""
        return CrossHostRedirectError(
            f"{what}: HubSpot answered a redirect (HTTP {status}{to}); not followed, so the token "
            "stays with the configured base_url", status=status)
    if status == 530:  # HubSpot's edge answers 530, not 401, to a malformed token
        return AuthError(f"{what}: access denied (HTTP 530: malformed token); {auth_hint}",
                         status=status)
    headers = getattr(exc, "headers", None) or {}
    retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
    return classify_status(status, what=what, retry_after=parse_retry_after(retry_after),
                           auth_hint=auth_hint, detail=detail)


def _error_body(raw: Any) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def json_body(response: Any, *, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> dict[str, Any]:
    """Read a raw (``_preload_content=False``) response as JSON and release the connection.

    Raises:
        ResponseTooLargeError: the body is larger than ``max_bytes``.
        RetriableAPIError: the body is not a JSON object (a truncated or proxy page).
    """
    try:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.stream(1 << 16):
            total += len(chunk)
            if total > max_bytes:
                response.close()
                raise ResponseTooLargeError(
                    f"HubSpot: the response is larger than the maximum of {max_bytes:,} bytes; not read")
            chunks.append(chunk)
        data = json.loads(b"".join(chunks))
    except ValueError:
        data = None
    finally:
        response.release_conn()
    if not isinstance(data, dict):
        raise RetriableAPIError("HubSpot answered a body that is not a JSON object", status=0)
    return data


def next_after(page: Any, previous: str | None) -> str | None:
    """The next page's ``after`` token, or ``None`` on the last page.

    Accepts a client model (owners) or a JSON dict (deals).

    Raises:
        FatalAPIError: the server handed back the same token (it would loop forever).
    """
    if isinstance(page, dict):
        after = ((page.get("paging") or {}).get("next") or {}).get("after")
    else:
        paging = getattr(page, "paging", None)
        nxt = getattr(paging, "next", None) if paging is not None else None
        after = getattr(nxt, "after", None) if nxt is not None else None
    if after is None:
        return None
    if str(after) == previous:
        raise FatalAPIError(f"HubSpot returned the paging token {after!r} twice")
    return str(after)


def ms_of(value: Any) -> int | None:
    """Epoch ms of an ISO string (``None`` if absent or unreadable)."""
    try:
        parsed, _ = parse_datetime(value if isinstance(value, str) else None)
    except ValueError:
        return None
    return None if parsed is None else to_ms(parsed)


def modified_ms(result: dict[str, Any]) -> int | None:
    """A deal's ``hs_lastmodifieddate`` in epoch ms (``updatedAt`` if it is unreadable)."""
    found = ms_of((result.get("properties") or {}).get("hs_lastmodifieddate"))
    return found if found is not None else ms_of(result.get("updatedAt"))
