"""Plugins by entry point: find, load and build them from one config table.

Connectors (``sales_velocity.connectors``) and notification channels
(``sales_velocity.channels``) are both plugins of the same shape: a class with a
pydantic ``settings_model`` that is built as ``Class(settings)``. A
``PluginRegistry`` loads them lazily by ``kind`` and caches the class, so an
installed but unused plugin costs nothing and a broken one only fails the
tables that use it. An unknown kind is a config error naming the installed ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.errors import ConfigError

__all__ = ["PluginRegistry"]


class PluginRegistry:
    """The plugins of one entry-point group, e.g. ``sales_velocity.connectors``."""

    def __init__(self, group: str, noun: str, *,
                 discover: Callable[[str], Iterable[EntryPoint]] | None = None) -> None:
        self.group = group
        self.noun = noun
        self._discover = discover or (lambda name: entry_points(group=name))
        self._loaded: dict[str, Any] = {}

    def installed(self) -> list[str]:
        """The sorted kinds installed in this group."""
        return sorted({ep.name for ep in self._discover(self.group)})

    def load(self, kind: str) -> Any:
        """The class registered as ``kind`` (loaded once).

        Raises:
            LookupError: nothing of that kind is installed; the message lists what is.
            ImportError: the entry point is installed but fails to import (named in the message).
            TypeError: the entry point is not a plugin (it has no ``settings_model``).
        """
        if kind not in self._loaded:
            matches = [ep for ep in self._discover(self.group) if ep.name == kind]
            if not matches:
                kinds = ", ".join(self.installed()) or "none"
                raise LookupError(f"no {self.noun} of kind {kind!r} is installed (installed: {kinds})")
            try:
                factory = matches[0].load()
            except Exception as exc:  # a broken plugin fails the tables that use it, not the run
                raise ImportError(f"{self.noun} {kind!r} (entry point {matches[0].value!r} in "
                                  f"{self.group}) failed to import: {type(exc).__name__}: {exc}"
                                  ) from None
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
        except (LookupError, ImportError, TypeError) as exc:
            raise ConfigError.single(f"{path}.kind", str(exc)) from None
        return factory(validate_settings(factory.settings_model, raw, path, context))
