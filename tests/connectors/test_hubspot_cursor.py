"""The HubSpot cursor and the keyset search walk, driven with hand-built pages."""

from __future__ import annotations

import random

import pytest

from sales_velocity.connectors.hubspot.cursor import (
    FullSweep,
    HubSpotCursor,
    ModifiedWalk,
    SearchQuery,
    WalkError,
)


class TestCursor:
    """The stored cursor round-trips and refuses what it cannot read."""

    def test_round_trip(self) -> None:
        """Encoding then decoding gives the same cursor, sweep included."""
        cursor = HubSpotCursor(modified_ms=1_700_000_000_123, full_ms=1_699_000_000_000,
                               sweep=FullSweep(start_ms=5, after="9001", live_done=False))
        assert HubSpotCursor.decode(cursor.encode()) == cursor

    def test_literal_encoding(self) -> None:
        """The stored form is compact, versioned JSON."""
        assert HubSpotCursor(modified_ms=1704067200000).encode() == (
            '{"modified_ms":1704067200000,"v":1}'
        )

    def test_bare_epoch_ms(self) -> None:
        """A hand-set epoch-ms cursor is read as the modification time."""
        assert HubSpotCursor.decode(" 1704067200000 ") == HubSpotCursor(modified_ms=1704067200000)

    @pytest.mark.parametrize(
        "text",
        ["", "yesterday", "[]", '{"v":2,"modified_ms":1}', '{"v":1,"modified_ms":"abc"}',
         '{"v":1,"modified_ms":true}', '{"v":1,"sweep":{"after":"x"}}'],
    )
    def test_rejects_garbage(self, text: str) -> None:
        """Anything else is an error rather than a silent full or empty sync."""
        with pytest.raises(ValueError, match="cursor"):
            HubSpotCursor.decode(text)


def run_walk(deals: dict[str, int], since_ms: int, page_size: int = 3,
             shuffle: random.Random | None = None,
             ) -> tuple[list[str], list[SearchQuery], ModifiedWalk]:
    """Drive a walk over ``{id: modified_ms}`` the way HubSpot's search would answer it."""
    walk = ModifiedWalk(since_ms, page_size)
    delivered: list[str] = []
    queries: list[SearchQuery] = []
    while not walk.finished:
        query = walk.query()
        queries.append(query)
        assert len(queries) < 1000, "the walk does not end"
        rows = [(key, ms) for key, ms in deals.items() if _matches(key, ms, query)]
        if shuffle is not None:
            shuffle.shuffle(rows)
        if query.sort == "hs_object_id":
            rows.sort(key=lambda r: int(r[0]))
        else:
            rows.sort(key=lambda r: r[1])  # stable: ties keep the shuffled order
        page = rows[:page_size]
        delivered.extend(page[i][0] for i in walk.advance(page))
    return delivered, queries, walk


def _matches(key: str, ms: int, query: SearchQuery) -> bool:
    for prop, op, value in query.filters:
        actual = ms if prop == "hs_lastmodifieddate" else int(key)
        wanted = int(value)
        if not {"GT": actual > wanted, "GTE": actual >= wanted, "LTE": actual <= wanted}[op]:
            return False
    return True


