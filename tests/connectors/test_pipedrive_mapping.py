"""Pipedrive settings, the pure paging/cursor rules and payload mapping (no HTTP)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from sales_velocity.connectors import build_connector
from sales_velocity.connectors.base import Deal, Rejected
from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sales_velocity.connectors.pipedrive.mapping import (
    CustomField,
    activity_time,
    map_deal,
    map_owner,
    map_pipelines,
    parse_time,
    resolve_custom_fields,
)
from sales_velocity.connectors.pipedrive.paging import CursorPaginator, Watermark, format_time, parse_cursor
from sales_velocity.kernel.config import validate_settings
from sales_velocity.kernel.errors import ConfigError, FatalAPIError
from sales_velocity.kernel.testing.fake_pipedrive import NEXT_STEP_KEY, fixture

UTC = dt.UTC
TOKEN = "pd-secret-token-9f8e7d"


def at(text: str) -> dt.datetime:
    """An aware UTC datetime from ISO text."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def raw_settings(**overrides: Any) -> dict[str, Any]:
    """A valid ``[[sources]]`` table of kind pipedrive."""
    raw: dict[str, Any] = {"name": "pipedrive", "kind": "pipedrive", "api_token": TOKEN,
                           "company_domain": "acme"}
    raw.update(overrides)
    return raw


def deal_fixture(name: str, index: int) -> dict[str, Any]:
    """One deal from a fixture page."""
    return dict(fixture(name)["data"][index])


def custom_fields() -> tuple[CustomField, ...]:
    """The fixture's 'Next step', 'Priority' and 'ACV' fields, resolved."""
    return resolve_custom_fields({"Next step": "next_step"}, fixture("deal_fields.json")["data"])


class TestSettings:
    def test_minimal_table_is_valid_with_defaults(self):
        """Only name, kind, token and domain are needed; the base URL follows the domain."""
        settings = validate_settings(PipedriveSettings, raw_settings(), "sources[0]")
        assert settings.root_url == "https://acme.pipedrive.com"
        assert settings.overlap_seconds == 60
        assert settings.custom_fields == {}

    def test_base_url_override_loses_its_trailing_slash(self):
        """``base_url`` replaces the company URL; /api/vN is appended later."""
        settings = validate_settings(PipedriveSettings, raw_settings(base_url="http://127.0.0.1:9/"), "s")
        assert settings.root_url == "http://127.0.0.1:9"

    def test_every_problem_is_reported_with_its_key_path(self):
        """Missing token, a URL as domain and an unknown canonical field are all reported at once."""
        raw = raw_settings(company_domain="https://acme.pipedrive.com",
                           custom_fields={"Next step": "next_stp"})
        del raw["api_token"]
        with pytest.raises(ConfigError) as caught:
            validate_settings(PipedriveSettings, raw, "sources[1]")
        paths = {p.path for p in caught.value.problems}
        assert paths == {"sources[1].api_token", "sources[1].company_domain", "sources[1].custom_fields"}
        assert "next_step" in str(caught.value)  # the allowed names are listed

    @pytest.mark.parametrize(("raw", "message"), [
        ({"custom_fields": {"A": "next_step", "B": "next_step"}}, "several custom fields"),
        ({"base_url": "https://acme.pipedrive.com/api/v2"}, "leave out /api/v1"),
        ({"base_url": "acme.pipedrive.com"}, "must start with https://"),
        ({"api_token": "  "}, "must not be empty"),
    ])
    def test_bad_values_are_explained(self, raw, message):
        """Each wrong value gets a message that says what to change."""
        with pytest.raises(ConfigError, match=message):
            validate_settings(PipedriveSettings, raw_settings(**raw), "sources[0]")

    def test_the_token_never_shows_in_reprs_or_config_errors(self):
        """Settings repr, connector repr and config errors keep the token out."""
        settings = validate_settings(PipedriveSettings, raw_settings(), "s")
        connector = PipedriveConnector(settings)
        assert TOKEN not in repr(settings)
        assert TOKEN not in repr(connector)
        with pytest.raises(ConfigError) as caught:
            validate_settings(PipedriveSettings, raw_settings(overlap_seconds=-1), "s")
        assert TOKEN not in str(caught.value)

    def test_the_registry_builds_it_from_its_kind(self):
        """``kind = "pipedrive"`` finds this connector through the entry point."""
        connector = build_connector(raw_settings(), "sources[0]")
        assert isinstance(connector, PipedriveConnector)
        assert connector.name == "pipedrive"


