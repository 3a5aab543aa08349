"""Finding and reading the config file, and choosing the store URL, with reasons people can read.

* ``find_config``: ``--config``, else ``$VELOCITY_CONFIG``, else ``./velocity.toml``;
  none of them is a usage error naming the three places looked (a cron job started
  in ``$HOME`` must not run green on empty defaults).
* ``read_toml``: a directory, an unreadable file or bad TOML is one clear problem.
* ``choose_store_url``: the operator's ``VELOCITY_DATABASE_URL`` wins; else the
  config's ``[store] url``; else the image's ``VELOCITY_DEFAULT_DATABASE_URL``;
  else the built-in default. The reason is returned so the job can log it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sales_velocity.kernel.errors import ConfigError, UsageError

__all__ = ["ENV_CONFIG", "ENV_DATABASE_URL", "ENV_DEFAULT_DATABASE_URL", "StoreChoice",
           "choose_store_url", "find_config", "read_toml"]

ENV_CONFIG = "VELOCITY_CONFIG"
ENV_DATABASE_URL = "VELOCITY_DATABASE_URL"
ENV_DEFAULT_DATABASE_URL = "VELOCITY_DEFAULT_DATABASE_URL"
DEFAULT_NAME = "velocity.toml"


def find_config(arg: Path | None, env: Mapping[str, str], cwd: Path | None = None) -> Path:
    """The config file to read: ``--config``, else ``$VELOCITY_CONFIG``, else ``./velocity.toml``.

    Raises:
        UsageError: none of the three is given or exists; the message names all three.
    """
    if arg is not None:
        return arg
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    default = (cwd or Path.cwd()) / DEFAULT_NAME
    if default.is_file():
        return Path(DEFAULT_NAME) if cwd is None else default
    raise UsageError(
        f"no config file found: looked at --config (not given), ${ENV_CONFIG} (not set) and "
        f"{default} (does not exist); copy config.example.toml to start"
    )


def read_toml(path: Path) -> dict[str, Any]:
    """Read one TOML file.

    Raises:
        ConfigError: the file is missing, a directory, unreadable or not valid TOML (one problem).
    """
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError.single("", f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError.single("", f"config file {path} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError.single("", f"config file {path} cannot be read: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError.single("", f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single("", f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError.single("", f"config file {path} cannot be read: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class StoreChoice:
    """The store URL to validate (``None``: the settings model's default) and why it was chosen."""

    url: str | None
    reason: str


def choose_store_url(store_table: Any, env: Mapping[str, str], config_path: Path | None) -> StoreChoice:
    """Which store URL wins, and why.

    The image sets ``VELOCITY_DEFAULT_DATABASE_URL`` (a writable data folder), which
    only fills in for a config without ``[store] url``; ``VELOCITY_DATABASE_URL`` is
    the operator's and beats the config.
    """
    if env.get(ENV_DATABASE_URL):
        return StoreChoice(env[ENV_DATABASE_URL], f"${ENV_DATABASE_URL} is set (it overrides [store] url)")
    configured = store_table.get("url") if isinstance(store_table, Mapping) else None
    if configured is not None:
        return StoreChoice(None, f"[store] url in {config_path}")
    if env.get(ENV_DEFAULT_DATABASE_URL):
        return StoreChoice(env[ENV_DEFAULT_DATABASE_URL],
                           f"${ENV_DEFAULT_DATABASE_URL} (the config has no [store] url)")
    return StoreChoice(None, "the default (no [store] url in the config, no $VELOCITY_DATABASE_URL)")
