"""The settings of a ``[[sources]]`` table of kind ``pipedrive``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sales_velocity.connectors.base import HttpSourceSettings
from sales_velocity.connectors.pipedrive.mapping import CANONICAL_FIELDS

__all__ = ["PipedriveSettings"]

_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


class PipedriveSettings(HttpSourceSettings):
    """One ``[[sources]]`` table of kind ``pipedrive``."""

    kind: Literal["pipedrive"] = "pipedrive"
    api_token: SecretStr = Field(description="API token (Settings > Personal preferences > API).")
    company_domain: str = Field(description="The company's subdomain: 'acme' for https://acme.pipedrive.com.")
    base_url: str | None = Field(
        default=None,
        description="Override of https://{company_domain}.pipedrive.com; /api/v1 and /api/v2 are appended.",
    )
    custom_fields: dict[str, str] = Field(
        default_factory=dict,
        description=f"Custom field name -> canonical field, one of {', '.join(CANONICAL_FIELDS)}.",
    )
    overlap_seconds: int = Field(
        default=60, ge=0, le=86_400,
        description="Re-read deals updated this many seconds before the cursor (late writes).",
    )
    requests_per_window: int = Field(
        default=20, ge=1, le=1000,
        description="Client-side burst limit per 2 seconds (20 fits the smallest plan).",
    )
    fetch_activities: bool = Field(
        default=True, description="Look up next/last activity dates of open deals.",
    )
    max_attempts: int = Field(default=6, ge=1, le=20, description="Attempts per request (429, 5xx).")
    timeout_seconds: float = Field(default=60.0, gt=0, le=600, description="Read timeout per request.")

    @field_validator("api_token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("company_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip()
        if not _DOMAIN.match(value):
            raise ValueError("must be the subdomain only, e.g. 'acme' for https://acme.pipedrive.com")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (e.g. https://acme.pipedrive.com)")
        if value.endswith(("/api/v1", "/api/v2")):
            raise ValueError("leave out /api/v1 or /api/v2; they are appended")
        return value

    @field_validator("custom_fields")
    @classmethod
    def _canonical(cls, value: dict[str, str]) -> dict[str, str]:
        problems = [
            f"{name!r} -> {target!r} (allowed: {', '.join(CANONICAL_FIELDS)})"
            for name, target in value.items() if target not in CANONICAL_FIELDS
        ]
        if problems:
            raise ValueError("unknown canonical field: " + "; ".join(problems))
        targets = list(value.values())
        doubled = sorted({t for t in targets if targets.count(t) > 1})
        if doubled:
            raise ValueError(f"several custom fields map to {', '.join(doubled)}")
        if any(not name.strip() for name in value):
            raise ValueError("a custom field name must not be empty")
        return value

    @property
    def root_url(self) -> str:
        """The base URL that ``/api/v1`` and ``/api/v2`` are appended to."""
        return self.base_url or f"https://{self.company_domain}.pipedrive.com"
