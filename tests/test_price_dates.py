"""Prices have a date (issue 22, item 3): every snapshot row says its source and date (the catalog
file's last commit, stated as such, where the table has no date of its own), a plan chosen from a
snapshot older than STALE_PRICE_DAYS warns, and the AWS Pricing API path is exercised against the
real response shape (the real boto3 client, its answers checked by botocore's Stubber against the
service model) instead of a bare `except` hiding every failure."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

import skyward_ray as sky
from catalog import prices
from node_providers.aws.offers import on_demand_prices, pricing_api_price
from skyward_ray.errors import StalePricesWarning
from skyward_ray.planning.offer_table import price_age, render_plan
from skyward_ray.planning.plan import STALE_PRICE_DAYS, stale_price_note

# One entry of `get_products`' PriceList as the Pricing API returns it (a JSON document per product;
# trimmed of attributes the parser does not read, every level of nesting kept).
P5_PRODUCT = {
    "product": {"productFamily": "Compute Instance", "sku": "8EUXRZQ4R5JWFX8W",
                "attributes": {"instanceType": "p5.48xlarge", "regionCode": "us-east-1", "operatingSystem": "Linux",
                               "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}},
    "serviceCode": "AmazonEC2",
    "terms": {
        "OnDemand": {"8EUXRZQ4R5JWFX8W.JRTCKXETXF": {
            "priceDimensions": {"8EUXRZQ4R5JWFX8W.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                "description": "$55.04 per On Demand Linux p5.48xlarge Instance Hour",
                "rateCode": "8EUXRZQ4R5JWFX8W.JRTCKXETXF.6YS6EN2CT7", "pricePerUnit": {"USD": "55.0400000000"}}},
            "sku": "8EUXRZQ4R5JWFX8W", "effectiveDate": "2025-06-01T00:00:00Z", "offerTermCode": "JRTCKXETXF",
            "termAttributes": {}}},
        "Reserved": {"8EUXRZQ4R5JWFX8W.4NA7Y494T4": {
            "priceDimensions": {"8EUXRZQ4R5JWFX8W.4NA7Y494T4.2TG2D8R56U": {
                "unit": "Quantity", "description": "Upfront Fee", "pricePerUnit": {"USD": "250000"}}},
            "sku": "8EUXRZQ4R5JWFX8W", "effectiveDate": "2025-06-01T00:00:00Z", "offerTermCode": "4NA7Y494T4",
            "termAttributes": {"LeaseContractLength": "3yr", "PurchaseOption": "All Upfront"}}},
    },
    "version": "20250601000000",
    "publicationDate": "2025-06-01T00:00:00Z",
}
FIXTURE_CATALOG = Path(__file__).parent / "fixtures" / "catalog"
FILTERS = {"instanceType": "p5.48xlarge", "regionCode": "us-east-1", "operatingSystem": "Linux", "tenancy": "Shared",
           "preInstalledSw": "NA", "capacitystatus": "Used"}


class StubSession:
    """A boto3 session stand-in that hands out one real, stubbed Pricing client."""

    def __init__(self, client) -> None:
        self._client = client

    def client(self, service: str, **_: object):
        assert service == "pricing"
        return self._client


@pytest.fixture
def pricing(monkeypatch):
    monkeypatch.delenv(prices.CATALOG_DIR_ENV, raising=False)
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="secret")
    with Stubber(client) as stubber:
        yield client, stubber


def expect_products(stubber, product_list) -> None:
    stubber.add_response("get_products", {"PriceList": product_list, "FormatVersion": "aws_v1"}, {
        "ServiceCode": "AmazonEC2", "MaxResults": 10,
        "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in FILTERS.items()]})


def test_the_pricing_api_answer_is_parsed_from_its_real_shape(pricing):
    client, stubber = pricing
    expect_products(stubber, [json.dumps(P5_PRODUCT)])
    assert pricing_api_price(client, "us-east-1", "p5.48xlarge") == pytest.approx(55.04)
    expect_products(stubber, [])
    assert pricing_api_price(client, "us-east-1", "p5.48xlarge") is None
    stubber.assert_no_pending_responses()


def test_live_on_demand_prices_are_labelled_live(pricing):
    client, stubber = pricing
    expect_products(stubber, [json.dumps(P5_PRODUCT)])
    price, where = on_demand_prices(StubSession(client), "us-east-1", ["p5.48xlarge"])["p5.48xlarge"]
    assert price == pytest.approx(55.04) and where["price_source"] == "live:aws"


def test_a_pricing_api_failure_is_said_and_the_dated_snapshot_stands_in(pricing, caplog):
    client, stubber = pricing
    stubber.add_client_error("get_products", service_error_code="404", service_message="Not yet implemented",
                             http_status_code=404)
    with caplog.at_level(logging.WARNING):
        price, where = on_demand_prices(StubSession(client), "us-east-1", ["p5.48xlarge"])["p5.48xlarge"]
    assert any("Pricing API" in r.getMessage() and "404" in r.getMessage() for r in caplog.records)
    assert where["price_source"] == "snapshot:aws" and price == pytest.approx(98.32)
    assert where["price_as_of"] is not None and where["price_dated_by"] == prices.DATED_BY_COMMIT
    assert where["price_reference"].startswith("SkyPilot catalog catalogs/v7/aws/vms.csv @ ")


@pytest.mark.parametrize("provider", ["aws", "runpod", "vastai"])
def test_every_snapshot_offer_says_its_source_and_date(monkeypatch, provider):
    monkeypatch.delenv(prices.CATALOG_DIR_ENV, raising=False)
    offers = sky.plan(provider=provider, accelerator="H100:1+", allocation="cheapest").offers
    assert offers
    for offer in offers:
        assert offer.price_reference and offer.price_reference.startswith("SkyPilot catalog ")
        assert offer.price_as_of is not None and offer.price_dated_by == prices.DATED_BY_COMMIT
        assert price_age(offer).startswith("snapshot 20") and "catalog commit" in price_age(offer)


def test_the_table_names_each_price_list_and_its_date(monkeypatch):
    monkeypatch.delenv(prices.CATALOG_DIR_ENV, raising=False)
    text = render_plan(sky.plan(provider="runpod", accelerator="H100:1"), width=220)
    assert "prices snapshot:runpod: SkyPilot catalog catalogs/v7/runpod/vms.csv @ " in text
    assert "dated by the catalog commit 20" in text


def test_an_old_snapshot_warns_and_a_fresh_one_does_not():
    offer = sky.plan(provider="runpod", accelerator="H100:1").chosen
    assert offer.price_as_of is not None
    fresh = offer.price_as_of + timedelta(days=STALE_PRICE_DAYS - 1)
    stale = offer.price_as_of + timedelta(days=STALE_PRICE_DAYS + 5)
    assert stale_price_note(offer, now=fresh) is None
    note = stale_price_note(offer, now=stale)
    assert note and f"{STALE_PRICE_DAYS + 5} days old" in note and f"older than {STALE_PRICE_DAYS} days" in note
    undated = offer.model_copy(update={"price_as_of": None, "price_dated_by": prices.UNDATED})
    assert "undated" in stale_price_note(undated) and price_age(undated) == "snapshot (undated)"
    live = offer.model_copy(update={"price_source": "live:runpod", "price_as_of": datetime.now(timezone.utc)})
    assert stale_price_note(live, now=stale) is None


def test_a_plan_from_an_old_snapshot_warns(monkeypatch):
    monkeypatch.setenv(prices.CATALOG_DIR_ENV, str(FIXTURE_CATALOG))  # rows published 2026-11-01
    with pytest.warns(StalePricesWarning, match="older than"):
        result = sky.plan(provider="aws", accelerator="H100:8")
    assert any("older than" in note for note in result.notes)


def test_a_table_without_git_history_is_undated(tmp_path, monkeypatch):
    table = tmp_path / "aws_prices.csv"
    table.write_text("region,zone,instance_type,market,price,source,as_of\n"
                     "us-east-1,,p5.48xlarge,on-demand,55.04,somewhere,\n"
                     "us-east-1,,p4d.24xlarge,on-demand,21.96,somewhere,2025-06-01\n")
    monkeypatch.setenv(prices.CATALOG_DIR_ENV, str(tmp_path))
    undated, published = prices.rows("aws_prices")
    assert undated["as_of"] == "" and undated["dated_by"] == prices.UNDATED
    assert published["dated_by"] == prices.DATED_BY_SOURCE
    assert prices.dating(published)["price_as_of"] == datetime(2025, 6, 1, tzinfo=timezone.utc)