class TestCursorPaginator:
    def test_it_follows_next_cursor_until_null(self):
        """The cursor of each page is sent for the next; ``null`` ends the list."""
        pager = CursorPaginator("GET /deals")
        pager.advance(fixture("deals_page1.json"))
        assert pager.cursor == fixture("deals_page1.json")["additional_data"]["next_cursor"]
        assert not pager.finished
        pager.advance(fixture("deals_page2.json"))
        assert (pager.finished, pager.cursor, pager.pages) == (True, None, 2)

    def test_a_repeated_cursor_stops_instead_of_looping(self):
        """An API that hands out the same cursor twice raises a fatal error."""
        pager = CursorPaginator("GET /deals")
        pager.advance({"additional_data": {"next_cursor": "abc"}})
        with pytest.raises(FatalAPIError, match="repeated a page cursor"):
            pager.advance({"additional_data": {"next_cursor": "abc"}})

    def test_a_body_without_additional_data_is_the_last_page(self):
        """v1-style or empty bodies end pagination."""
        pager = CursorPaginator("GET /x")
        pager.advance({"data": []})
        assert pager.finished


class TestWatermark:
    CAP = at("2025-06-10T00:00:00")

    def test_a_full_pull_has_no_lower_bound(self):
        """Without a cursor nothing is filtered and the cursor is the highest time seen."""
        mark = Watermark(None, self.CAP)
        assert mark.updated_since(dt.timedelta(seconds=60)) is None
        assert mark.cursor() is None
        mark.observe(at("2025-06-03T10:22:05"))
        mark.observe(at("2025-06-04T07:45:12"))
        assert mark.cursor() == "2025-06-04T07:45:12Z"

    def test_resuming_asks_for_the_cursor_minus_the_overlap(self):
        """``updated_since`` is the cursor minus the overlap, in RFC 3339."""
        mark = Watermark(parse_cursor("2025-06-04T07:45:12Z"), self.CAP)
        assert mark.updated_since(dt.timedelta(seconds=60)) == "2025-06-04T07:44:12Z"

    def test_the_cursor_never_moves_backwards(self):
        """Re-read deals from the overlap window cannot lower the cursor."""
        mark = Watermark(at("2025-06-04T07:45:12"), self.CAP)
        mark.observe(at("2025-06-04T07:44:30"))
        assert mark.cursor() == "2025-06-04T07:45:12Z"

    def test_the_cursor_is_capped_at_the_sync_start(self):
        """A deal stamped after the sync began is read again next time."""
        mark = Watermark(None, self.CAP)
        mark.observe(at("2025-06-11T00:00:00"))
        assert mark.cursor() == format_time(self.CAP)

    def test_out_of_order_pages_freeze_intermediate_cursors(self):
        """After a step backwards only the final cursor moves."""
        mark = Watermark(at("2025-06-01T00:00:00"), self.CAP)
        mark.observe(at("2025-06-03T00:00:00"))
        mark.observe(at("2025-06-02T00:00:00"))
        assert not mark.in_order
        assert mark.cursor() == "2025-06-01T00:00:00Z"
        assert mark.cursor(final=True) == "2025-06-03T00:00:00Z"

    def test_unsorted_lists_only_count_at_the_end(self):
        """Archived deals (read unsorted, first) never move an intermediate cursor."""
        mark = Watermark(None, self.CAP)
        mark.observe(at("2025-06-09T00:00:00"), ordered=False)
        mark.observe(at("2025-06-02T00:00:00"))
        assert mark.cursor() == "2025-06-02T00:00:00Z"
        assert mark.cursor(final=True) == "2025-06-09T00:00:00Z"

    def test_a_foreign_cursor_is_rejected(self):
        """A cursor without a time zone is not one this connector wrote."""
        with pytest.raises(ValueError, match="time zone"):
            parse_cursor("2025-06-01 00:00:00")


