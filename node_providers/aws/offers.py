"""AWS offers: live where credentials allow, else the dated snapshot. Never imports Ray.

EC2 prices on-demand per region and spot per availability zone, so one instance type yields one
on-demand offer per region (zone left open: the provider picks a subnet) and one spot offer per
zone that has a plausible spot price. With credentials (resolved without the instance metadata
service, so planning never waits on a metadata timeout off EC2), GPU facts come from
DescribeInstanceTypes, availability from DescribeInstanceTypeOfferings and spot prices from
DescribeSpotPriceHistory (`price_source="live:aws"`); on-demand prices from the Pricing API when it
answers, else from the snapshot (`"snapshot:aws"`). Without credentials: the snapshot only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from catalog import prices
from catalog.taxonomy import taxonomy
from node_providers.aws.session import aws_errors, credentials_resolve_offline, retry_config, session_for
from skyward_ray.errors import ProvisioningError
from skyward_ray.planning.offer_source import live_listing, live_or_snapshot, market_offers
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.aws.config import AWS
    from skyward_ray.planning.accelerators import Accelerator

log = logging.getLogger(__name__)

PROVIDER = "aws"
PRICE_SOURCE = "snapshot:aws"
LIVE_SOURCE = "live:aws"
GPU_TYPE_PATTERNS = ["g*", "p*"]  # every NVIDIA GPU instance family on EC2 (g4dn, g5, g6, g6e, p3, p4d, p5, ...)


def list_offers(config: "AWS", accelerator: "Accelerator | None") -> list[Offer]:
    """Offers in the config's region(s) (`AWS.search_regions`: the configured region unless told
    otherwise): live where credentials resolve, the snapshot elsewhere. Every region (`region='any'`)
    is listed from the snapshot: one live listing per region would take minutes."""
    snapshot = _snapshot_offers(prices.snapshot_version("aws_instance_types"), prices.snapshot_version("aws_prices"))
    regions = config.search_regions()
    family = accelerator.name if accelerator is not None else None
    chosen = [o for o in snapshot if (not regions or o.region in regions) and (family is None or o.accelerator == family)]
    if not regions or not credentials_resolve_offline(config.profile):
        return chosen
    return [offer for region in sorted(regions) for offer in _region_offers(config, region, family, chosen)]


def _region_offers(config: "AWS", region: str, family: str | None, chosen: list[Offer]) -> list[Offer]:
    """One region's live offers (reused for `live_offers_ttl`), else its snapshot offers."""
    key = (PROVIDER, config.profile, region, _endpoint_key(), family)

    def live() -> list[Offer]:
        return live_listing(key, config.live_offers_ttl,
                            lambda: live_offers(session_for(config.profile, region), region, family))

    return live_or_snapshot(f"{PROVIDER} {region}", live, lambda: [o for o in chosen if o.region == region])


def _endpoint_key() -> tuple[str, str]:
    """Cache key part: a different endpoint (a simulator) is a different cloud."""
    return os.environ.get("AWS_ENDPOINT_URL_EC2", ""), os.environ.get("AWS_ENDPOINT_URL", "")


def gpu_instance_types(ec2: Any, family: str | None) -> dict[str, dict[str, Any]]:
    """instance type → accelerator facts from DescribeInstanceTypes' GpuInfo (NVIDIA only)."""
    tax = taxonomy()
    facts: dict[str, dict[str, Any]] = {}
    pages = ec2.get_paginator("describe_instance_types").paginate(
        Filters=[{"Name": "instance-type", "Values": GPU_TYPE_PATTERNS}])
    for page in pages:
        for item in page["InstanceTypes"]:
            gpus = (item.get("GpuInfo") or {}).get("Gpus") or []
            if not gpus or gpus[0].get("Manufacturer") != "NVIDIA":
                continue
            gpu = gpus[0]
            memory_gb = gpu.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024
            variant = tax.lookup(PROVIDER, gpu["Name"], memory_gb)
            name = variant.family if variant else gpu["Name"]
            if family is not None and name != family:
                continue
            facts[item["InstanceType"]] = {
                "accelerator": name,
                "count": int(gpu.get("Count", 1)),
                "form_factor": variant.form_factor if variant else None,
                "accelerator_memory_gb": variant.memory_gb if variant else memory_gb,
                "vcpus": float(item["VCpuInfo"]["DefaultVCpus"]),
                "memory_gb": item["MemoryInfo"]["SizeInMiB"] / 1024,
                "architectures": item.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]),
            }
    return facts


