"""The HubSpot cursor and the search walk: pure state, no I/O.

Cursor
    ``HubSpotCursor`` is what the store keeps between runs, as compact JSON
    (``{"v":1,"modified_ms":...}``). ``modified_ms`` means "every change with
    ``hs_lastmodifieddate`` before this instant has been delivered": the start
    of the last finished sync (a finished sweep or search has seen everything
    indexed by then), or, mid-search, the last modification time whose ties are
    all delivered. The next run searches from ``modified_ms - lookback``, which
    absorbs late indexing and small clock differences; upserts absorb the overlap.
    ``full_ms`` is when the last full sweep started (for the periodic reconciliation), and ``sweep`` holds the
    position of a full sweep in progress, so a crash in a long first sync resumes
    where it stopped instead of starting over. A plain epoch-ms string is read
    as ``modified_ms``, so a person can set a cursor by hand.

Search walk
    ``ModifiedWalk`` pages through ``POST /crm/v3/objects/deals/search``
    sorted by ``hs_lastmodifieddate`` ascending, with *keyset* paging: every
    request starts again at the last modification time seen (``GTE last``) with
    ``after`` unused, and results already delivered at exactly that time are
    skipped. So the search never comes near its 10,000-result cap, and a deal
    modified during the walk moves behind the anchor instead of shifting offsets
    (offset paging over a changing, sorted set skips records). A full page whose
    results all share the anchor's timestamp would not advance; the walk then
    sweeps that one timestamp by ``hs_object_id`` (``GT last id``, ids ascending),
    which always advances, and continues with ``GT`` the timestamp. However many
    deals share one timestamp, the walk ends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CURSOR_VERSION",
    "FullSweep",
    "HubSpotCursor",
    "ModifiedWalk",
    "SearchQuery",
    "WalkError",
]

CURSOR_VERSION = 1
MODIFIED = "hs_lastmodifieddate"
OBJECT_ID = "hs_object_id"


class WalkError(ValueError):
    """The search answered something the walk cannot trust (unsorted, going backwards)."""


# --------------------------------------------------------------------------- cursor


@dataclass(frozen=True, slots=True)
class FullSweep:
    """A full sweep in progress: when it started and where the live listing stands.

    ``after`` is the list endpoint's token for the next page (``None``: the
    first page); ``live_done`` says the live listing is finished and only the
    archived one is left. ``max_ms`` is the latest modification time seen.
    """

    start_ms: int
    after: str | None = None
    live_done: bool = False
    max_ms: int | None = None


@dataclass(frozen=True, slots=True)
class HubSpotCursor:
    """The stored position of a HubSpot source (see the module docstring)."""

    modified_ms: int | None = None
    full_ms: int | None = None
    sweep: FullSweep | None = None

    def encode(self) -> str:
        """Return the cursor as compact JSON with a version tag."""
        data: dict[str, Any] = {"v": CURSOR_VERSION, "modified_ms": self.modified_ms}
        if self.full_ms is not None:
            data["full_ms"] = self.full_ms
        if self.sweep is not None:
            s = self.sweep
            data["sweep"] = {"start_ms": s.start_ms, "after": s.after, "live_done": s.live_done}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> HubSpotCursor:
        """Read a stored cursor (JSON, or a bare epoch-ms number).

        Raises:
            ValueError: the text is neither.
        """
        text = text.strip()
        if text.isdigit():
            return cls(modified_ms=int(text))
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("cursor is neither JSON nor epoch milliseconds") from None
        if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
            raise ValueError(f"cursor is not a version {CURSOR_VERSION} HubSpot cursor")
        sweep = data.get("sweep")
        try:
            return cls(
                modified_ms=_opt_int(data.get("modified_ms")),
                full_ms=_opt_int(data.get("full_ms")),
                sweep=None if sweep is None else FullSweep(
                    start_ms=int(sweep["start_ms"]),
                    after=None if sweep.get("after") is None else str(sweep["after"]),
                    live_done=bool(sweep.get("live_done", False)),
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("cursor has malformed fields") from None


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError("not an integer")
    return int(value)


# --------------------------------------------------------------------------- search walk


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One search request: AND-ed ``(property, operator, value)`` filters and a sort."""

    filters: tuple[tuple[str, str, str], ...]
    sort: str


