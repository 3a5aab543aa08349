"""HubSpot payloads to records: strict amounts and dates, stage metadata, deal fields."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from sales_velocity.connectors.base import Deal, Rejected, StageVisit
from sales_velocity.connectors.hubspot.mapping import (
    BASE_DEAL_PROPERTIES,
    Catalog,
    DealMapper,
    deal_properties,
    parse_amount,
    parse_datetime,
    parse_owner,
    parse_pipelines,
    to_ms,
)
from sales_velocity.kernel.testing import PAYLOADS

UTC = dt.UTC
HUBSPOT = PAYLOADS / "hubspot"


def _model(data: Any) -> Any:
    """A JSON payload as attribute-access objects, snake_cased like the client's models."""
    if isinstance(data, list):
        return [_model(v) for v in data]
    if isinstance(data, dict):
        snake = {}
        for key, value in data.items():
            name = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
            snake[name] = value if key == "metadata" else _model(value)
        return SimpleNamespace(**snake)
    return data


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """The fixture portal's pipelines."""
    return parse_pipelines(_model(json.loads((HUBSPOT / "pipelines.json").read_text())["results"]))


@pytest.fixture(scope="module")
def page() -> list[dict[str, Any]]:
    """The fixture list page's results."""
    results: list[dict[str, Any]] = json.loads((HUBSPOT / "deals_page.json").read_text())["results"]
    return results


class TestParseAmount:
    """Amounts are strict decimals."""

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("1500.00", Decimal("1500.00")), ("50000.5", Decimal("50000.5")), (" 12 ", Decimal(12)),
         ("", None), ("   ", None), (None, None), ("-3.25", Decimal("-3.25"))],
    )
    def test_reads_decimal_strings(self, raw: str | None, expected: Decimal | None) -> None:
        """Decimal strings parse exactly; empty and null mean no amount."""
        assert parse_amount(raw) == expected

    @pytest.mark.parametrize("raw", ["12abc", "1,500.00", "NaN", "Infinity", "$100"])
    def test_rejects_garbage(self, raw: str) -> None:
        """Anything but a finite decimal number is an error naming the value."""
        with pytest.raises(ValueError, match="number"):
            parse_amount(raw)


class TestParseDatetime:
    """Dates are ISO of varying precision, always returned as aware UTC."""

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("2024-06-30T16:50:06.678Z", dt.datetime(2024, 6, 30, 16, 50, 6, 678000, tzinfo=UTC)),
            ("2024-06-30T16:50:06Z", dt.datetime(2024, 6, 30, 16, 50, 6, tzinfo=UTC)),
            ("2024-06-30T16:50:06.5Z", dt.datetime(2024, 6, 30, 16, 50, 6, 500000, tzinfo=UTC)),
            ("2024-06-30T16:50:06.123456789Z",
             dt.datetime(2024, 6, 30, 16, 50, 6, 123456, tzinfo=UTC)),
            ("2024-06-30T18:50:06+02:00", dt.datetime(2024, 6, 30, 16, 50, 6, tzinfo=UTC)),
            ("2024-06-30T16:50:06", dt.datetime(2024, 6, 30, 16, 50, 6, tzinfo=UTC)),
            ("1719766206678", dt.datetime(2024, 6, 30, 16, 50, 6, 678000, tzinfo=UTC)),
        ],
    )
    def test_reads_datetimes(self, raw: str, expected: dt.datetime) -> None:
        """Every documented form comes out as the same aware UTC instant."""
        value, date_only = parse_datetime(raw)
        assert value == expected
        assert value.utcoffset() == dt.timedelta(0)
        assert not date_only

    def test_date_only_is_midnight_utc(self) -> None:
        """A bare date (HubSpot date properties) is midnight UTC and flagged."""
        assert parse_datetime("2024-06-30") == (dt.datetime(2024, 6, 30, tzinfo=UTC), True)

    @pytest.mark.parametrize("raw", [None, "", "  "])
    def test_empty_is_none(self, raw: str | None) -> None:
        """No value is not an error."""
        assert parse_datetime(raw) == (None, False)

    @pytest.mark.parametrize("raw", ["yesterday", "2024-13-45T00:00:00Z", "20240630",
                                     "30.06.2024", "2024-06-30T25:00:00Z"])
    def test_rejects_garbage(self, raw: str) -> None:
        """Non-ISO text and impossible dates are errors."""
        with pytest.raises(ValueError, match="date"):
            parse_datetime(raw)

    def test_to_ms_is_exact(self) -> None:
        """Epoch milliseconds never lose a millisecond to float rounding."""
        value, _ = parse_datetime("2024-11-26T09:00:06.678Z")
        assert value is not None
        assert to_ms(value) == 1732611606678


