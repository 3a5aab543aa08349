"""Settings the ``sync`` package owns: where the store lives."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["DEFAULT_STORE_URL", "StoreSettings", "SyncSettings", "resolve_sqlite_path"]

DEFAULT_STORE_URL = "sqlite:///velocity.db"


def resolve_sqlite_path(url: str, base: Path | None) -> str:
    """Make a relative SQLite file path relative to ``base`` (the config file's folder).

    ``sqlite:///velocity.db`` next to ``/etc/velocity/config.toml`` becomes
    ``sqlite:////etc/velocity/velocity.db``, so cron jobs started from any
    directory use the same file. Other URLs are returned unchanged.
    """
    prefix = "sqlite:///"
    if base is None or not url.startswith(prefix):
        return url
    path = url[len(prefix):]
    if not path or path.startswith("/") or path.startswith(":memory:"):
        return url
    return prefix + str((base / path).resolve())


class StoreSettings(BaseModel):
    """The ``[store]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        default=DEFAULT_STORE_URL,
        validate_default=True,  # the default is relative too: resolve it against the config file
        description="SQLAlchemy URL: sqlite:///file.db (default) or postgresql+psycopg://user@host/db. "
        "Overridden by the VELOCITY_DATABASE_URL environment variable.",
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str, info: ValidationInfo) -> str:
        if not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith("postgres") and importlib.util.find_spec("psycopg") is None:
            raise ValueError("a PostgreSQL store needs the driver, which is not installed: "
                             "pip install 'sales-velocity[postgres]'")
        base = (info.context or {}).get("config_dir")
        return resolve_sqlite_path(value, Path(base) if base else None)


class SyncSettings(BaseModel):
    """The ``[sync]`` table: how the engine writes and how often it refreshes catalogs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=2000, ge=1, le=100_000, description="Deals per write batch.")
    catalog_max_age_minutes: int = Field(
        default=360, ge=0,
        description="Refetch pipelines, stages and owners when older than this (0: every sync). "
        "Deals that refer to unknown ones, and --full, always refetch.",
    )

    daily_wait_seconds: float = Field(
        default=900, ge=0, le=86_400,
        description="How long the daily step waits for sources another run is syncing; after "
        "that it holds the digest and names them.",
    )
    deadline_seconds: float = Field(
        default=1800, gt=0, le=86_400,
        description="A source's sync that runs longer than this stops (what it wrote stays) and fails.",
    )

    @property
    def catalog_max_age(self) -> dt.timedelta | None:
        """The maximum catalog age, ``None`` when every sync refetches."""
        return dt.timedelta(minutes=self.catalog_max_age_minutes) if self.catalog_max_age_minutes else None
