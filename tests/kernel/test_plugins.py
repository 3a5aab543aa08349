"""The plugin registry: kinds by entry point, and broken or unknown plugins as located config errors."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from sales_velocity.kernel.errors import ConfigError
from sales_velocity.kernel.plugins import PluginRegistry

GROUP = "sales_velocity.test_plugins"


def registry(*points: tuple[str, str]) -> PluginRegistry:
    """A registry over the given (name, target) entry points instead of the installed ones."""
    eps = [EntryPoint(name=name, value=value, group=GROUP) for name, value in points]
    return PluginRegistry(GROUP, "connector", discover=lambda _group: eps)


class TestPluginRegistry:
    def test_a_plugin_that_fails_to_import_is_a_config_error_at_its_key_path(self) -> None:
        """A broken entry point fails its table with the entry point named, not with a traceback."""
        plugins = registry(("broken", "sales_velocity_no_such_module:Connector"))
        with pytest.raises(ConfigError) as info:
            plugins.build({"kind": "broken", "name": "x"}, "sources[2]")
        [problem] = info.value.problems
        assert problem.path == "sources[2].kind"
        assert "sales_velocity_no_such_module:Connector" in problem.message
        assert "failed to import" in problem.message
        assert "ModuleNotFoundError" in problem.message

    def test_an_unknown_kind_lists_the_installed_ones(self) -> None:
        """An unknown kind names every installed kind, sorted."""
        plugins = registry(("b", "x:Y"), ("a", "x:Z"))
        with pytest.raises(ConfigError, match=r"no connector of kind 'c' is installed \(installed: a, b\)"):
            plugins.build({"kind": "c"}, "sources[0]")

    def test_an_entry_point_without_settings_model_is_refused(self) -> None:
        """A target that is not a plugin (no settings_model) is a config error too."""
        plugins = registry(("plain", "pathlib:Path"))
        with pytest.raises(ConfigError, match="has no settings_model"):
            plugins.build({"kind": "plain"}, "notify.channels[0]")