class TestCatalog:
    """Pipelines and stages come from the pipelines API, won/lost from stage metadata."""

    def test_orders_pipelines_and_stages(self, catalog: Catalog) -> None:
        """Display order wins over payload order."""
        default = catalog.pipelines[0]
        assert [p.external_id for p in catalog.pipelines] == ["default", "1038553758"]
        assert [s.order for s in default.stages] == list(range(7))
        assert default.stages[3].external_id == "decisionmakerboughtin"

    def test_won_and_lost_from_metadata(self, catalog: Catalog) -> None:
        """Closed with probability 1 is won, closed with 0 is lost, an open 0% stage is open."""
        stages = catalog.stages
        assert (stages["closedwon"].is_won, stages["closedwon"].is_lost) == (True, False)
        assert (stages["closedlost"].is_won, stages["closedlost"].is_lost) == (False, True)
        assert stages["1038553760"].is_won
        assert stages["1038553761"].is_lost
        renewal_due = stages["1038553759"]
        assert (renewal_due.is_won, renewal_due.is_lost) == (False, False)
        assert catalog.closed_stage_ids == {"closedwon", "closedlost", "1038553760", "1038553761"}

    def test_probability_fits_the_store(self, catalog: Catalog) -> None:
        """Long float strings are cut to the store's four decimals."""
        assert catalog.stages["presentationscheduled"].probability == Decimal("0.6000")

    def test_properties_per_stage(self, catalog: Catalog) -> None:
        """The request names the base properties plus one entry date per stage id."""
        props = deal_properties(catalog.stages)
        assert props[: len(BASE_DEAL_PROPERTIES)] == list(BASE_DEAL_PROPERTIES)
        assert "hs_v2_date_entered_1038553760" in props
        assert len(props) == len(BASE_DEAL_PROPERTIES) + 10

    def test_owner_name_and_email(self) -> None:
        """Owners carry their id, full name and e-mail; a queue has no name."""
        owners = [parse_owner(o) for o in
                  _model(json.loads((HUBSPOT / "owners.json").read_text())["results"])]
        assert owners[0].external_id == "6166860"
        assert owners[0].name == "John Smith"
        assert owners[0].email == "jsmith@example.com"
        assert owners[2].name is None


