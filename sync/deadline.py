"""The per-source sync deadline: a source that syncs too long stops, keeping what it wrote.

``bounded`` wraps a connector's deal stream: once the deadline has passed, the
next item raises ``SyncDeadlineError`` instead of being handed over, so the
engine ends the sync as ``failed`` with everything up to the last checkpoint
committed (the next run resumes from there) and the source's lock is released
for the next run. A request already under way is bounded by its own total
deadline (``kernel.http``), so a sync ends at most one request deadline after
its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from sales_velocity.kernel.errors import FatalAPIError

__all__ = ["SyncDeadlineError", "bounded"]

T = TypeVar("T")


class SyncDeadlineError(FatalAPIError):
    """A source's sync ran past its deadline (``[sync] deadline_seconds``)."""


def bounded(stream: Iterator[T], *, source: str, seconds: float | None, started: float,
            clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Yield ``stream``'s items until ``seconds`` after ``started`` (``clock`` time), then stop.

    Raises:
        SyncDeadlineError: the deadline passed before the stream ended.
    """
    if seconds is None:
        yield from stream
        return
    until = started + seconds
    for item in stream:
        if clock() > until:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            raise SyncDeadlineError(
                f"source {source!r}: the sync ran past its deadline of {seconds:g} s "
                "([sync] deadline_seconds); what was written up to the last checkpoint is kept "
                "and the next run resumes from there", source=source)
        yield item
