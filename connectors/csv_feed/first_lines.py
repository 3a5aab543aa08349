"""Where each deal id of a file was first seen, in about 24 bytes an id.

The CSV feed rejects a repeated id with the line it was first seen on, so it
remembers every id of the file. A ``dict`` of a million ids to their lines
takes about 110 MB; :class:`FirstLines` keeps a 128-bit digest of each id
(BLAKE2b) and its line: the newest ids in a small ``dict``, the rest in sorted
numpy arrays (levels that merge as they grow, so every id is sorted a few
times in all), 24 bytes an id. Two different ids of a billion share a digest
with a probability of about 10**-21: never, in practice.

:meth:`FirstLines.setdefault` is a ``dict``'s (the row path asks one id at a
time); :meth:`FirstLines.prior` looks up a block of ids at once (the columnar
path), and until :meth:`FirstLines.release` no id moves into a level, so ids
added one at a time meanwhile are found in the ``dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

__all__ = ["FirstLines"]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
_RECENT = 1 << 16
"""Ids kept in the ``dict`` before they move into a level."""


def _digest(key: str) -> bytes:
    return blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _halves(digests: Sequence[bytes]) -> tuple[U64, U64]:
    pairs = np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


class FirstLines:
    """The line each id was first seen on (see the module docstring)."""

    def __init__(self) -> None:
        self._recent: dict[bytes, int] = {}
        self._levels: list[tuple[U64, U64, I64]] = []
        """(high halves sorted, low halves, lines): the high half orders a level."""
        self._held = False

    def __len__(self) -> int:
        return len(self._recent) + sum(len(level[0]) for level in self._levels)

    def setdefault(self, key: str, line: int) -> int:
        """The line ``key`` was first seen on; ``line`` when it is new (and remembered so)."""
        return self.add(_digest(key), line, searched=False)

    def add(self, digest: bytes, line: int, *, searched: bool) -> int:
        """:meth:`setdefault` by digest; ``searched``: the levels are known not to hold it (:meth:`prior`)."""
        if (first := self._recent.get(digest)) is not None:
            return first
        if not searched:
            high, low = _halves([digest])
            found = self._find(high, low)[0]
            if found >= 0:
                return int(found)
        self._recent[digest] = line
        if len(self._recent) >= _RECENT and not self._held:
            self._compact()
        return line

    def prior(self, keys: Sequence[str | None]) -> tuple[list[bytes], list[int | None]]:
        """Each key's digest, and the line it was first seen on in the levels (``None``: not there).

        A ``None`` key (a row without an id) is looked up as the empty id.

        Until :meth:`release` no id moves into a level: look the rest up with
        :meth:`add` (``searched=True``).
        """
        self._held = True
        digests = [_digest(key or "") for key in keys]
        if not self._levels or not digests:
            return digests, [None] * len(digests)
        found = self._find(*_halves(digests))
        return digests, [None if line < 0 else line for line in found.tolist()]

    def release(self) -> None:
        """End of a block: ids may move into a level again."""
        self._held = False
        if len(self._recent) >= _RECENT:
            self._compact()

    def _find(self, high: U64, low: U64) -> I64:
        """The line of each digest in the levels, -1 where none holds it."""
        out = np.full(len(high), -1, dtype=np.int64)
        for level_high, level_low, lines in self._levels:
            at = np.searchsorted(level_high, high)
            inside = at < len(level_high)
            same = np.zeros(len(high), dtype=bool)
            same[inside] = level_high[at[inside]] == high[inside]
            for i in np.flatnonzero(same).tolist():  # equal high halves are next to each other
                j = int(at[i])
                while j < len(level_high) and level_high[j] == high[i]:
                    if level_low[j] == low[i]:
                        out[i] = lines[j]
                        break
                    j += 1
        return out

    def _compact(self) -> None:
        """The ``dict``'s ids into a new level; levels no larger than the next merged into it."""
        high, low = _halves(list(self._recent))
        lines = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        self._recent = {}
        self._levels.append(_sorted(high, low, lines))
        while len(self._levels) > 1 and len(self._levels[-2][0]) <= 2 * len(self._levels[-1][0]):
            newer = self._levels.pop()
            older = self._levels.pop()
            self._levels.append(_sorted(*(np.concatenate(pair) for pair in zip(older, newer, strict=True))))


def _sorted(high: U64, low: U64, lines: I64) -> tuple[U64, U64, I64]:
    order = np.argsort(high, kind="stable")
    return high[order], low[order], lines[order]