class TestDealMapper:
    """One HubSpot deal to one Deal, or a Rejected naming the deal."""

    def test_open_deal(self, catalog: Catalog, page: list[dict[str, Any]]) -> None:
        """An open deal's closedate is its expected close date; history comes from entry dates."""
        deal = DealMapper("hubspot", catalog, 1234567).map(page[0]["id"], page[0]["properties"])
        assert isinstance(deal, Deal)
        assert deal.status == "open"
        assert deal.amount == Decimal("1500.00")
        assert deal.currency == "USD"
        assert deal.pipeline == "default"
        assert deal.stage == "presentationscheduled"
        assert deal.owner == "193567884"
        assert deal.title == "Custom data integrations"
        assert deal.closed_at is None
        assert deal.expected_close_date == dt.date(2024, 6, 30)
        assert deal.created_at == dt.datetime(2024, 5, 2, 14, 18, 9, 69000, tzinfo=UTC)
        assert deal.updated_at == dt.datetime(2024, 5, 20, 9, 12, 44, 120000, tzinfo=UTC)
        assert deal.stage_entered_at == dt.datetime(2024, 5, 20, 9, 12, 44, 120000, tzinfo=UTC)
        assert deal.stage_history == (
            StageVisit("appointmentscheduled", dt.datetime(2024, 5, 2, 14, 18, 9, 69000, tzinfo=UTC)),
            StageVisit("presentationscheduled",
                       dt.datetime(2024, 5, 20, 9, 12, 44, 120000, tzinfo=UTC)),
        )
        assert deal.next_step == "Send the integration spec"
        assert deal.next_activity_at is None
        assert deal.last_activity_at == dt.datetime(2024, 5, 19, 15, 0, tzinfo=UTC)
        assert deal.link == "https://app.hubspot.com/contacts/1234567/deal/9575524881"
        assert deal.raw == page[0]["properties"]

    def test_won_deal_with_date_only_close(self, catalog: Catalog,
                                           page: list[dict[str, Any]]) -> None:
        """A won deal's closedate is when it closed; a date-only one counts in whole days."""
        deal = DealMapper("hubspot", catalog).map(page[1]["id"], page[1]["properties"])
        assert isinstance(deal, Deal)
        assert deal.status == "won"
        assert deal.closed_at == dt.datetime(2024, 5, 31, tzinfo=UTC)
        assert deal.whole_days
        assert deal.expected_close_date is None
        assert deal.next_step is None
        assert deal.link is None

    def _props(self, **overrides: str | None) -> dict[str, str | None]:
        base: dict[str, str | None] = {
            "dealname": "X", "amount": "10", "dealstage": "qualifiedtobuy", "pipeline": "default",
            "createdate": "2024-01-01T00:00:00Z", "hs_lastmodifieddate": "2024-02-01T00:00:00Z",
        }
        base.update(overrides)
        return base

    @pytest.mark.parametrize(
        ("field", "value", "reason"),
        [("amount", "12abc", "amount '12abc' is not a number"),
         ("closedate", "next week", "closedate 'next week' is not an ISO date"),
         ("createdate", "2024-02-30T00:00:00Z", "createdate"),
         ("hs_v2_date_entered_qualifiedtobuy", "soon", "hs_v2_date_entered_qualifiedtobuy")],
    )
    def test_rejects_unreadable_values(self, catalog: Catalog, field: str, value: str,
                                       reason: str) -> None:
        """A present but unreadable value rejects the deal, naming its id and the property."""
        item = DealMapper("hubspot", catalog).map("42", self._props(**{field: value}))
        assert isinstance(item, Rejected)
        assert item.where == "deal 42"
        assert item.external_id == "42"
        assert reason in item.reason

    def test_deleted_deal_is_never_rejected(self, catalog: Catalog) -> None:
        """An archived deal with a bad amount is still reported deleted, amount left empty."""
        item = DealMapper("hubspot", catalog).map("42", self._props(amount="12abc"), deleted=True)
        assert isinstance(item, Deal)
        assert item.status == "deleted"
        assert item.amount is None

    def test_closed_stage_keeps_close_date(self, catalog: Catalog) -> None:
        """A lost deal's closedate becomes closed_at, not an expected close date."""
        item = DealMapper("hubspot", catalog).map(
            "7", self._props(dealstage="closedlost", closedate="2024-03-01T10:00:00.000Z"))
        assert isinstance(item, Deal)
        assert item.status == "lost"
        assert item.closed_at == dt.datetime(2024, 3, 1, 10, tzinfo=UTC)
        assert item.expected_close_date is None
        assert not item.whole_days

    def test_open_zero_probability_stage_is_open(self, catalog: Catalog) -> None:
        """Probability 0 on an open stage does not make a deal lost."""
        item = DealMapper("hubspot", catalog).map(
            "8", self._props(dealstage="1038553759", pipeline="1038553758", hs_is_closed="false"))
        assert isinstance(item, Deal)
        assert item.status == "open"

    @pytest.mark.parametrize(
        ("won", "closed", "status"),
        [("true", "true", "won"), ("false", "true", "lost"), ("false", "false", "open"),
         (None, None, "open")],
    )
    def test_unknown_stage_falls_back_to_flags(self, catalog: Catalog, won: str | None,
                                               closed: str | None, status: str) -> None:
        """For a stage the pipelines API did not list, the deal's closed flags decide."""
        item = DealMapper("hubspot", catalog).map(
            "9", self._props(dealstage="gone", hs_is_closed_won=won, hs_is_closed=closed))
        assert isinstance(item, Deal)
        assert item.status == status

    def test_empty_strings_are_none(self, catalog: Catalog) -> None:
        """Empty owner, currency and next step come out as None, not as ''."""
        item = DealMapper("hubspot", catalog).map(
            "10", self._props(hubspot_owner_id="", deal_currency_code="", hs_next_step="  ",
                              amount=""))
        assert isinstance(item, Deal)
        assert (item.owner, item.currency, item.next_step, item.amount) == (None, None, None, None)