@dataclass
class ModifiedWalk:
    """Keyset walk over deals by modification time (see the module docstring).

    Use: ``while not walk.finished: results = search(walk.query()); new =
    walk.advance([(id, modified_ms), ...])``; yield the results at the indexes
    in ``new``. ``covered_ms`` is safe to checkpoint after every page.
    """

    since_ms: int
    page_size: int = 200
    finished: bool = False
    max_ms: int | None = None
    _anchor: int = field(init=False)
    _strict: bool = field(default=False, init=False)
    _ties: bool = field(default=False, init=False)
    _id_floor: int = field(default=0, init=False)
    _delivered: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._anchor = self.since_ms

    @property
    def covered_ms(self) -> int:
        """Every change modified before this instant has been delivered."""
        if self.finished and self.max_ms is not None:
            return max(self.max_ms, self._anchor)
        return self._anchor

    def query(self) -> SearchQuery:
        """The next request to make."""
        anchor = str(self._anchor)
        if self._ties:
            return SearchQuery(
                ((MODIFIED, "GTE", anchor), (MODIFIED, "LTE", anchor),
                 (OBJECT_ID, "GT", str(self._id_floor))),
                OBJECT_ID,
            )
        return SearchQuery(((MODIFIED, "GT" if self._strict else "GTE", anchor),), MODIFIED)

    def advance(self, results: Sequence[tuple[str, int]]) -> list[int]:
        """Take one page of ``(deal id, modified ms)``; return the indexes to deliver.

        Raises:
            WalkError: the page breaks the order the query asked for.
        """
        if self.finished:
            raise WalkError("the walk is already finished")
        self._check_order(results)
        new = [i for i, (key, ms) in enumerate(results) if self._delivered.get(key) != ms]
        for key, ms in results:
            if ms == self._anchor:
                self._delivered[key] = ms
            self.max_ms = ms if self.max_ms is None else max(self.max_ms, ms)
        full = len(results) >= self.page_size
        if self._ties:
            if full:
                self._id_floor = _deal_number(results[-1][0])
            else:  # every deal at the anchor's timestamp is done: continue after it
                self._ties, self._strict, self._delivered = False, True, {}
        elif not full:
            self.finished = True
        elif results[-1][1] > self._anchor:
            self._anchor, self._strict = results[-1][1], False
            self._delivered = {key: ms for key, ms in results if ms == self._anchor}
        else:  # a full page of one timestamp: sweep it by id so the walk always advances
            self._ties, self._id_floor = True, 0
        return new

    def _check_order(self, results: Sequence[tuple[str, int]]) -> None:
        previous: tuple[int, int] | None = None
        for key, ms in results:
            if self._ties:
                if ms != self._anchor:
                    raise WalkError(f"deal {key} is outside the timestamp being swept")
                position = (_deal_number(key), 0)
                if position[0] <= self._id_floor:
                    raise WalkError(f"deal {key} is not after id {self._id_floor}")
            else:
                if ms < self._anchor or (self._strict and ms == self._anchor):
                    raise WalkError(f"deal {key} is before the search's lower bound")
                position = (ms, 0)
            if previous is not None and (position < previous or (self._ties and position == previous)):
                raise WalkError(f"search results are not in ascending order at deal {key}")
            previous = position


def _deal_number(key: str) -> int:
    """A deal id as the number ``hs_object_id`` compares by."""
    try:
        return int(key)
    except ValueError:
        raise WalkError(f"deal id {key!r} is not numeric") from None