class TestDealMapping:
    def test_an_open_deal_maps_every_field(self):
        """Value, dates, ids, owner, link, activity dates and the next-step field all arrive."""
        activities = {a["id"]: activity_time(a) for a in fixture("activities.json")["data"]}
        deal = map_deal(deal_fixture("deals_page1.json", 0), source="pd", company_domain="acme",
                        custom_fields=custom_fields(), activities=activities)
        assert isinstance(deal, Deal)
        assert deal.external_id == "1042"
        assert deal.title == "Acme Oy annual licence"
        assert deal.amount == Decimal("12000")
        assert deal.currency == "EUR"
        assert (deal.pipeline, deal.stage, deal.owner) == ("1", "3", "11")
        assert deal.status == "open"
        assert not deal.archived
        assert deal.closed_at is None
        assert deal.created_at == at("2025-05-02T08:14:11")
        assert deal.stage_entered_at == at("2025-05-20T13:01:44")
        assert deal.updated_at == at("2025-06-03T10:22:05")
        assert deal.expected_close_date == dt.date(2025, 7, 31)
        assert deal.next_activity_at == at("2025-06-10T15:00:00")
        assert deal.last_activity_at == at("2025-05-20T00:00:00")
        assert deal.next_step == "Send the revised proposal"
        assert deal.link == "https://acme.pipedrive.com/deal/1042"
        assert deal.raw is not None
        assert deal.raw["id"] == 1042

    def test_a_won_deal_closes_at_its_won_time(self):
        """``won_time`` (with milliseconds) becomes ``closed_at``; decimals stay exact."""
        deal = map_deal(deal_fixture("deals_page1.json", 1), source="pd", company_domain="acme")
        assert isinstance(deal, Deal)
        assert deal.status == "won"
        assert deal.closed_at == at("2025-06-04T07:45:12")
        assert deal.amount == Decimal("48000.5")
        assert deal.currency == "NOK"

    def test_a_deal_that_never_moved_entered_its_stage_when_created(self):
        """A null ``stage_change_time`` falls back to ``add_time``; lost deals close at ``lost_time``."""
        deal = map_deal(deal_fixture("deals_page2.json", 0), source="pd", company_domain="acme")
        assert isinstance(deal, Deal)
        assert deal.status == "lost"
        assert deal.stage_entered_at == deal.created_at == at("2025-04-01T12:00:00")
        assert deal.closed_at == at("2025-06-05T16:20:00")

    def test_deleted_and_archived_deals_are_flagged(self):
        """``status=deleted`` becomes deleted; the archived list sets ``archived``."""
        deleted = map_deal(deal_fixture("deals_page2.json", 1), source="pd", company_domain="acme")
        archived = map_deal(deal_fixture("deals_archived.json", 0), source="pd", company_domain="acme",
                            archived=True)
        assert isinstance(deleted, Deal)
        assert deleted.status == "deleted"
        assert deleted.amount is None
        assert isinstance(archived, Deal)
        assert archived.archived
        assert archived.status == "won"

    def test_is_deleted_wins_over_the_status(self):
        """A deal flagged ``is_deleted`` is deleted whatever its status says."""
        raw = deal_fixture("deals_page1.json", 0) | {"is_deleted": True}
        deal = map_deal(raw, source="pd", company_domain="acme")
        assert isinstance(deal, Deal)
        assert deal.status == "deleted"

    @pytest.mark.parametrize(("change", "reason"), [
        ({"value": "12k"}, "value: '12k' is not a number"),
        ({"add_time": "yesterday"}, "dates:"),
        ({"status": "frozen"}, "status: unknown status 'frozen'"),
        ({"currency": "EURO"}, "currency: 'EURO' is not a 3-letter currency code"),
        ({"value": float("inf")}, "not a storable amount"),
    ])
    def test_a_bad_deal_is_rejected_with_its_id_and_reason(self, change, reason):
        """An unreadable deal becomes a Rejected naming the deal and what is wrong."""
        raw = deal_fixture("deals_page1.json", 0) | change
        rejected = map_deal(raw, source="pd", company_domain="acme")
        assert isinstance(rejected, Rejected)
        assert rejected.where == "deal 1042"
        assert rejected.external_id == "1042"
        assert reason in rejected.reason

    def test_a_deal_without_id_is_rejected(self):
        """No id, nothing to upsert: rejected."""
        rejected = map_deal({"title": "x"}, source="pd", company_domain="acme")
        assert isinstance(rejected, Rejected)
        assert rejected.external_id is None


