"""CRM connectors and their registry.

Connectors are found through the entry-point group ``sales_velocity.connectors``;
the entry point's name is the ``kind`` used in ``[[sources]]`` (see
``sales_velocity.kernel.plugins``). A package outside this repository adds a CRM by
registering a class with a ``settings_model`` there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from sales_velocity.connectors.base import Connector, ConnectorFactory
from sales_velocity.kernel.config import validate_settings, validation_problems
from sales_velocity.kernel.plugins import PluginRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "build_connector",
    "installed_kinds",
    "load_connector_factory",
    "validate_settings",
    "validation_problems",
]

ENTRY_POINT_GROUP = "sales_velocity.connectors"
CONNECTORS = PluginRegistry(ENTRY_POINT_GROUP, "connector")


def installed_kinds() -> list[str]:
    """Return the sorted names of every installed connector kind."""
    return CONNECTORS.installed()


def load_connector_factory(kind: str) -> ConnectorFactory:
    """Load the connector class registered under ``kind``.

    Raises:
        LookupError: no connector of that kind is installed; the message lists
            the installed kinds.
    """
    return cast(ConnectorFactory, CONNECTORS.load(kind))


def build_connector(
    raw: Mapping[str, Any], path: str, context: Mapping[str, Any] | None = None
) -> Connector:
    """Validate one ``[[sources]]`` table and build its connector.

    Args:
        raw: the table as read from TOML, environment variables already expanded.
        path: its key path for error messages, e.g. ``sources[1]``.
        context: validation context (``config_dir``: the config file's folder).

    Raises:
        ConfigError: unknown kind (listing the installed ones) or invalid settings.
    """
    return cast(Connector, CONNECTORS.build(raw, path, context))
