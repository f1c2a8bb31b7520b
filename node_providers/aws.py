"""Amazon EC2: offers (from the dated snapshot for now; live pricing in a later issue).

EC2 prices on-demand per region and spot per availability zone, so one instance type yields one
on-demand offer per region (zone left open: the launcher picks the subnet) and one spot offer per
zone that has a spot price. The snapshot mirrors the API shapes: `aws_instance_types.csv` is
DescribeInstanceTypes' GpuInfo, `aws_prices.csv` the price list plus DescribeSpotPriceHistory.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray.offers import Offer

if TYPE_CHECKING:
    from skyward_ray.accelerators import Accelerator
    from skyward_ray.providers import AWS

PROVIDER = "aws"
PRICE_SOURCE = "snapshot:aws"


def list_offers(config: "AWS", accelerator: "Accelerator | None") -> list[Offer]:
    """Snapshot offers in the config's region(s) (all snapshot regions if none), for the family asked."""
    offers = _snapshot_offers(prices.snapshot_version("aws_instance_types"), prices.snapshot_version("aws_prices"))
    regions = set(config.regions or ()) | ({config.region} if config.region else set())
    family = accelerator.name if accelerator is not None else None
    return [
        offer
        for offer in offers
        if (not regions or offer.region in regions) and (family is None or offer.accelerator == family)
    ]


def _instance_specs() -> dict[str, dict[str, object]]:
    """instance type → accelerator facts, resolved through the taxonomy (GpuInfo name + memory)."""
    tax = taxonomy()
    specs: dict[str, dict[str, object]] = {}
    for row in prices.rows("aws_instance_types"):
        count = int(row["gpu_count"] or 0)
        gpu_memory_gb = (prices.number(row["gpu_memory_mib"]) or 0) / 1024
        variant = tax.lookup(PROVIDER, row["gpu_name"], gpu_memory_gb) if count else None
        specs[row["instance_type"]] = {
            "accelerator": (variant.family if variant else row["gpu_name"]) if count else None,
            "count": count,
            "form_factor": variant.form_factor if variant else None,
            "accelerator_memory_gb": (variant.memory_gb if variant else gpu_memory_gb) if count else None,
            "vcpus": prices.number(row["vcpus"]),
            "memory_gb": (prices.number(row["memory_mib"]) or 0) / 1024,
        }
    return specs


@lru_cache(maxsize=4)
def _snapshot_offers(types_version: tuple[str, int], prices_version: tuple[str, int]) -> tuple[Offer, ...]:
    specs = _instance_specs()
    on_demand: dict[tuple[str, str], float] = {}
    price_rows = prices.rows("aws_prices")
    for row in price_rows:
        if row["market"] == "on-demand":
            on_demand.setdefault((row["region"], row["instance_type"]), float(row["price"]))
    offers: list[Offer] = []
    for row in price_rows:
        facts = specs.get(row["instance_type"])
        if facts is None:
            continue  # priced but not described: we cannot say what it is, so we do not sell it
        region_on_demand = on_demand.get((row["region"], row["instance_type"]))
        is_spot = row["market"] == "spot"
        offers.append(
            Offer(
                provider=PROVIDER,
                market="spot" if is_spot else "on-demand",
                price=float(row["price"]),
                on_demand_price=region_on_demand,
                spot_price=float(row["price"]) if is_spot else None,
                region=row["region"],
                zone=row["zone"] or None,
                instance_type=row["instance_type"],
                price_source=PRICE_SOURCE,
                price_as_of=prices.as_of(row["as_of"]),
                **facts,
            )
        )
    return tuple(offers)
