"""Pipedrive paging and cursor rules, as two small pure state objects.

* ``CursorPaginator`` follows API v2's ``additional_data.next_cursor`` until it
  is ``null``; a cursor the API already gave raises instead of looping forever.
* ``Watermark`` owns the sync cursor: the highest deal ``update_time`` seen,
  written as RFC 3339 (``2025-06-03T10:22:05Z``). The next run asks for
  ``updated_since = cursor - overlap`` (the API's lower bound is inclusive, and
  the overlap absorbs late writes; the store's idempotent upsert absorbs the
  re-read deals). The cursor never moves backwards, is capped at the time the
  sync started (so deals written during the sync are read again next time),
  and stops moving while a page arrives out of ``update_time`` order (a
  checkpoint in the middle of an unsorted stream could skip deals).

Nothing here does I/O, so both are tested with literal before/after values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sales_velocity.kernel.errors import FatalAPIError

__all__ = ["CursorPaginator", "Watermark", "format_time", "parse_cursor"]


def format_time(moment: dt.datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with a ``Z`` (what ``updated_since`` takes)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_cursor(cursor: str | None) -> dt.datetime | None:
    """Read a stored cursor; ``None`` (no cursor) means a full pull.

    Raises:
        ValueError: the cursor is not one this connector wrote.
    """
    if cursor is None or not cursor.strip():
        return None
    moment = dt.datetime.fromisoformat(cursor.strip())
    if moment.tzinfo is None:
        raise ValueError(f"cursor {cursor!r} has no time zone")
    return moment.astimezone(dt.UTC)


class CursorPaginator:
    """Cursor pagination of one v2 list: start, ``advance(body)``, until ``finished``.

    ``cursor`` is the value to send as the ``cursor`` query parameter for the
    next page (``None`` for the first one).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.cursor: str | None = None
        self.finished = False
        self.pages = 0
        self._seen: set[str] = set()

    def advance(self, body: Mapping[str, Any]) -> None:
        """Take the next cursor from a page's ``additional_data``.

        Raises:
            FatalAPIError: the API handed out a cursor it already gave (a loop).
        """
        self.pages += 1
        extra = body.get("additional_data")
        next_cursor = extra.get("next_cursor") if isinstance(extra, Mapping) else None
        if not next_cursor:
            self.cursor, self.finished = None, True
            return
        next_cursor = str(next_cursor)
        if next_cursor in self._seen:
            raise FatalAPIError(
                f"{self.what}: the API repeated a page cursor after {self.pages} pages; "
                "stopping instead of looping"
            )
        self._seen.add(next_cursor)
        self.cursor = next_cursor


class Watermark:
    """The sync cursor of one pull: where it resumed from and the highest time seen.

    Args:
        resume: the cursor this pull started from (``None``: a full pull).
        cap: the time the sync started; the cursor never passes it.
    """

    def __init__(self, resume: dt.datetime | None, cap: dt.datetime) -> None:
        self.resume = resume
        self.cap = cap
        self.high: dt.datetime | None = None
        self.in_order = True
        self._last: dt.datetime | None = None

    def updated_since(self, overlap: dt.timedelta) -> str | None:
        """The ``updated_since`` parameter for this pull (``None``: everything)."""
        return None if self.resume is None else format_time(self.resume - overlap)

    def observe(self, moment: dt.datetime | None, *, ordered: bool = True) -> None:
        """Record a deal's ``update_time``.

        ``ordered=True`` means it came from a stream sorted by ``update_time``
        ascending; a step backwards there freezes intermediate cursors.
        """
        if moment is None:
            return
        if ordered:
            if self._last is not None and moment < self._last:
                self.in_order = False
            self._last = moment if self._last is None else max(self._last, moment)
        self.high = moment if self.high is None else max(self.high, moment)

    def cursor(self, *, final: bool = False) -> str | None:
        """The cursor to checkpoint now; ``final`` once every list has been read.

        In the middle of a pull the cursor is the highest time of the sorted
        stream, and only while its pages arrived in order; at the end it is the
        highest time seen anywhere (unsorted lists included). It is capped at the sync
        start and never falls below the cursor the pull resumed from.
        """
        best = self.resume
        seen = self.high if final else (self._last if self.in_order else None)
        if seen is not None:
            seen = min(seen, self.cap)
            best = seen if best is None else max(best, seen)
        return None if best is None else format_time(best)
