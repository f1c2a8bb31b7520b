"""RunPod pods: offers (from the dated snapshot for now; live `gpuTypes` prices in a later issue).

RunPod prices per GPU per hour, separately for the SECURE and COMMUNITY clouds, on-demand and
interruptible (spot = the minimum bid). A pod holds 1-8 GPUs of one type, so each GPU type becomes
per-node offers for 1, 2, 4 and 8 GPUs. RunPod picks the data center, so offers have no region.
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
    from skyward_ray.planning.accelerators import Accelerator
    from node_providers.runpod.config import RunPod

PROVIDER = "runpod"
PRICE_SOURCE = "snapshot:runpod"
POD_SIZES = (1, 2, 4, 8)


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
    tax = taxonomy()
    offers: list[Offer] = []
    for row in prices.rows("runpod_gpu_types"):
        memory = prices.number(row["memory_gb"])
        variant = tax.lookup(PROVIDER, row["gpu_type_id"], memory)
        gpu_type_id = variant.provider_names[PROVIDER][0] if variant else row["gpu_type_id"]
        on_demand = prices.number(row["on_demand_per_gpu"])
        spot = prices.number(row["spot_per_gpu"])
        for size in POD_SIZES:
            if size > int(row["max_gpu_count"] or 1):
                continue
            common = dict(
                provider=PROVIDER,
                accelerator=variant.family if variant else row["display_name"],
                count=size,
                form_factor=variant.form_factor if variant else None,
                accelerator_memory_gb=variant.memory_gb if variant else memory,
                on_demand_price=_times(on_demand, size),
                spot_price=_times(spot, size),
                instance_type=gpu_type_id,
                tier=row["cloud_type"],
                vcpus=_times(prices.number(row["vcpus_per_gpu"]), size),
                memory_gb=_times(prices.number(row["memory_gb_per_gpu"]), size),
                price_source=PRICE_SOURCE,
                price_as_of=prices.as_of(row["as_of"]),
            )
            if on_demand is not None:
                offers.append(Offer(market="on-demand", price=on_demand * size, **common))
            if spot is not None:  # 0.00 and "not below on-demand" are kept: the selector says why they lose
                offers.append(Offer(market="spot", price=spot * size, **common))
    return tuple(offers)


def _times(value: float | None, size: int) -> float | None:
    return None if value is None else round(value * size, 6)
