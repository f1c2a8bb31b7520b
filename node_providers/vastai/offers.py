"""Vast.ai marketplace: offers (from the dated snapshot for now; live `search_offers` later).

Each row is one host's GPUs at a price for the whole bundle (`dph_total`), plus an interruptible
floor (`min_bid`, where listed) that we treat as the spot price. Rows are filtered by the config's
reliability floor and verification where the row lists them, as `search_offers` would. The row's
`instance_type` (an ask id in a live listing; SkyPilot's instance-type name in the shipped
snapshot) identifies the offer, so an ask listed under two gpu_names is one offer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.vastai.config import VastAI
    from skyward_ray.planning.accelerators import Accelerator

PROVIDER = "vastai"
PRICE_SOURCE = "snapshot:vastai"


def list_offers(config: "VastAI", accelerator: "Accelerator | None") -> list[Offer]:
    """Snapshot asks at or above `min_reliability` (verified only if asked), for the family asked.

    A row that lists no reliability or verification (the SkyPilot-derived snapshot has neither) is
    not filtered on it: the snapshot cannot tell.
    """
    family = accelerator.name if accelerator is not None else None
    return [
        offer
        for offer, reliability, verified in _snapshot_offers(prices.snapshot_version("vastai_offers"))
        if (reliability is None or reliability >= config.min_reliability)
        and (verified is not False or not config.verified_only)
        and (family is None or offer.accelerator == family)
    ]


@lru_cache(maxsize=4)
def _snapshot_offers(version: tuple[str, int]) -> tuple[tuple[Offer, float | None, bool | None], ...]:
    tax = taxonomy()
    offers: list[tuple[Offer, float | None, bool | None]] = []
    for row in prices.rows("vastai_offers"):
        count = int(row["num_gpus"])
        gpu_memory_gb = (prices.number(row["gpu_total_ram_mib"]) or 0) / count / 1024
        variant = tax.lookup(PROVIDER, row["gpu_name"], gpu_memory_gb)
        on_demand = prices.number(row["dph_total"])
        bid = prices.number(row["min_bid"])
        common = dict(
            provider=PROVIDER,
            accelerator=variant.family if variant else row["gpu_name"],
            count=count,
            form_factor=variant.form_factor if variant else None,
            accelerator_memory_gb=variant.memory_gb if variant else gpu_memory_gb,
            on_demand_price=on_demand,
            spot_price=bid,
            region=row["geolocation"] or None,
            instance_type=row["instance_type"],
            vcpus=prices.number(row["vcpus"]),
            memory_gb=prices.number(row["memory_gib"]),
            price_source=PRICE_SOURCE,
            price_as_of=prices.as_of(row["as_of"]),
        )
        reliability = prices.number(row["reliability"])  # None: not listed
        verified = {"verified": True, "unverified": False}.get(row["verification"])  # None: not listed
        if on_demand is not None:
            offers.append((Offer(market="on-demand", price=on_demand, **common), reliability, verified))
        if bid is not None:
            offers.append((Offer(market="spot", price=bid, **common), reliability, verified))
    return tuple(offers)
