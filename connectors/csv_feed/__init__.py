"""The CSV feed: any CRM's export, a file on disk.

``connector`` (the ``Connector``: reading, hashing and the cursor, delete
detection), ``settings`` (its ``[[sources]]`` table and the canonical columns)
and ``mapping`` (the cell rules as pure functions, and one row to a ``Deal``).
The file itself plays the client's role; there is no paging.
"""

from sales_velocity.connectors.csv_feed.connector import (
    CsvFeedConnector,
    CsvFeedError,
    MissingColumnsError,
    format_rejects,
)
from sales_velocity.connectors.csv_feed.mapping import parse_amount, parse_money, parse_status
from sales_velocity.connectors.csv_feed.settings import CANONICAL_COLUMNS, CsvFeedSettings, StatusMapping

__all__ = [
    "CANONICAL_COLUMNS",
    "CsvFeedConnector",
    "CsvFeedError",
    "CsvFeedSettings",
    "MissingColumnsError",
    "StatusMapping",
    "format_rejects",
    "parse_amount",
    "parse_money",
    "parse_status",
]
