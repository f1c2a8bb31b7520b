"""The pure selector on fixture tables with the quirks real price feeds have."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from skyward_ray.planning.accelerators import H100
from skyward_ray.errors import SpecError
from skyward_ray.planning.offers import Offer
from skyward_ray import AWS, RunPod, VastAI
from skyward_ray.planning.selector import select
from skyward_ray.planning.spec import Spec

AS_OF = datetime(2026, 11, 1, tzinfo=timezone.utc)


def offer(provider="aws", instance="p5.48xlarge", market="on-demand", price=50.0, *, od=None, spot=None,
          accelerator="H100", count=8, ff="SXM", mem=80.0, region="us-east-1", zone=None, vcpus=192.0,
          ram=2048.0, tier=None) -> Offer:
    return Offer(
        provider=provider, accelerator=accelerator, count=count, market=market, price=price,
        on_demand_price=od if od is not None else (price if market == "on-demand" else None),
        spot_price=spot if spot is not None else (price if market == "spot" else None),
        region=region, zone=zone, instance_type=instance, vcpus=vcpus, memory_gb=ram,
        accelerator_memory_gb=mem, form_factor=ff, tier=tier, price_source=f"snapshot:{provider}", price_as_of=AS_OF,
    )


# One AWS machine type, on-demand per region and spot per zone, with every spot quirk.
TABLE = [
    offer(instance="p5.48xlarge", price=55.0, zone=None),
    offer(instance="p5.48xlarge", market="spot", price=21.0, od=55.0, zone="us-east-1a"),
    offer(instance="p5.48xlarge", market="spot", price=23.0, od=55.0, zone="us-east-1b"),
    offer(instance="p5.48xlarge", market="spot", price=0.0, od=55.0, zone="us-east-1c"),   # spot 0.00
    offer(instance="p5.48xlarge", market="spot", price=55.0, od=55.0, zone="us-east-1d"),  # spot == on-demand
    offer(instance="p5.48xlarge", market="spot", price=60.0, od=55.0, zone="us-east-1f"),  # spot > on-demand
    offer(instance="p5en.48xlarge", price=40.0, accelerator="H200", mem=141.0),           # no spot at all
]


def ranked(plan):
    return [(o.instance_type, o.market, o.zone, o.price) for o in plan.offers]


def test_spot_if_available_is_all_spot_by_price_then_all_on_demand():
    plan = select([Spec(provider=AWS())], [TABLE])
    assert ranked(plan) == [
        ("p5.48xlarge", "spot", "us-east-1a", 21.0),
        ("p5.48xlarge", "spot", "us-east-1b", 23.0),
        ("p5en.48xlarge", "on-demand", None, 40.0),
        ("p5.48xlarge", "on-demand", None, 55.0),
    ]
    assert plan.chosen.market == "spot" and plan.chosen.price == 21.0


def test_spot_only_and_why_the_others_lost():
    plan = select([Spec(provider=AWS(), allocation="spot")], [TABLE])
    assert ranked(plan) == [("p5.48xlarge", "spot", "us-east-1a", 21.0), ("p5.48xlarge", "spot", "us-east-1b", 23.0)]
    reasons = {(r.offer.instance_type, r.offer.zone): r.reason for r in plan.rejected}
    assert "$0.00 is not a real price" in reasons[("p5.48xlarge", "us-east-1c")]
    assert "not below on-demand $55.00" in reasons[("p5.48xlarge", "us-east-1d")]
    assert "not below on-demand $55.00" in reasons[("p5.48xlarge", "us-east-1f")]
    assert "no spot price listed" in reasons[("p5en.48xlarge", None)]
    assert "allocation='spot' buys spot only" in reasons[("p5.48xlarge", None)]
    assert len(plan.rejected) == 5


def test_on_demand_only():
    plan = select([Spec(provider=AWS(), allocation="on-demand")], [TABLE])
    assert ranked(plan) == [("p5en.48xlarge", "on-demand", None, 40.0), ("p5.48xlarge", "on-demand", None, 55.0)]
    assert {r.filter for r in plan.rejected} == {"market"}


def test_cheapest_is_one_price_order_across_markets():
    table = TABLE + [offer(instance="p4d.24xlarge", market="spot", price=45.0, od=50.0, accelerator="H100")]
    plan = select([Spec(provider=AWS(), allocation="cheapest")], [table])
    assert [o.price for o in plan.offers] == [21.0, 23.0, 40.0, 45.0, 55.0]
    assert [o.market for o in plan.offers] == ["spot", "spot", "on-demand", "spot", "on-demand"]


def test_duplicate_rows_under_two_names_rank_once():
    rows = [
        offer(provider="vastai", instance="21000001", price=17.0, region="Texas, US"),
        offer(provider="vastai", instance="21000001", price=17.0, region="Texas, US"),  # same ask, 2nd gpu_name
        offer(provider="vastai", instance="21000002", price=18.0, region="Texas, US"),
    ]
    plan = select([Spec(provider=VastAI(), accelerator="H100:8")], [rows])
    assert [o.instance_type for o in plan.offers] == ["21000001", "21000002"]
    assert [r.filter for r in plan.rejected] == ["duplicate"]
    assert "duplicate listing of 21000001" in plan.rejected[0].reason


def test_duplicate_keeps_the_cheaper_row():
    rows = [offer(price=33.0, instance="p4d.24xlarge"), offer(price=32.77, instance="p4d.24xlarge")]
    plan = select([Spec(provider=AWS())], [rows])
    assert [o.price for o in plan.offers] == [32.77]
    assert plan.rejected[0].offer.price == 33.0


SXM_PCIE = [
    offer(provider="runpod", instance="NVIDIA H100 80GB HBM3", price=23.92, ff="SXM", region=None),
    offer(provider="runpod", instance="NVIDIA H100 PCIe", price=19.12, ff="PCIe", region=None),
    offer(provider="runpod", instance="NVIDIA H100 NVL", price=22.32, ff="NVL", mem=94.0, region=None),
]


def test_h100_without_form_factor_matches_sxm_pcie_and_nvl():
    plan = select([Spec(provider=RunPod(), accelerator="H100:8")], [SXM_PCIE])
    assert [o.form_factor for o in plan.offers] == ["PCIe", "NVL", "SXM"]


def test_form_factor_and_memory_pin_the_variant():
    plan = select([Spec(provider=RunPod(), accelerator=H100(count=8, form_factor="SXM"))], [SXM_PCIE])
    assert [o.form_factor for o in plan.offers] == ["SXM"]
    assert {r.reason for r in plan.rejected} == {"H100 PCIe, asked H100 SXM", "H100 NVL, asked H100 SXM"}
    plan = select([Spec(provider=RunPod(), accelerator=H100(count=8, memory="94GB"))], [SXM_PCIE])
    assert [o.form_factor for o in plan.offers] == ["NVL"]
    assert "H100 80GB, asked H100 94GB" in {r.reason for r in plan.rejected}


def test_count_is_exact_unless_larger_is_allowed():
    # issue 22: a larger node is more machine than asked; only `larger_ok` (or "H100:2+") buys one.
    rows = [offer(provider="vastai", instance=str(n), count=n, price=2.0 * n, region="Utah, US") for n in (1, 2, 4, 8)]
    plan = select([Spec(provider=VastAI(), accelerator="H100:2")], [rows])
    assert [o.count for o in plan.offers] == [2]
    assert plan.rejected[0].reason == "1× H100 per node, asked 2"
    assert [r.reason for r in plan.rejected[1:]] == [
        f"{n} x H100 per node, 2 asked (pass larger_ok=True, or write 'H100:2+', to allow larger machines)" for n in (4, 8)]
    plan = select([Spec(provider=VastAI(), accelerator="H100:2+")], [rows])
    assert [o.count for o in plan.offers] == [2, 4, 8]
    assert [r.reason for r in plan.rejected] == ["1× H100 per node, asked 2"]


def test_other_accelerators_are_rejected_and_cpu_only_matches_anything():
    rows = [offer(accelerator="A100", instance="p4d.24xlarge", price=32.0),
            offer(accelerator=None, count=0, ff=None, mem=None, instance="m7i.large", price=0.1)]
    plan = select([Spec(provider=AWS(), accelerator="H100")], [rows])
    assert plan.offers == [] and [r.reason for r in plan.rejected] == ["A100, asked H100", "no accelerator, asked H100"]
    plan = select([Spec(provider=AWS())], [rows])
    assert [o.instance_type for o in plan.offers] == ["m7i.large", "p4d.24xlarge"]


def test_max_hourly_cost_is_per_node_and_per_market():
    plan = select([Spec(provider=AWS(), max_hourly_cost=30)], [TABLE])
    assert ranked(plan) == [("p5.48xlarge", "spot", "us-east-1a", 21.0), ("p5.48xlarge", "spot", "us-east-1b", 23.0)]
    capped = [r.reason for r in plan.rejected if r.filter == "max_hourly_cost"]
    assert "$55.00/h per node (on-demand) is over max_hourly_cost $30.00/h per node" in capped


def test_regions_zones_and_node_size():
    rows = [
        offer(region="us-east-1", zone="us-east-1a", market="spot", price=20.0, od=55.0),
        offer(region="us-east-1", zone=None, price=55.0),
        offer(region="eu-west-1", zone="eu-west-1a", market="spot", price=19.0, od=60.0),
        offer(provider="aws", region="us-west-2", zone="us-west-2b", market="spot", price=18.0, od=55.0, vcpus=96.0),
    ]
    by_region = select([Spec(provider=AWS(), region="us-east-1")], [rows])
    assert [o.region for o in by_region.offers] == ["us-east-1", "us-east-1"]
    assert "region eu-west-1, asked us-east-1" in [r.reason for r in by_region.rejected]
    assert [o.region for o in select([Spec(provider=AWS(), region="us")], [rows]).offers] == ["us-west-2", "us-east-1", "us-east-1"]
    by_zone = select([Spec(provider=AWS(), zone="us-east-1a")], [rows])
    assert [(o.zone, o.market) for o in by_zone.offers] == [("us-east-1a", "spot"), (None, "on-demand")]
    big = select([Spec(provider=AWS(), vcpus=128, memory_gb=1024)], [rows])
    assert "us-west-2" not in {o.region for o in big.offers}
    assert "96 vCPUs per node, asked at least 128" in [r.reason for r in big.rejected]


def test_country_matches_marketplace_locations():
    rows = [offer(provider="vastai", instance="1", region="Texas, US", price=17.0),
            offer(provider="vastai", instance="2", region="Germany, DE", price=16.0)]
    plan = select([Spec(provider=VastAI(), region="US")], [rows])
    assert [o.instance_type for o in plan.offers] == ["1"]


def test_multi_spec_ranks_three_providers_together_and_keeps_each_spec():
    specs = [
        Spec(provider=AWS(), accelerator="H100:8"),
        Spec(provider=RunPod(), accelerator="H100:8", allocation="on-demand"),
        Spec(provider=VastAI(), accelerator="H100:8"),
    ]
    aws = [offer(market="spot", price=21.0, od=55.0, zone="us-east-1a"), offer(price=55.0)]
    runpod = [offer(provider="runpod", instance="NVIDIA H100 PCIe", price=19.12, region=None),
              offer(provider="runpod", instance="NVIDIA H100 PCIe", market="spot", price=15.92, od=19.12, region=None)]
    vast = [offer(provider="vastai", instance="777", price=17.0, region="Texas, US"),
            offer(provider="vastai", instance="777", market="spot", price=9.0, od=17.0, region="Texas, US")]
    plan = select(specs, [aws, runpod, vast], nodes=2)
    # RunPod asked for on-demand outright, so its on-demand entry competes with the spot entries;
    # the on-demand entries of spot-if-available specs are the fallback tier after them.
    assert [(o.provider, o.market, o.price) for o in plan.offers] == [
        ("vastai", "spot", 9.0), ("runpod", "on-demand", 19.12), ("aws", "spot", 21.0),
        ("vastai", "on-demand", 17.0), ("aws", "on-demand", 55.0),
    ]
    assert [plan.specs[o.spec_index].provider.name for o in plan.offers] == [o.provider for o in plan.offers]
    assert plan.nodes == 2 and plan.spec_for(plan.chosen) is specs[2]
    assert [r.spec_index for r in plan.rejected] == [1]


def test_ties_are_broken_deterministically_whatever_the_input_order():
    rows = [offer(provider="aws", instance=f"t{i}", price=10.0, zone=f"us-east-1{z}") for i in range(3) for z in "ab"]
    first = select([Spec(provider=AWS())], [rows])
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert ranked(select([Spec(provider=AWS())], [shuffled])) == ranked(first)
    assert [(o.zone[-1], o.instance_type) for o in first.offers] == [("a", "t0"), ("a", "t1"), ("a", "t2"), ("b", "t0"), ("b", "t1"), ("b", "t2")]


def test_equal_prices_prefer_the_earlier_spec():
    a = [offer(provider="aws", price=10.0)]
    v = [offer(provider="vastai", instance="1", price=10.0, region="Utah, US")]
    plan = select([Spec(provider=VastAI()), Spec(provider=AWS())], [v, a])
    assert [o.provider for o in plan.offers] == ["vastai", "aws"]


def test_offers_from_another_provider_are_rejected():
    plan = select([Spec(provider=AWS())], [[offer(provider="runpod", region=None)]])
    assert plan.offers == [] and plan.rejected[0].reason == "from runpod; this spec asks aws"


def test_mismatched_lists_are_an_error():
    with pytest.raises(SpecError):
        select([Spec()], [])


def test_str_plan_shows_table_price_age_and_rejected_count():
    plan = select([Spec(provider=AWS(), accelerator="H100:8")], [TABLE])
    text = str(plan)
    days = (datetime.now(timezone.utc) - AS_OF).days
    assert f"snapshot 2026-11-01 ({days} days old)" in text
    assert "p5.48xlarge" in text and "us-east-1a" in text and "21.00" in text
    assert "Chosen: aws p5.48xlarge H100 SXM 80GB ×8 spot in us-east-1a" in text
    assert "3 ranked, 4 rejected: 3 no_discount, 1 accelerator" in text
    assert "\x1b[" not in text  # no colour codes


def test_live_prices_show_minutes():
    fresh = offer(market="spot", price=20.0, od=55.0).model_copy(
        update={"price_source": "live:aws", "price_as_of": datetime.now(timezone.utc) - timedelta(minutes=3)})
    assert "live (3 min old)" in str(select([Spec(provider=AWS())], [[fresh]]))


def test_offers_without_a_private_network_serve_one_node_only():
    """An offer whose machines cannot reach each other's Ray ports is fine for one node, and is
    rejected for a pool of several with the offer's own reason."""
    lonely = offer(provider="vastai", instance="ask-1", price=10.0, region="Texas, US").model_copy(
        update={"single_node_reason": "hosts on different Vast.ai machines share no private network"})
    networked = offer(provider="vastai", instance="ask-2", price=12.0, region="Texas, US")
    spec = Spec(provider=VastAI(), accelerator=H100(count=8), allocation="on-demand")
    assert [o.instance_type for o in select([spec], [[lonely, networked]], nodes=1).offers] == ["ask-1", "ask-2"]
    two = select([spec], [[lonely, networked]], nodes=2)
    assert [o.instance_type for o in two.offers] == ["ask-2"]
    (rejection,) = [r for r in two.rejected if r.filter == "network"]
    assert rejection.offer.instance_type == "ask-1"
    assert rejection.reason == ("2 nodes cannot form one Ray cluster here: hosts on different Vast.ai machines "
                                "share no private network")
