"""``csv_feed.first_lines.FirstLines`` against a plain ``dict`` of ids to lines."""

from __future__ import annotations

import random

from sales_velocity.connectors.csv_feed.first_lines import FirstLines


def test_setdefault_answers_as_a_dict_across_levels() -> None:
    """300,000 ids, a third of them repeated, one at a time: every answer a dict's (ids move into levels)."""
    rng = random.Random(5)
    plain: dict[str, int] = {}
    compact = FirstLines()
    for line in range(2, 300_002):
        key = f"id-{rng.randrange(200_000)}"
        assert compact.setdefault(key, line) == plain.setdefault(key, line)
    assert len(compact) == len(plain)
    assert compact._levels  # most ids were looked up in a level


def test_blocks_answer_as_a_dict() -> None:
    """Blocks looked up at once (``prior``), the block's own ids one by one, mixed with single calls."""
    rng = random.Random(8)
    plain: dict[str, int] = {}
    compact = FirstLines()
    line = 2
    for _ in range(60):
        keys = [f"k{rng.randrange(150_000)}" for _ in range(4_000)]
        digests, prior = compact.prior(keys)
        for i, key in enumerate(keys):
            got: int | None
            if i % 7 == 0:  # a row the row rules read: asked one at a time, inside the block
                got = compact.setdefault(key, line)
            else:
                got = prior[i] if prior[i] is not None else compact.add(digests[i], line, searched=True)
            assert got == plain.setdefault(key, line)
            line += 1
        compact.release()
    assert len(compact) == len(plain)


def test_digests_sharing_a_high_half_stay_apart() -> None:
    """Two digests with the same first 8 bytes are two ids, in the dict and in a level."""
    compact = FirstLines()
    a, b = b"\x01" * 8 + b"\x02" * 8, b"\x01" * 8 + b"\x03" * 8
    assert compact.add(a, 10, searched=False) == 10
    assert compact.add(b, 20, searched=False) == 20
    compact._compact()
    assert compact.add(b, 30, searched=False) == 20
    assert compact.add(a, 40, searched=False) == 10
    assert compact.add(b"\x01" * 8 + b"\x04" * 8, 50, searched=False) == 50
