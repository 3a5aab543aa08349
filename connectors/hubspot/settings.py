"""The settings of a ``[[sources]]`` table of kind ``hubspot``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sales_velocity.connectors.base import HttpSourceSettings

__all__ = ["HubSpotSettings"]


class HubSpotSettings(HttpSourceSettings):
    """One ``[[sources]]`` table of kind ``hubspot``."""

    kind: Literal["hubspot"] = "hubspot"
    access_token: SecretStr = Field(description="Private-app access token (use ${HUBSPOT_TOKEN}).")
    base_url: str = Field(
        "https://api.hubapi.com",
        description="API root; tests and proxies point it elsewhere.",
    )
    portal_id: int | None = Field(None, ge=1, description="HubSpot account id, for links to deals.")
    requests_per_10s: int = Field(
        100, ge=1, le=1000,
        description="Client-side limit per 10 s: 100 on Free/Starter, 190 on Pro/Enterprise.",
    )
    search_requests_per_second: int = Field(
        4, ge=1, le=50, description="Client-side limit for the search API (HubSpot allows 4-5/s).",
    )
    lookback_minutes: int = Field(
        5, ge=0, le=1440,
        description="Re-read changes this much older than the cursor (search indexing lags).",
    )
    full_sync_every_days: int | None = Field(
        7, ge=1,
        description="Full reconciliation sweep this often (catches hard deletes and restores); "
        "unset to never sweep after the first sync.",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// or http://")
        return value.rstrip("/")
