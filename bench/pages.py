"""Already-fetched pages on disk, and the connector that replays them into the sync engine.

The benchmark times the sync engine *with* connector overhead (turning a
fetched page into ``Deal`` records, as every connector's mapper does) but
*without* the network and without the random generator: ``write_pages`` pickles
the generated pages to a file before the timed run, and ``PagedConnector``
reads them back one page at a time, so neither side ever holds all N deals.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.generator import Catalog, DealRow, change_row, deal_pages, is_changed
from sales_velocity.connectors.base import (
    Checkpoint,
    Deal,
    Owner,
    Pipeline,
    SourceSettings,
    StageVisit,
    StreamItem,
)

__all__ = ["PagedConnector", "read_pages", "to_deal", "write_pages"]

_DEAL: Any = Deal  # rows are positional in Deal's field order (DEAL_FIELDS)


def write_pages(path: Path, count: int, seed: int, page_size: int) -> dict[str, list[DealRow]]:
    """Generate ``count`` deals into ``path`` (one pickle per page).

    Returns:
        The changed versions of the deals each re-sync changes (1 % each), by
        change set; small enough to keep (N / 50 rows in all).
    """
    changed: dict[str, list[DealRow]] = {"full": [], "incremental": []}
    with path.open("wb") as out:
        for page in deal_pages(count, seed, page_size):
            pickle.dump(page, out, protocol=pickle.HIGHEST_PROTOCOL)
            for row in page:
                for name, rows in changed.items():
                    if is_changed(row, name):
                        rows.append(change_row(row, name))
    return changed


def read_pages(path: Path) -> Iterator[list[DealRow]]:
    """Yield the pages written by ``write_pages``, one at a time."""
    with path.open("rb") as source:
        while True:
            try:
                yield pickle.load(source)  # noqa: S301 - our own file, written just before
            except EOFError:
                return


def to_deal(row: DealRow) -> Deal:
    """Map one row to a ``Deal`` (validated by ``Deal.__post_init__``), as a connector does."""
    history = tuple(StageVisit(stage, at) for stage, at in row[20])
    deal: Deal = _DEAL(*row[:20], stage_history=history, raw=row[21])
    return deal


class PagedConnector:
    """A connector over pre-fetched pages: a checkpoint after every page, like the real ones.

    Args:
        name: the source name.
        catalog: pipelines and owners.
        pages: makes the page iterator for one pull.
        complete: end with ``Checkpoint(complete=True)`` (a full pull).
        replace: rows to send instead of the stored ones, by external id.
    """

    kind = "bench"

    def __init__(
        self,
        name: str,
        catalog: Catalog,
        pages: Callable[[], Iterable[list[DealRow]]],
        *,
        complete: bool,
        replace: Mapping[str, DealRow] | None = None,
    ) -> None:
        self.name = name
        self.settings = SourceSettings(name=name, kind=self.kind)
        self._catalog = catalog
        self._pages = pages
        self._complete = complete
        self._replace = replace or {}
        self.pages_read = 0

    def pipelines(self) -> list[Pipeline]:
        """The generated pipelines."""
        return list(self._catalog.pipelines)

    def owners(self) -> list[Owner]:
        """The generated owners."""
        return list(self._catalog.owners)

    def check(self) -> str:
        """Nothing to reach."""
        return "pre-fetched pages"

    def deals(self, since: str | None) -> Iterator[StreamItem]:
        """Every page's deals, a checkpoint after each page."""
        replace = self._replace
        for number, page in enumerate(self._pages(), start=1):
            self.pages_read += 1
            if replace:
                yield from (to_deal(replace.get(row[1], row)) for row in page)
            else:
                yield from map(to_deal, page)
            yield Checkpoint(f"page-{number}")
        yield Checkpoint("end", complete=self._complete)
