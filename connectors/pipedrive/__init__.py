"""Pipedrive: deals through API v2 with ``requests``.

``connector`` (the ``Connector``: requests, pacing by Pipedrive's rate-limit
headers, the daily token budget), ``settings`` (its ``[[sources]]`` table),
``paging`` (cursor pagination and the ``update_time`` watermark, pure) and
``mapping`` (Pipedrive's payloads to records, custom fields, pure).
"""

from sales_velocity.connectors.pipedrive.connector import PipedriveConnector
from sales_velocity.connectors.pipedrive.settings import PipedriveSettings

__all__ = ["PipedriveConnector", "PipedriveSettings"]