def live_offers(session: Any, region: str, family: str | None) -> list[Offer]:
    """One region's offers from the EC2 API (spot live, on-demand from Pricing or the snapshot)."""
    ec2 = session.client("ec2", region_name=region, config=retry_config(3))
    with aws_errors("list instance types", region):
        types = gpu_instance_types(ec2, family)
        if not types:
            return []
        zones: dict[str, list[str]] = {}
        names = sorted(types)
        for chunk in _chunks(names, 100):
            for page in ec2.get_paginator("describe_instance_type_offerings").paginate(
                    LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": chunk}]):
                for item in page["InstanceTypeOfferings"]:
                    zones.setdefault(item["InstanceType"], []).append(item["Location"])
        spot: dict[tuple[str, str], tuple[float, datetime]] = {}
        for chunk in _chunks([n for n in names if n in zones], 100):
            for page in ec2.get_paginator("describe_spot_price_history").paginate(
                    InstanceTypes=chunk, ProductDescriptions=["Linux/UNIX"], StartTime=datetime.now(timezone.utc)):
                for item in page["SpotPriceHistory"]:
                    key = (item["InstanceType"], item["AvailabilityZone"])
                    stamp = item["Timestamp"]
                    if key not in spot or stamp > spot[key][1]:
                        spot[key] = (float(item["SpotPrice"]), stamp)
    on_demand = on_demand_prices(session, region, [n for n in names if n in zones])
    offers: list[Offer] = []
    for name in names:
        if name not in zones or name not in on_demand:
            continue  # not sold here, or no on-demand price to compare a spot price with
        facts = {k: v for k, v in types[name].items() if k != "architectures"}
        od_price, od_dating = on_demand[name]
        offers += market_offers(od_price, None, markets=("on-demand",), provider=PROVIDER, region=region,
                                instance_type=name, **od_dating, **facts)
        for zone in sorted(zones[name]):  # every listed spot price: the selector rejects 0 or ≥ on-demand
            price, stamp = spot.get((name, zone), (None, None))
            offers += market_offers(od_price, price, markets=("spot",), provider=PROVIDER, region=region, zone=zone,
                                    instance_type=name, price_source=LIVE_SOURCE, price_as_of=stamp, **facts)
    return offers


def on_demand_prices(session: Any, region: str, names: list[str]) -> dict[str, tuple[float, dict[str, Any]]]:
    """On-demand $/h per type and where that price is from: the Pricing API when it answers, else
    the snapshot (its source and date)."""
    found: dict[str, tuple[float, dict[str, Any]]] = {}
    try:
        pricing = session.client("pricing", region_name="us-east-1", config=retry_config(1))
        now = datetime.now(timezone.utc)
        with aws_errors("read on-demand prices from the Pricing API", region):
            for name in names:
                price = pricing_api_price(pricing, region, name)
                if price is not None:
                    found[name] = (price, {"price_source": LIVE_SOURCE, "price_as_of": now})
    except (ProvisioningError, ValueError, KeyError) as error:  # optional: the snapshot stands in, and we say so
        log.warning("aws: the Pricing API gave no on-demand prices for %s (%s: %s); on-demand prices from the "
                    "snapshot", region, type(error).__name__, error)
    for row in prices.rows("aws_prices"):
        if row["market"] == "on-demand" and row["region"] == region and row["instance_type"] in names:
            found.setdefault(row["instance_type"], (float(row["price"]), {"price_source": PRICE_SOURCE,
                                                                          **prices.dating(row)}))
    return found


def pricing_api_price(pricing: Any, region: str, instance_type: str) -> float | None:
    """One instance type's Linux, shared-tenancy on-demand $/h in `region` from the Pricing API's
    `get_products` (each PriceList entry a JSON document: product, terms.OnDemand.*.priceDimensions)."""
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
               "preInstalledSw": "NA", "capacitystatus": "Used"}
    response = pricing.get_products(ServiceCode="AmazonEC2", MaxResults=10, Filters=[
        {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()])
    for item in response.get("PriceList", []):
        price = on_demand_usd(json.loads(item) if isinstance(item, str) else item)
        if price is not None:
            return price
    return None


def on_demand_usd(product: dict[str, Any]) -> float | None:
    """The hourly USD price of one PriceList product's on-demand term; None when it has none above 0."""
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            if dimension.get("unit", "Hrs") != "Hrs":
                continue
            usd = float(dimension.get("pricePerUnit", {}).get("USD", 0) or 0)
            if usd > 0:
                return usd
    return None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
                **prices.dating(row),
                **facts,
            )
        )
    return tuple(offers)
