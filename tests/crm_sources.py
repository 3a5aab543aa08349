"""The config lines of the fake CRMs as sources, shared by the tests that run `velocity` as a process."""

from __future__ import annotations

from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot
from sales_velocity.kernel.testing.fake_pipedrive import FakePipedrive


def hubspot_source(hubspot: FakeHubSpot) -> str:
    """A ``[[sources]]`` block for the fake HubSpot, its rate limits high enough not to bind."""
    return f"""
[[sources]]
name = "hubspot"
kind = "hubspot"
access_token = "{hubspot.token}"
base_url = "{hubspot.url}"
requests_per_10s = 1000
search_requests_per_second = 50
"""


def pipedrive_source(pipedrive: FakePipedrive, url: str) -> str:
    """A ``[[sources]]`` block for the fake Pipedrive served at ``url``."""
    return f"""
[[sources]]
name = "pipedrive"
kind = "pipedrive"
api_token = "{pipedrive.token}"
company_domain = "acme"
base_url = "{url}"
"""
