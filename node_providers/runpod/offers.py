"""RunPod offers: live `gpuTypes` prices when an API key is configured, else the dated snapshot. Never imports Ray.

Each offer is one pod shape (a GPU type × count) priced for the whole pod, on-demand and
interruptible (spot, where a bid floor is listed). RunPod picks the data center, so offers have no
region. Live prices come from one GraphQL query, `gpuTypes { ... lowestPrice(input: {gpuCount: n})
{ uninterruptablePrice minimumBidPrice } }` for n in 1, 2, 4, 8 (per-GPU prices × n = the pod's
price), reused for `live_offers_ttl` seconds (`price_source="live:runpod"`). Without a key the
snapshot answers at once and nothing is sent.

The same GPU is sometimes listed under a second id ("NVIDIA H100 SXM" next to "NVIDIA H100 80GB
HBM3"); both map to the taxonomy's deploy id, so the selector sees one offer.

Pools of 2+ pods need RunPod's global networking (the only private network between pods, see
https://docs.runpod.io/pods/networking): NVIDIA GPU pods only, in the data centers that page lists,
which are Secure Cloud data centers, and on-demand pods only (RunPod's REST `PodCreateInput`:
"Currently only available for On-Demand GPU Pods on some Secure Cloud data centers"). Offers outside
that, every spot offer included, carry `single_node_reason`, so the selector keeps them for one-node
pools only and says why in `plan.rejected`.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray.planning.offer_source import fingerprint, live_listing, live_or_snapshot, market_offers
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.runpod.config import RunPod
    from skyward_ray.planning.accelerators import Accelerator

PROVIDER = "runpod"
PRICE_SOURCE = "snapshot:runpod"
LIVE_SOURCE = "live:runpod"
GPU_COUNTS = (1, 2, 4, 8)
# https://docs.runpod.io/pods/networking ("Supported data centers"), read 2026-11-29
GLOBAL_NETWORK_DATA_CENTERS = frozenset({
    "CA-MTL-3", "EU-CZ-1", "EU-FR-1", "EU-NL-1", "EU-RO-1", "EU-SE-1", "EUR-IS-2", "OC-AU-1", "US-CA-2",
    "US-GA-1", "US-GA-2", "US-IL-1", "US-KS-2", "US-NC-1", "US-TX-3", "US-TX-4", "US-WA-1",
})
NOT_NVIDIA = ("RunPod's global networking (the only private network between pods) is for NVIDIA GPU pods only; "
              "this GPU serves one-node pools")
COMMUNITY = ("RunPod's global networking (the only private network between pods) runs only in the Secure Cloud "
             "data centers RunPod lists; Community Cloud pods serve one-node pools. Fix: sky.RunPod(cloud_type='SECURE')")
SPOT_REASON = ("RunPod's global networking (the only private network between pods) is for on-demand pods only; "
               "interruptible pods serve one-node pools")
NO_NETWORK_DC = ("none of the data centers listing this GPU offers RunPod's global networking (the only private "
                 "network between pods); it serves one-node pools")


def list_offers(config: "RunPod", accelerator: "Accelerator | None") -> list[Offer]:
    """Live offers where a key is configured (the snapshot if the listing fails), else the snapshot."""
    from node_providers.runpod.api import api_key

    family = accelerator.name if accelerator is not None else None
    key = api_key(config.api_key)
    cache_key = (PROVIDER, fingerprint(key), os.environ.get("RUNPOD_API_BASE_URL", ""), config.cloud_type)

    def live() -> tuple[Offer, ...]:
        return live_listing(cache_key, config.live_offers_ttl, lambda: _live_offers(key or "", config.cloud_type))

    def snapshot() -> tuple[Offer, ...]:
        return tuple(o for o in _snapshot_offers(prices.snapshot_version("runpod_gpu_types"))
                     if config.cloud_type == "ALL" or o.tier == config.cloud_type)

    offers = live_or_snapshot(PROVIDER, live if key else None, snapshot)
    return [o for o in offers if family is None or o.accelerator == family]


def network_reason(gpu_type_id: str, tier: str | None, data_centers: set[str] | None = None) -> str | None:
    """Why pods of this shape cannot share a private network, or None when global networking can join them."""
    if not gpu_type_id.upper().startswith("NVIDIA"):
        return NOT_NVIDIA
    if tier == "COMMUNITY":
        return COMMUNITY
    if data_centers is not None and not data_centers & GLOBAL_NETWORK_DATA_CENTERS:
        return NO_NETWORK_DC
    return None


# -- live ---------------------------------------------------------------------------------------------
def live_query() -> str:
    prices_fields = "{ minimumBidPrice uninterruptablePrice }"
    counts = " ".join(f"n{n}: lowestPrice(input: {{gpuCount: {n}}}) {prices_fields}" for n in GPU_COUNTS)
    return f"query GpuTypes {{ gpuTypes {{ id displayName memoryInGb secureCloud communityCloud {counts} }} }}"


def _live_offers(key: str, cloud_type: str) -> tuple[Offer, ...]:
    from node_providers.runpod.api import graphql, runpod_errors

    with runpod_errors("list GPU types and prices"):
        gpu_types = graphql(key, live_query()).get("gpuTypes") or []
    tax = taxonomy()
    now = datetime.now(timezone.utc)
    tier = None if cloud_type == "ALL" else cloud_type
    offers: list[Offer] = []
    for gpu in gpu_types:
        if (cloud_type == "SECURE" and not gpu.get("secureCloud")) or \
                (cloud_type == "COMMUNITY" and not gpu.get("communityCloud")):
            continue
        variant = tax.lookup(PROVIDER, gpu["id"])
        if variant is None:  # a GPU the taxonomy does not know cannot be asked for by name
            continue
        gpu_type_id = variant.provider_names[PROVIDER][0]
        reason = network_reason(gpu_type_id, "COMMUNITY" if cloud_type == "ALL" and not gpu.get("secureCloud") else tier)
        for n in GPU_COUNTS:
            lowest = gpu.get(f"n{n}") or {}
            offers += priced_offers(
                _per_pod(lowest.get("uninterruptablePrice"), n) or None,  # an on-demand price of 0 is none listed
                _per_pod(lowest.get("minimumBidPrice"), n), reason,
                provider=PROVIDER, accelerator=variant.family, count=n, form_factor=variant.form_factor,
                accelerator_memory_gb=variant.memory_gb, instance_type=gpu_type_id, tier=tier,
                price_source=LIVE_SOURCE, price_as_of=now)
    # one offer per (GPU, count, market): a second id of the same GPU keeps the cheaper price
    best: dict[tuple[str, int, str], Offer] = {}
    for offer in offers:
        k = (offer.instance_type, offer.count, offer.market)
        if k not in best or offer.price < best[k].price:
            best[k] = offer
    return tuple(best.values())


def priced_offers(on_demand: float | None, spot: float | None, reason: str | None, **facts: Any) -> list[Offer]:
    """The on-demand and spot offers of one pod shape; a spot offer never joins a private network."""
    return [*market_offers(on_demand, spot, markets=("on-demand",), single_node_reason=reason, **facts),
            *market_offers(on_demand, spot, markets=("spot",), single_node_reason=reason or SPOT_REASON, **facts)]


def _per_pod(per_gpu: Any, count: int) -> float | None:
    """A per-GPU hourly price × count; None where RunPod lists none. A listed 0 stays 0 (a bid
    floor of 0 is a spot price the selector rejects, saying why)."""
    try:
        value = None if per_gpu is None else float(per_gpu)
    except (TypeError, ValueError):
        return None
    return None if value is None or value < 0 else round(value * count, 4)


# -- snapshot -----------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _snapshot_offers(version: tuple[str, int]) -> tuple[Offer, ...]:
    """One on-demand and (where listed) one spot offer per snapshot row: a pod of `gpu_count` GPUs."""
    tax = taxonomy()
    offers: list[Offer] = []
    for row in prices.rows("runpod_gpu_types"):
        variant = tax.lookup(PROVIDER, row["gpu_type_id"])
        gpu_type_id = variant.provider_names[PROVIDER][0] if variant else row["gpu_type_id"]
        data_centers = set((row.get("data_centers") or "").split()) or None
        # 0.00 and "not below on-demand" spot prices are kept: the selector says why they lose
        offers += priced_offers(
            prices.number(row["on_demand"]), prices.number(row["spot"]),
            network_reason(gpu_type_id, row["cloud_type"], data_centers),
            provider=PROVIDER,
            accelerator=variant.family if variant else row["accelerator_name"],
            count=int(row["gpu_count"]),
            form_factor=variant.form_factor if variant else None,
            accelerator_memory_gb=variant.memory_gb if variant else None,
            instance_type=gpu_type_id,
            tier=row["cloud_type"],
            vcpus=prices.number(row["vcpus"]),
            memory_gb=prices.number(row["host_memory_gb"]),
            price_source=PRICE_SOURCE,
            **prices.dating(row),
        )
    return tuple(offers)
