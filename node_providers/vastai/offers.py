"""Vast.ai marketplace: offers (from the dated snapshot for now; live `search_offers` later).

Each marketplace ask is one host's GPUs at a price for the whole bundle (`dph_total`), plus an
interruptible floor (`min_bid`) that we treat as the spot price. Asks are filtered by the
config's reliability floor and verification, as `search_offers` would. The ask id is the
`instance_type` (what `create_instance` rents), so an ask listed under two gpu_names is one offer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from node_providers.vastai.config import VastAI

PROVIDER = "vastai"
PRICE_SOURCE = "snapshot:vastai"


def list_offers(config: "VastAI", accelerator: "Accelerator | None") -> list[Offer]:
    """Snapshot asks at or above `min_reliability` (verified only if asked), for the family asked."""
    family = accelerator.name if accelerator is not None else None
    return [
        offer
        for offer, reliability, verified in _snapshot_offers(prices.snapshot_version("vastai_offers"))
        if reliability >= config.min_reliability
        and (verified or not config.verified_only)
        and (family is None or offer.accelerator == family)
    ]


@lru_cache(maxsize=4)
def _snapshot_offers(version: tuple[str, int]) -> tuple[tuple[Offer, float, bool], ...]:
    tax = taxonomy()
    offers: list[tuple[Offer, float, bool]] = []
    for row in prices.rows("vastai_offers"):
        gpu_memory_gb = (prices.number(row["gpu_ram"]) or 0) / 1024
        variant = tax.lookup(PROVIDER, row["gpu_name"], gpu_memory_gb)
        on_demand = prices.number(row["dph_total"])
        bid = prices.number(row["min_bid"])
        common = dict(
            provider=PROVIDER,
            accelerator=variant.family if variant else row["gpu_name"],
            count=int(row["num_gpus"]),
            form_factor=variant.form_factor if variant else None,
            accelerator_memory_gb=variant.memory_gb if variant else gpu_memory_gb,
            on_demand_price=on_demand,
            spot_price=bid,
            region=row["geolocation"] or None,
            instance_type=row["id"],
            vcpus=prices.number(row["cpu_cores_effective"]),
            memory_gb=(prices.number(row["cpu_ram"]) or 0) / 1000,
            price_source=PRICE_SOURCE,
            price_as_of=prices.as_of(row["as_of"]),
        )
        reliability = prices.number(row["reliability"]) or 0.0
        verified = row["verification"] == "verified"
        if on_demand is not None:
            offers.append((Offer(market="on-demand", price=on_demand, **common), reliability, verified))
        if bid is not None:
            offers.append((Offer(market="spot", price=bid, **common), reliability, verified))
    return tuple(offers)