class TestModifiedWalk:
    """The walk delivers every change once, never pages by offset, and always ends."""

    def test_distinct_times(self) -> None:
        """Distinct modification times come out in order, each once, from the lower bound."""
        deals = {str(i): 1000 + i for i in range(1, 11)}
        delivered, queries, walk = run_walk(deals, since_ms=1003)
        assert delivered == [str(i) for i in range(3, 11)]
        assert all(len(q.filters) == 1 and q.filters[0][1] == "GTE" for q in queries)
        assert walk.covered_ms == 1010
        assert walk.max_ms == 1010

    def test_ties_at_page_boundaries(self) -> None:
        """Deals sharing a timestamp across a page boundary are neither lost nor repeated."""
        deals = {"1": 5, "2": 5, "3": 6, "4": 6, "5": 6, "6": 7, "7": 7}
        delivered, _, _ = run_walk(deals, since_ms=0, shuffle=random.Random(3))
        assert sorted(delivered) == sorted(deals)
        assert len(delivered) == len(deals)

    def test_more_ties_than_a_page(self) -> None:
        """A full page of one timestamp switches to an id sweep, then continues after it."""
        deals = {str(i): 50 for i in range(1, 12)} | {"20": 40, "21": 60, "22": 61}
        delivered, queries, walk = run_walk(deals, since_ms=0, shuffle=random.Random(1))
        assert sorted(delivered, key=int) == sorted(deals, key=int)
        assert len(delivered) == len(deals)
        tie_queries = [q for q in queries if q.sort == "hs_object_id"]
        assert tie_queries[0].filters == (
            ("hs_lastmodifieddate", "GTE", "50"), ("hs_lastmodifieddate", "LTE", "50"),
            ("hs_object_id", "GT", "0"),
        )
        after = queries[queries.index(tie_queries[-1]) + 1]
        assert after.filters == (("hs_lastmodifieddate", "GT", "50"),)
        assert walk.covered_ms == 61

    def test_ten_thousand_deals_on_one_timestamp_end(self) -> None:
        """Even 12,000 deals on one millisecond are walked in bounded requests."""
        deals = {str(i): 7 for i in range(1, 12_001)}
        delivered, queries, _ = run_walk(deals, since_ms=7, page_size=200)
        assert len(delivered) == 12_000 == len(set(delivered))
        assert len(queries) <= 12_000 // 200 + 3

    def test_checkpoint_only_covers_what_is_delivered(self) -> None:
        """``covered_ms`` never passes a timestamp whose ties are not all delivered."""
        walk = ModifiedWalk(0, page_size=3)
        walk.advance([("1", 10), ("2", 20), ("3", 20)])
        assert walk.covered_ms == 20  # "4" at 20 is not delivered yet: 20 itself is not covered
        assert walk.query().filters == (("hs_lastmodifieddate", "GTE", "20"),)
        new = walk.advance([("3", 20), ("2", 20), ("4", 20)])
        assert new == [2]
        assert not walk.finished  # a full page at the anchor: sweep 20 by id
        assert walk.query().sort == "hs_object_id"

    def test_changed_deal_is_delivered_again(self) -> None:
        """A deal modified after delivery is delivered again with its new time."""
        walk = ModifiedWalk(0, page_size=2)
        assert walk.advance([("1", 10), ("2", 11)]) == [0, 1]
        assert walk.advance([("2", 11), ("1", 12)]) == [1]

    def test_empty_result(self) -> None:
        """No changes: the walk ends at once and covers only its lower bound."""
        walk = ModifiedWalk(500)
        assert walk.advance([]) == []
        assert walk.finished
        assert walk.covered_ms == 500
        assert walk.max_ms is None

    @pytest.mark.parametrize(
        "page",
        [[("1", 20), ("2", 10), ("3", 30)], [("1", 5), ("2", 60), ("3", 70)]],
    )
    def test_refuses_out_of_order_pages(self, page: list[tuple[str, int]]) -> None:
        """Unsorted results or results before the lower bound raise instead of skipping."""
        walk = ModifiedWalk(10, page_size=3)
        with pytest.raises(WalkError):
            walk.advance(page)

    def test_refuses_to_go_on_after_the_end(self) -> None:
        """A finished walk cannot be advanced."""
        walk = ModifiedWalk(0)
        walk.advance([])
        with pytest.raises(WalkError, match="finished"):
            walk.advance([])

    def test_refuses_ids_going_backwards_in_a_tie_sweep(self) -> None:
        """In an id sweep, an id at or below the floor means the server ignored the filter."""
        walk = ModifiedWalk(0, page_size=2)
        walk.advance([("1", 0), ("2", 0)])  # full page on the anchor: id sweep from 0
        walk.advance([("1", 0), ("2", 0)])
        with pytest.raises(WalkError, match="not after id 2"):
            walk.advance([("2", 0), ("3", 0)])
