"""CRM connectors and their registry.

Connectors are found through the entry-point group ``sales_velocity.connectors``;
the entry point's name is the ``kind`` used in ``[[sources]]``. Loading is lazy
and cached, so an installed but unused connector costs nothing, and a broken one
only fails the sources that use it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from connectors.base import ConfigError, ConfigProblem, Connector, ConnectorFactory

__all__ = [
    "ENTRY_POINT_GROUP",
    "build_connector",
    "installed_kinds",
    "load_connector_factory",
    "validate_settings",
    "validation_problems",
]

ENTRY_POINT_GROUP = "sales_velocity.connectors"
M = TypeVar("M", bound=BaseModel)


def installed_kinds() -> list[str]:
    """Return the sorted names of every installed connector kind."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


@functools.cache
def load_connector_factory(kind: str) -> ConnectorFactory:
    """Load the connector class registered under ``kind``.

    Raises:
        LookupError: no connector of that kind is installed; the message lists
            the installed kinds.
    """
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    if not matches:
        kinds = ", ".join(installed_kinds()) or "none"
        raise LookupError(f"no connector of kind {kind!r} is installed (installed: {kinds})")
    factory = matches[0].load()
    if not hasattr(factory, "settings_model"):
        raise TypeError(f"connector {kind!r} ({factory!r}) has no settings_model")
    return cast(ConnectorFactory, factory)


def validation_problems(error: ValidationError, prefix: str = "") -> list[ConfigProblem]:
    """Turn a pydantic ``ValidationError`` into problems with dotted key paths.

    Secret values never appear: only the key path and pydantic's message are kept.
    """
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        parts = [prefix] if prefix else []
        for loc in item["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1]}[{loc}]"] if parts else [f"[{loc}]"]
            else:
                parts.append(str(loc))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(ConfigProblem(".".join(parts), message))
    return problems


def validate_settings(
    model: type[M],
    raw: Mapping[str, Any],
    path: str,
    context: Mapping[str, Any] | None = None,
) -> M:
    """Validate ``raw`` against ``model``, raising one ``ConfigError`` with every problem.

    ``context`` reaches validators as ``info.context`` (e.g. ``config_dir``, to
    resolve relative paths against the config file's folder).
    """
    try:
        return model.model_validate(dict(raw), context=dict(context or {}))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, path)) from None


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
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        kinds = ", ".join(installed_kinds())
        raise ConfigError.single(f"{path}.kind", f"field required (installed: {kinds})")
    try:
        factory = load_connector_factory(kind)
    except LookupError as exc:
        raise ConfigError.single(f"{path}.kind", str(exc)) from None
    settings = validate_settings(factory.settings_model, raw, path, context)
    return factory(settings)
