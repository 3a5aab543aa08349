"""Plugins by entry point: find, load and build them from one config table.

Connectors (``sales_velocity.connectors``) and notification channels
(``sales_velocity.channels``) are both plugins of the same shape: a class with a
pydantic ``settings_model`` that is built as ``Class(settings)``. A
``PluginRegistry`` loads them lazily by ``kind`` and caches the class, so an
installed but unused plugin costs nothing and a broken one only fails the
tables that use it. An unknown kind is a config error naming the installed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from connectors.base import ConfigError, ConfigProblem

__all__ = ["PluginRegistry", "validate_settings", "validation_problems"]

M = TypeVar("M", bound=BaseModel)


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


class PluginRegistry:
    """The plugins of one entry-point group, e.g. ``sales_velocity.connectors``."""

    def __init__(self, group: str, noun: str) -> None:
        self.group = group
        self.noun = noun
        self._loaded: dict[str, Any] = {}

    def installed(self) -> list[str]:
        """The sorted kinds installed in this group."""
        return sorted({ep.name for ep in entry_points(group=self.group)})

    def load(self, kind: str) -> Any:
        """The class registered as ``kind`` (loaded once).

        Raises:
            LookupError: nothing of that kind is installed; the message lists what is.
            TypeError: the entry point is not a plugin (it has no ``settings_model``).
        """
        if kind not in self._loaded:
            matches = [ep for ep in entry_points(group=self.group) if ep.name == kind]
            if not matches:
                kinds = ", ".join(self.installed()) or "none"
                raise LookupError(f"no {self.noun} of kind {kind!r} is installed (installed: {kinds})")
            factory = matches[0].load()
            if not hasattr(factory, "settings_model"):
                raise TypeError(f"{self.noun} {kind!r} ({factory!r}) has no settings_model")
            self._loaded[kind] = factory
        return self._loaded[kind]

    def build(self, raw: Mapping[str, Any], path: str,
              context: Mapping[str, Any] | None = None) -> Any:
        """Validate one config table (``path`` locates it) and build its plugin.

        Raises:
            ConfigError: no or unknown ``kind`` (listing the installed ones), or
                invalid settings, every problem with its key path.
        """
        kind = raw.get("kind")
        if not isinstance(kind, str) or not kind:
            kinds = ", ".join(self.installed())
            raise ConfigError.single(f"{path}.kind", f"field required (installed: {kinds})")
        try:
            factory = self.load(kind)
        except (LookupError, TypeError) as exc:
            raise ConfigError.single(f"{path}.kind", str(exc)) from None
        return factory(validate_settings(factory.settings_model, raw, path, context))
