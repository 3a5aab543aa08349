"""A source that syncs past its deadline stops, keeps what it checkpointed, and resumes (issue 14, item 8)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import sqlalchemy as sa

from sales_velocity.connectors.base import Checkpoint, StreamItem
from sales_velocity.sync.engine import read_cursor, sync_source
from sales_velocity.sync.store import deals_table
from tests.sync.test_engine import T0, StreamConnector, deal


def slow_stream(start: int = 0) -> Iterator[StreamItem]:
    """40 deals, 50 ms apart, a checkpoint after every 5 (a CRM answering slowly page after page)."""
    for n in range(start, 40):
        time.sleep(0.05)
        yield deal(str(n))
        if n % 5 == 4:
            yield Checkpoint(f"c{n}")
    yield Checkpoint("end", complete=True)


def stored(store: sa.Engine) -> int:
    """Deals in the store."""
    with store.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(deals_table)).scalar_one())


def test_a_source_past_its_deadline_fails_and_keeps_its_checkpoints(store: sa.Engine) -> None:
    """Deadline 0.6 s against a 2 s pull: failed, the deadline named; checkpointed deals and cursor kept."""
    started = time.monotonic()
    result = sync_source(store, StreamConnector(slow_stream), now=lambda: T0, deadline_s=0.6)
    assert time.monotonic() - started < 1.5
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("source 'fake': the sync ran past its deadline of 0.6 s")
    kept = stored(store)
    assert 5 <= kept < 40
    with store.connect() as conn:
        cursor = read_cursor(conn, "fake")
    assert cursor is not None
    resumed_at = int(cursor[1:]) + 1
    assert resumed_at <= kept  # the cursor covers only what was committed
    again = sync_source(store, StreamConnector(lambda: slow_stream(resumed_at)), now=lambda: T0)
    assert again.status == "ok"
    assert stored(store) == 40
