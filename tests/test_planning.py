"""`sky.plan`: arguments → specs → provider offers (snapshots) → ranked plan or a helpful error."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyward_ray.errors import NoOffersError, SpecError
from skyward_ray.planning.nodes import Nodes
from skyward_ray.planning.plan import plan, specs_from_arguments
from skyward_ray import AWS, RunPod, VastAI
from skyward_ray.planning.spec import Spec

# Fixture snapshots with every quirk (and nothing else), so expectations are exact. Made up for
# tests; the shipped snapshots (catalog/snapshots/) hold only published figures.
FIXTURE_CATALOG = Path(__file__).resolve().parent / "fixtures" / "catalog"


@pytest.fixture
def fixture_catalog(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKYWARD_RAY_CATALOG_DIR", str(FIXTURE_CATALOG))
    return FIXTURE_CATALOG


def rows(result):
    return [(o.provider, o.instance_type, o.market, round(o.price, 2)) for o in result.offers]


def test_aws_quirks_from_the_snapshot(fixture_catalog):
    result = plan(provider=AWS(), accelerator="H100:8")
    assert rows(result) == [
        ("aws", "p5.48xlarge", "spot", 21.0),
        ("aws", "p5.48xlarge", "on-demand", 55.04),
        ("aws", "p5.48xlarge", "on-demand", 61.09),
    ]
    assert {r.filter for r in result.rejected} == {"no_discount"}  # 0.00 and spot == on-demand
    assert result.chosen.zone == "us-east-1a" and result.chosen.price_source == "snapshot:aws"
    assert result.chosen.price_as_of.date().isoformat() == "2026-11-01"


def test_aws_region_config_and_duplicate_price_rows(fixture_catalog):
    result = plan(provider=AWS(region="eu-west-1"), accelerator="H100:8")
    assert rows(result) == [("aws", "p5.48xlarge", "on-demand", 61.09)]
    a100 = plan(provider=AWS(), accelerator="A100-40GB:8", allocation="on-demand")
    assert rows(a100) == [("aws", "p4d.24xlarge", "on-demand", 32.77)]
    assert "duplicate" in {r.filter for r in a100.rejected}


def test_runpod_two_names_per_node_counts_and_cloud_type(fixture_catalog):
    result = plan(provider=RunPod(), accelerator="H100:8", allocation="cheapest")
    assert rows(result) == [
        ("runpod", "NVIDIA H100 PCIe", "on-demand", 15.92),
        ("runpod", "NVIDIA H100 80GB HBM3", "spot", 21.52),
        ("runpod", "NVIDIA H100 80GB HBM3", "on-demand", 23.92),
    ]
    assert sum(r.filter == "duplicate" for r in result.rejected) == 2  # "NVIDIA H100 SXM" rows
    sizes = plan(provider=RunPod(cloud_type="SECURE"), accelerator="H100:1+", allocation="on-demand")
    assert [o.count for o in sizes.offers] == [1, 2, 4, 8]  # every pod size is listed (larger ones on request)
    assert {o.tier for o in sizes.offers} == {"SECURE"}


def test_vast_filters_and_dedup(fixture_catalog):
    result = plan(provider=VastAI(), accelerator="RTX4090", allocation="on-demand")
    assert rows(result) == [("vastai", "101", "on-demand", 0.35)]  # 102 unverified, 103 below reliability
    assert sum(r.filter == "duplicate" for r in result.rejected) == 1
    loose = plan(provider=VastAI(verified_only=False, min_reliability=0.5), accelerator="RTX4090", allocation="spot")
    assert rows(loose) == [("vastai", "101", "spot", 0.2)]
    reasons = {r.offer.instance_type: r.reason for r in loose.rejected if r.filter != "duplicate"}
    assert "$0.00" in reasons["102"]
    assert "no spot price listed" in reasons["103"]
    a100 = plan(provider=VastAI(), accelerator="A100-40GB:8")
    assert rows(a100) == [("vastai", "104", "on-demand", 5.9)]


def test_three_providers_in_one_plan(fixture_catalog):
    single = plan(provider=[AWS(), RunPod(), VastAI()], accelerator="H100:8", nodes=1)
    assert [o.provider for o in single.offers][:3] == ["vastai", "aws", "runpod"]
    result = plan(provider=[AWS(), RunPod(), VastAI()], accelerator="H100:8", nodes=2)
    # Vast.ai hosts share no private network: its offers serve one-node pools only
    assert "vastai" not in {o.provider for o in result.offers}
    assert {r.filter for r in result.rejected if r.offer.provider == "vastai"} >= {"network"}
    assert result.nodes == 2
    assert [result.specs[o.spec_index].provider.name for o in result.offers] == [o.provider for o in result.offers]
    same = plan(Spec(provider="aws", accelerator="H100:8"), Spec(provider="runpod", accelerator="H100:8"),
                Spec(provider="vastai", accelerator="H100:8"), nodes=Nodes(2))
    assert rows(same) == rows(result)


def test_plan_text_says_snapshot_and_age(fixture_catalog):
    text = str(plan(provider="aws,vastai", accelerator="H100:8"))
    assert "snapshot 2026-11-01 (" in text and "days old)" in text
    assert "snapshot 2026-11-20 (" in text
    assert "rejected" in text


def test_no_offers_error_names_the_ask_the_reasons_and_nearest(fixture_catalog):
    with pytest.raises(NoOffersError) as info:
        plan(provider=AWS(), accelerator="H100:8", max_hourly_cost=10)
    message = str(info.value)
    assert "H100:8 on aws (spot-if-available, ≤ $10/h per node)" in message
    assert "max_hourly_cost: e.g. $21.00/h per node (spot) is over max_hourly_cost $10.00/h" in message
    assert "raise max_hourly_cost to at least 21.00" in message
    assert "vastai 100 H100 SXM 80GB ×8 spot $9.50/h" in message  # cheaper elsewhere

    with pytest.raises(NoOffersError) as info:
        plan(provider=AWS(), accelerator="RTX4090")
    message = str(info.value)
    assert "aws lists no RTX4090 offers; it has A100, H100" in message
    assert "provider='runpod'" in message and "provider='vastai'" in message

    with pytest.raises(NoOffersError, match=r"form_factor: e\.g\. H100 SXM, asked H100 PCIe"):
        plan(provider=AWS(), accelerator="H100-PCIe:8")


def test_specs_from_arguments_rules():
    assert len(specs_from_arguments((), provider=[AWS(), "runpod"], accelerator="L4")) == 2
    with pytest.raises(SpecError, match="not both.*move accelerator="):
        specs_from_arguments((Spec(),), accelerator="H100")
    with pytest.raises(SpecError, match="must be sky.Spec"):
        specs_from_arguments(("H100:8",))
    with pytest.raises(SpecError, match="allocation='sometimes'"):
        plan(provider="aws", accelerator="H100", allocation="sometimes")
    with pytest.raises(SpecError, match="nodes"):
        plan(provider="aws", accelerator="H100", nodes=0)


def test_plan_accepts_compute_arguments_with_the_real_snapshot():
    result = plan(provider=AWS(), accelerator="H100:8", image=object(), region="us-east-1")
    assert result.chosen.instance_type == "p5.48xlarge" and result.chosen.market == "spot"
    # the cheapest us-east-1 zone in the SkyPilot catalog snapshot (use1-az3)
    assert result.chosen.price == pytest.approx(20.9934) and result.chosen.zone == "use1-az3"
    on_demand = plan(provider=AWS(), accelerator="H100:8", allocation="on-demand", region="us-east-1")
    assert on_demand.chosen.price == pytest.approx(98.32)  # as published in that catalog file


def test_a_failing_provider_becomes_a_note(monkeypatch):
    class Broken(AWS):  # a provider whose offer source fails (e.g. a third-party provider with a bug)
        def list_offers(self, accelerator=None):
            raise ConnectionError("price endpoint unreachable")

    result = plan(Spec(provider=Broken(), accelerator="H100:8"), Spec(provider=RunPod(), accelerator="H100:8"))
    assert result.chosen.provider == "runpod"
    assert any("could not list offers" in note for note in result.notes)
