"""HubSpot: deals through the official ``hubspot-api-client``.

``connector`` (the ``Connector``), ``settings`` (its ``[[sources]]`` table),
``client`` (HubSpot's errors and response shapes, paging tokens), ``cursor``
(the sync cursor and the search walk, pure) and ``mapping`` (HubSpot's
properties to ``Deal``/``Pipeline``/``Owner`` records, pure).
"""

from sales_velocity.connectors.hubspot.connector import HubSpotConnector
from sales_velocity.connectors.hubspot.settings import HubSpotSettings

__all__ = ["HubSpotConnector", "HubSpotSettings"]
