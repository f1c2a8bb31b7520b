"""`skyward-ray offers` / `skyward-ray plan` as a user runs them (typer's CliRunner, real snapshots)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from skyward_ray.cli import app

runner = CliRunner()
FIXTURE_CATALOG = Path(__file__).resolve().parent / "fixtures" / "catalog"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_offers_json_is_ranked_and_filtered():
    result = invoke("offers", "--accelerator", "H100:8", "--provider", "aws,runpod", "--allocation", "spot",
                    "--max-price", "30", "--json", "--limit", "0")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    offers = data["offers"]
    assert offers and data["total"] == len(offers)
    assert {o["provider"] for o in offers} == {"aws", "runpod"}
    assert all(o["market"] == "spot" and o["price"] <= 30 and o["count"] >= 8 for o in offers)
    assert [o["price"] for o in offers] == sorted(o["price"] for o in offers)
    assert all(o["accelerator"] == "H100" and o["price_source"].startswith("snapshot:") for o in offers)
    # the age is shown exactly when the snapshot row is dated; an undated row claims no age
    assert all(o["price_age"] == "snapshot" if o["price_as_of"] is None else o["price_age"].startswith("snapshot ")
               for o in offers)
    assert offers[0]["price_per_accelerator"] == offers[0]["price"] / offers[0]["count"]


def test_offers_region_filter():
    result = invoke("offers", "-a", "L4", "-p", "aws", "--region", "eu-central-1", "--json", "--limit", "0")
    data = json.loads(result.output)
    assert data["offers"] and {o["region"] for o in data["offers"]} == {"eu-central-1"}


def test_offers_table_has_the_columns():
    result = invoke("offers", "-a", "A100-80GB:8", "-p", "aws,runpod,vastai", "--limit", "5")
    assert result.exit_code == 0, result.output
    for column in ("provider", "accelerator", "instance / GPU type", "region / zone", "market", "$/h node",
                   "$/h GPU", "price source"):
        assert column in result.output
    assert "A100 SXM 80GB ×8" in result.output and "snapshot" in result.output
    assert "rejected:" in result.output


def test_offers_table_shows_the_age_of_dated_snapshot_prices(monkeypatch):
    monkeypatch.setenv("SKYWARD_RAY_CATALOG_DIR", str(FIXTURE_CATALOG))  # made-up rows dated 2026-11-01
    result = invoke("offers", "-a", "H100:8", "-p", "aws", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert "snapshot 2026-11-01 (" in result.output and "days old)" in result.output


def test_plan_json_and_text():
    result = invoke("plan", "-a", "H100:8", "-p", "aws,runpod,vastai", "-n", "2", "--json")
    data = json.loads(result.output)
    assert data["nodes"] == 2 and len(data["specs"]) == 3
    assert data["chosen"] == data["offers"][0]
    assert data["rejected"] and {"reason", "filter", "offer"} <= set(data["rejected"][0])
    text = invoke("plan", "-a", "H100:8", "-p", "aws", "--allocation", "on-demand")
    assert text.exit_code == 0
    assert "Chosen: aws p5.48xlarge H100 SXM 80GB ×8 on-demand" in text.output


def test_no_offers_exits_1_with_reasons():
    result = invoke("offers", "-a", "H100:8", "-p", "aws", "--max-price", "5")
    assert result.exit_code == 1
    assert "NoOffersError" in result.output and "max_hourly_cost" in result.output
    as_json = invoke("offers", "-a", "H100:8", "-p", "aws", "--max-price", "5", "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.output)["error"] == "NoOffersError"


def test_bad_input_exits_2_naming_the_fix():
    result = invoke("offers", "-a", "H1000:8")
    assert result.exit_code == 2 and "Closest: H100" in result.output
    result = invoke("plan", "-a", "H100", "-p", "gcp")
    assert result.exit_code == 2 and "Unknown provider 'gcp'" in result.output


def test_offers_json_gives_every_row_and_says_why_each_rejection():
    # issue 22: --json was cut to 30 rows silently, and `rejected` was only a count
    data = json.loads(invoke("offers", "-a", "H100:1+", "-p", "aws", "--json").output)
    assert data["total"] > 30 and len(data["offers"]) == data["total"]
    data = json.loads(invoke("offers", "-a", "H100:1", "-p", "runpod", "--json").output)
    assert data["rejected"] and all({"offer", "reason", "filter"} <= set(r) for r in data["rejected"])
    assert any(r["offer"].startswith("NVIDIA-H100") and "1 asked (pass larger_ok=True" in r["reason"]
               for r in data["rejected"])


def test_offers_table_says_how_many_more_and_how_to_show_them():
    result = invoke("offers", "-a", "H100:1+", "-p", "aws")
    assert result.exit_code == 0, result.output
    more = [line for line in result.output.splitlines() if "more; --all to show" in line]
    assert more and int(more[0].split()[1]) > 0
    everything = invoke("offers", "-a", "H100:1+", "-p", "aws", "--all")
    assert "--all to show" not in everything.output and len(everything.output) > len(result.output)


def test_a_spot_request_on_a_snapshot_without_spot_prices_says_so():
    result = invoke("offers", "-a", "RTX4090", "-p", "vastai", "--allocation", "spot")
    assert result.exit_code == 1
    assert "the snapshot has no spot prices for vastai; live prices need vastai credentials" in result.output


def test_a_one_gpu_plan_buys_no_larger_node():
    data = json.loads(invoke("plan", "-a", "H100:1", "-p", "runpod", "--json").output)
    assert data["offers"] and {o["count"] for o in data["offers"]} == {1}
    assert any("larger_ok=True" in r["reason"] for r in data["rejected"])