class TestCustomFields:
    FIELDS = fixture("deal_fields.json")["data"]

    def test_fields_are_found_by_name_not_hash(self):
        """The configured name resolves to the field's 40-character key."""
        (found,) = resolve_custom_fields({"next STEP": "next_step"}, self.FIELDS)
        assert found.key == NEXT_STEP_KEY
        assert found.name == "next STEP"

    def test_an_unknown_name_lists_the_custom_fields(self):
        """A typo names the fields that do exist (custom ones only)."""
        with pytest.raises(LookupError, match="no custom deal field is named 'Nxt step'") as caught:
            resolve_custom_fields({"Nxt step": "next_step"}, self.FIELDS)
        assert "'ACV'" in str(caught.value)
        assert "'Title'" not in str(caught.value)

    def test_enum_options_become_labels(self):
        """An enum custom field reads as its option label."""
        (priority,) = resolve_custom_fields({"Priority": "next_step"}, self.FIELDS)
        deal = map_deal(deal_fixture("deals_page1.json", 0), source="pd", company_domain="acme",
                        custom_fields=[priority])
        assert isinstance(deal, Deal)
        assert deal.next_step == "High"

    def test_a_monetary_field_can_carry_the_amount(self):
        """A monetary custom field mapped to ``amount`` replaces value and currency."""
        (acv,) = resolve_custom_fields({"ACV": "amount"}, self.FIELDS)
        deal = map_deal(deal_fixture("deals_page1.json", 0), source="pd", company_domain="acme",
                        custom_fields=[acv])
        assert isinstance(deal, Deal)
        assert (deal.amount, deal.currency) == (Decimal("2300"), "EUR")

    def test_a_date_field_that_is_not_a_date_rejects_the_deal(self):
        """A custom field that cannot be read names itself in the reason."""
        (field,) = resolve_custom_fields({"Next step": "expected_close_date"}, self.FIELDS)
        rejected = map_deal(deal_fixture("deals_page1.json", 0), source="pd", company_domain="acme",
                            custom_fields=[field])
        assert isinstance(rejected, Rejected)
        assert rejected.reason.startswith("custom field 'Next step'")


class TestCatalog:
    def test_stages_carry_probability_and_rotting(self):
        """Rotting days only where rotting is on; probability as a fraction; never won/lost."""
        pipelines = map_pipelines(fixture("pipelines.json")["data"], fixture("stages.json")["data"])
        assert [p.name for p in pipelines] == ["New business", "Renewals"]
        stages = {s.external_id: s for p in pipelines for s in p.stages}
        assert "6" not in stages  # deleted stage
        assert stages["3"].rotting_days == 14
        assert stages["5"].rotting_days == 7
        assert stages["4"].rotting_days is None  # days set, rotting off
        assert stages["3"].probability == Decimal("0.6")
        assert not any(s.is_won or s.is_lost for s in stages.values())
        assert [s.external_id for s in pipelines[0].stages] == ["1", "2", "3", "4"]

    def test_users_become_owners_with_email(self):
        """Every user (deactivated ones too) is an owner with an e-mail."""
        owners = [map_owner(u) for u in fixture("users.json")["data"]]
        assert [(o.external_id, o.email) for o in owners] == [("11", "kari@example.com"),
                                                              ("12", "ola@example.com")]

    def test_times_in_both_api_formats_parse_to_utc(self):
        """v2 RFC 3339 and v1 'YYYY-MM-DD HH:MM:SS' are both aware UTC."""
        assert parse_time("2025-06-04T07:45:12.000Z") == at("2025-06-04T07:45:12")
        assert parse_time("2025-06-04 07:45:12") == at("2025-06-04T07:45:12")
        assert parse_time("2025-06-04T09:45:12+02:00") == at("2025-06-04T07:45:12")
        assert parse_time(None) is None
