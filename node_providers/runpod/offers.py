"""RunPod pods: offers (from the dated snapshot for now; live `gpuTypes` prices in a later issue).

Each snapshot row is one pod shape (a GPU type × count, in the SECURE or COMMUNITY cloud) priced
for the whole pod, on-demand and interruptible (spot, where one is listed). RunPod picks the data
center, so offers have no region.
The same GPU is sometimes listed under a second id ("NVIDIA H100 SXM" next to "NVIDIA H100 80GB
HBM3"); both map to the taxonomy's deploy id, so the selector sees one offer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.runpod.config import RunPod
    from skyward_ray.planning.accelerators import Accelerator

PROVIDER = "runpod"
PRICE_SOURCE = "snapshot:runpod"


def list_offers(config: "RunPod", accelerator: "Accelerator | None") -> list[Offer]:
    """Snapshot offers in the config's cloud type (SECURE, COMMUNITY or ALL), for the family asked."""
    offers = _snapshot_offers(prices.snapshot_version("runpod_gpu_types"))
    family = accelerator.name if accelerator is not None else None
    return [
        offer
        for offer in offers
        if (config.cloud_type == "ALL" or offer.tier == config.cloud_type)
        and (family is None or offer.accelerator == family)
    ]


@lru_cache(maxsize=4)
def _snapshot_offers(version: tuple[str, int]) -> tuple[Offer, ...]:
    """One on-demand and (where listed) one spot offer per snapshot row: a pod of `gpu_count` GPUs."""
    tax = taxonomy()
    offers: list[Offer] = []
    for row in prices.rows("runpod_gpu_types"):
        variant = tax.lookup(PROVIDER, row["gpu_type_id"])
        gpu_type_id = variant.provider_names[PROVIDER][0] if variant else row["gpu_type_id"]
        on_demand = prices.number(row["on_demand"])
        spot = prices.number(row["spot"])
        common = dict(
            provider=PROVIDER,
            accelerator=variant.family if variant else row["accelerator_name"],
            count=int(row["gpu_count"]),
            form_factor=variant.form_factor if variant else None,
            accelerator_memory_gb=variant.memory_gb if variant else None,
            on_demand_price=on_demand,
            spot_price=spot,
            instance_type=gpu_type_id,
            tier=row["cloud_type"],
            vcpus=prices.number(row["vcpus"]),
            memory_gb=prices.number(row["host_memory_gb"]),
            price_source=PRICE_SOURCE,
            price_as_of=prices.as_of(row["as_of"]),
        )
        if on_demand is not None:
            offers.append(Offer(market="on-demand", price=on_demand, **common))
        if spot is not None:  # 0.00 and "not below on-demand" are kept: the selector says why they lose
            offers.append(Offer(market="spot", price=spot, **common))
    return tuple(offers)
