"""Issue 22, items 1 and 4: never more machine than asked, and a reason for every offer set aside.

A 1-GPU request used to fall back to 2-, 4- and 8-GPU nodes (ahead of the exact on-demand
match); now a larger node is only bought when the user says so (`larger_ok=True`, "H100:1+"),
and then after every exact match of the same market. A spot-only request that finds no spot
price says whether the price source lists none at all (a snapshot without spot prices).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import skyward_ray as sky
from skyward_ray import RunPod, VastAI
from skyward_ray.planning.accelerators import H100, parse_accelerator
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.selector import select
from skyward_ray.planning.spec import Spec


def pod(count: int, market: str, price: float, *, on_demand: float | None = None,
        source: str = "snapshot:runpod", provider: str = "runpod") -> Offer:
    """MADE UP FOR TESTS, not prices: one H100 SXM node of `count` GPUs in one market."""
    return Offer(provider=provider, accelerator="H100", count=count, market=market, price=price,
                 on_demand_price=on_demand if market == "spot" else price,
                 spot_price=price if market == "spot" else None, instance_type="NVIDIA H100 80GB HBM3",
                 tier="SECURE", form_factor="SXM", accelerator_memory_gb=80.0, vcpus=20.0 * count,
                 memory_gb=125.0 * count, price_source=source)


# MADE UP FOR TESTS: an exact x1 on-demand row, and larger x2 / x8 spot rows that rank first by market.
TABLE = [pod(1, "on-demand", 2.39), pod(2, "spot", 5.38, on_demand=5.98), pod(8, "spot", 21.52, on_demand=23.92)]


def test_a_one_gpu_plan_holds_no_larger_node_and_says_why_each_was_set_aside():
    plan = select([Spec(provider=RunPod(), accelerator="H100:1")], [TABLE])
    assert [(o.count, o.market) for o in plan.offers] == [(1, "on-demand")]
    reasons = {r.offer.count: (r.filter, r.reason) for r in plan.rejected}
    assert set(reasons) == {2, 8}
    assert reasons[8] == ("count", "8 x H100 per node, 1 asked (pass larger_ok=True, or write 'H100:1+', "
                                   "to allow larger machines)")
    assert reasons[2][1].startswith("2 x H100 per node, 1 asked (pass larger_ok=True")
    assert "count ×2, e.g. 2 x H100 per node, 1 asked (pass larger_ok=True" in str(plan)


def test_larger_ok_allows_larger_nodes_but_an_exact_match_ranks_first_in_its_market():
    # made up: a larger node (another tier) cheaper than the exact one
    cheap_big = pod(8, "spot", 2.00, on_demand=23.92).model_copy(update={"tier": "COMMUNITY"})
    table = [*TABLE, pod(1, "spot", 2.69, on_demand=2.99), cheap_big]
    for accelerator in (H100(count=1, larger_ok=True), "H100:1+", {"name": "H100", "larger_ok": True}):
        plan = select([Spec(provider=RunPod(), accelerator=accelerator)], [table])
        # spot-if-available: spot first (exact, then larger), then on-demand (DESIGN §2.1)
        assert [(o.count, o.market, o.price) for o in plan.offers] == [
            (1, "spot", 2.69), (8, "spot", 2.00), (2, "spot", 5.38), (8, "spot", 21.52), (1, "on-demand", 2.39)]
        assert plan.rejected == []
    cheapest = select([Spec(provider=RunPod(), accelerator="H100:1+", allocation="cheapest")], [table])
    assert [(o.count, o.price) for o in cheapest.offers] == [(1, 2.39), (1, 2.69), (8, 2.00), (2, 5.38), (8, 21.52)]


def test_the_explicit_form_reads_back_and_is_documented():
    assert str(H100(count=2, larger_ok=True)) == "H100:2+" and str(H100(count=2)) == "H100:2"
    assert parse_accelerator("H100-80GB:2+") == H100(count=2, memory="80GB", larger_ok=True)
    assert parse_accelerator(str(H100(count=4, larger_ok=True))) == H100(count=4, larger_ok=True)
    assert parse_accelerator("H100+") == H100(larger_ok=True) and parse_accelerator("H100") == H100()
    assert "more than `count`" in (sky.accelerators.Accelerator.model_fields["larger_ok"].description or "")
    with pytest.raises(sky.SpecError, match="not a whole number"):
        parse_accelerator("H100:+")


def test_the_user_visible_plan_on_the_fixture_catalog(monkeypatch):
    # the fixture RunPod table (made up for tests) sells H100 pods of 1, 2, 4 and 8 GPUs
    monkeypatch.setenv("SKYWARD_RAY_CATALOG_DIR", str(Path(__file__).resolve().parent / "fixtures" / "catalog"))
    plan = sky.plan(provider=RunPod(), accelerator="H100:1")
    assert plan.offers and {o.count for o in plan.offers} == {1}
    larger = [r for r in plan.rejected if r.offer.count > 1]
    assert larger and all(r.filter == "count" and "larger_ok=True" in r.reason for r in larger)
    assert {o.count for o in sky.plan(provider=RunPod(), accelerator="H100:1+").offers} == {1, 2, 4, 8}


def test_a_spot_request_says_when_the_price_source_has_no_spot_prices():
    vast = [pod(1, "on-demand", 1.80, provider="vastai", source="snapshot:vastai")]
    plan = select([Spec(provider=VastAI(), accelerator="H100", allocation="spot")], [vast])
    assert plan.offers == []
    [rejection] = plan.rejected
    assert rejection.filter == "market"
    assert rejection.reason == ("no spot price listed for this offer (the snapshot has no spot prices for vastai; "
                                "live prices need vastai credentials); allocation='spot' buys spot only")
    live = [pod(1, "on-demand", 1.80, provider="vastai", source="live:vastai")]
    [rejection] = select([Spec(provider=VastAI(), accelerator="H100", allocation="spot")], [live]).rejected
    assert "(live:vastai lists no spot prices)" in rejection.reason
    # where the same source lists spot prices for other machines, this one is simply on-demand only
    mixed = [pod(1, "on-demand", 2.39), pod(1, "spot", 1.50, on_demand=1.99).model_copy(update={"instance_type": "x"})]
    reasons = [r.reason for r in select([Spec(provider=RunPod(), accelerator="H100", allocation="spot")], [mixed]).rejected]
    assert reasons == ["no spot price listed for this offer (on-demand only); allocation='spot' buys spot only"]
