"""Amazon EC2: offers (live where credentials allow, else the dated snapshot) and a Ray `NodeProvider` on boto3.

Offers. EC2 prices on-demand per region and spot per availability zone, so one instance type
yields one on-demand offer per region (zone left open: the provider picks a subnet) and one spot
offer per zone that has a plausible spot price. With credentials (resolved without the instance
metadata service, so planning never waits on a metadata timeout off EC2), GPU facts come from
DescribeInstanceTypes, availability from DescribeInstanceTypeOfferings and spot prices from
DescribeSpotPriceHistory (`price_source="live:aws"`); on-demand prices from the Pricing API when it
answers, else from the snapshot (`"snapshot:aws"`). Without credentials: the snapshot only.

Nodes. `AWSNodeProvider` is a Ray v1 `NodeProvider` (usable by our launcher and by `ray up` as
`provider: {type: external, module: node_providers.aws.AWSNodeProvider}`). Every fact about a node
lives in EC2 tags, so a re-instantiated provider sees the same nodes. Nodes boot themselves from
user data (`skyward_ray.startup_script`): no SSH, no credential on the node, IMDSv2 only, and when
Ray exits the node runs `shutdown -h now`, which with `InstanceInitiatedShutdownBehavior=terminate`
ends (not stops) the instance. `bootstrap_config` makes a security group (all traffic from itself,
SSH from the driver's address only) and a key pair per cluster; `cleanup_cluster_resources`
deletes them once the instances are terminated.

Errors become the typed errors of `skyward_ray.errors`: capacity → `CapacityError` (the launcher
tries the next offer), credentials/permissions → `AuthError`, account limits → `QuotaError`;
throttling is retried by botocore (standard mode, bounded, with backoff).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import stat
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_USER_NODE_TYPE,
)

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray import startup_script
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError, SpecError
from skyward_ray.offers import Offer

if TYPE_CHECKING:
    from skyward_ray.accelerators import Accelerator
    from skyward_ray.image import Image
    from skyward_ray.providers import AWS

log = logging.getLogger(__name__)

PROVIDER = "aws"
PRICE_SOURCE = "snapshot:aws"
LIVE_SOURCE = "live:aws"
TAG_CLUSTER = "skyward:cluster"
TAG_OFFER = "skyward:offer"
TAG_INDEX = "skyward:node-index"
GPU_TYPE_PATTERNS = ["g*", "p*"]  # every NVIDIA GPU instance family on EC2 (g4dn, g5, g6, g6e, p3, p4d, p5, ...)
DEFAULT_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
GCS_PORT = 6379
LIVE_OFFERS_TTL_S = 120.0
ACTIVE_STATES = ["pending", "running", "stopping", "stopped"]  # billing or restartable: never orphan these

# IMDSv2 (token first). Only reached when SKYWARD_INSTANCE_ID / SKYWARD_NODE_IP are not already set.
_IMDS = "http://169.254.169.254/latest"
_IMDS_TOKEN = f'$(curl -sf --retry 5 -X PUT {_IMDS}/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 600")'


def _imds(path: str) -> str:
    return f'$(curl -sf --retry 5 -H "X-aws-ec2-metadata-token: {_IMDS_TOKEN}" {_IMDS}/meta-data/{path})'


INSTANCE_ID_SHELL = "${SKYWARD_INSTANCE_ID:-" + _imds("instance-id") + "}"
NODE_IP_SHELL = "${SKYWARD_NODE_IP:-" + _imds("local-ipv4") + "}"
LAUNCH_INDEX_SHELL = "${SKYWARD_LAUNCH_INDEX:-" + _imds("ami-launch-index") + "}"

# Keys `AWS(extra={...})` may set, and why each exists.
EXTRA_KEYS = {
    "num_cpus": "CPUs each node advertises to Ray (default: what Ray detects)",
    "num_gpus": "GPUs each node advertises to Ray (default: what Ray detects)",
    "simulate_accelerators": "True: every node advertises the offer's GPUs (count and accelerator_type) to Ray, "
                             "with no hardware behind them (the simulator; CI)",
    "memory": "bytes of memory each node advertises to Ray",
    "object_store_memory": "bytes of object store per node",
    "resources": "extra custom Ray resources per node, e.g. {'accelerator_type:T4': 1}",
    "colocated_nodes": "True when several nodes share one host (the simulator): each node gets its own free ports",
    "ssh_cidr": "source of the SSH rule, e.g. your address /32 (default: no SSH rule, nothing open outside)",
    "driver_security_group": "a security group whose members may reach the nodes (a driver inside the VPC)",
    "key_dir": "where the cluster's private key is kept while the cluster lives (default ~/.skyward_ray/keys)",
    "gcs_port": f"the head's Ray port (default {GCS_PORT})",
    "disk_gb": "root volume size in GB (default: the AMI's)",
    "first_heartbeat_grace": "seconds the head waits for the driver's first heartbeat (default 900)",
}


# -- sessions, credentials and errors ----------------------------------------------------------------
def _retry_config(attempts: int = 8) -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": attempts}, connect_timeout=5, read_timeout=30)


def _session(profile: str | None, region: str | None) -> Any:
    import boto3

    with aws_errors("open an AWS session"):
        return boto3.Session(profile_name=profile, region_name=region)


def credentials_resolve_offline(profile: str | None = None) -> bool:
    """Do credentials resolve without the instance metadata / container endpoints?

    Offer listing uses this: it must be fast and must never send a request off this machine just to
    find out there are no credentials. Provisioning uses the full chain (instance roles included).
    """
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        resolver = session.get_component("credential_provider")
        for name in ("iam-role", "container-role"):
            with contextlib.suppress(Exception):
                resolver.remove(name)
        return resolver.load_credentials() is not None
    except Exception:
        return False


_CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
                   "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "Unsupported", "InsufficientReservedInstanceCapacity"}
_AUTH_CODES = {"UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
               "RequestExpired", "UnrecognizedClientException", "AccessDenied", "AccessDeniedException", "OptInRequired",
               "Blocked", "PendingVerification"}
_QUOTA_CODES = {"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotFleetRequestCountExceeded", "VolumeLimitExceeded",
                "SecurityGroupLimitExceeded", "KeyPairLimitExceeded", "ResourceLimitExceeded"}
_THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}

_CREDENTIALS_FIX = ("Fix: run `aws configure` (or `aws sso login`), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE, or pass sky.AWS(profile=...).")


@contextlib.contextmanager
def aws_errors(what: str, where: str = "") -> Iterator[None]:
    """Turn botocore's exceptions into the typed errors the launcher acts on."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    place = f" ({where})" if where else ""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise AuthError(f"AWS: could not {what}{place}: no usable credentials ({error}). {_CREDENTIALS_FIX}") from None
    except ProfileNotFound as error:
        raise AuthError(f"AWS: {error}. Fix: pass an existing profile to sky.AWS(profile=...) or unset AWS_PROFILE") from None
    except NoRegionError:
        raise SpecError("AWS: no region. Fix: pass sky.AWS(region='us-east-1') or set AWS_DEFAULT_REGION") from None
    except ClientError as error:
        info = error.response.get("Error", {})
        code, message = info.get("Code", "?"), info.get("Message", str(error))
        text = f"AWS: could not {what}{place}: {code}: {message}"
        if code in _CAPACITY_CODES:
            raise CapacityError(text) from None
        if code in _AUTH_CODES:
            raise AuthError(f"{text}. The credentials in use lack a permission or are invalid. {_CREDENTIALS_FIX}") from None
        if code in _QUOTA_CODES:
            raise QuotaError(f"{text}. Fix: request a higher limit in the Service Quotas console, or pick a smaller "
                             "instance or fewer nodes") from None
        if code in _THROTTLE_CODES:
            raise ProvisioningError(f"{text} (still throttled after botocore's retries with backoff)") from None
        raise ProvisioningError(text) from None
    except BotoCoreError as error:
        raise ProvisioningError(f"AWS: could not {what}{place}: {error}") from None


def check_credentials(session: Any) -> str:
    """One cheap call that proves the credentials work; returns the account id."""
    with aws_errors("check the credentials (sts:GetCallerIdentity)"):
        return session.client("sts", config=_retry_config(3)).get_caller_identity()["Account"]


# -- offers ----------------------------------------------------------------------------------------------
def list_offers(config: "AWS", accelerator: "Accelerator | None") -> list[Offer]:
    """Offers in the config's region(s): live where credentials resolve, the snapshot elsewhere."""
    snapshot = _snapshot_offers(prices.snapshot_version("aws_instance_types"), prices.snapshot_version("aws_prices"))
    regions = set(config.regions or ()) | ({config.region} if config.region else set())
    family = accelerator.name if accelerator is not None else None
    chosen = [o for o in snapshot if (not regions or o.region in regions) and (family is None or o.accelerator == family)]
    live_regions = sorted(regions) if regions else []
    if not live_regions or not credentials_resolve_offline(config.profile):
        return chosen
    result: list[Offer] = []
    for region in live_regions:
        try:
            live = _live_offers_cached(config.profile, region, _endpoint_key(), family)
        except Exception as error:  # live listing is a refinement: the snapshot stays the answer on failure
            log.info("aws: live offers for %s unavailable (%s); using the snapshot", region, error)
            live = None
        result.extend(live if live is not None else [o for o in chosen if o.region == region])
    return result


def _endpoint_key() -> tuple[str, str]:
    """Cache key part: a different endpoint (a simulator) is a different cloud."""
    return os.environ.get("AWS_ENDPOINT_URL_EC2", ""), os.environ.get("AWS_ENDPOINT_URL", "")


_LIVE_CACHE: dict[tuple[Any, ...], tuple[float, list[Offer]]] = {}
_LIVE_LOCK = threading.Lock()


def _live_offers_cached(profile: str | None, region: str, endpoint: tuple[str, str], family: str | None) -> list[Offer]:
    key = (profile, region, endpoint, family)
    with _LIVE_LOCK:
        hit = _LIVE_CACHE.get(key)
        if hit and time.monotonic() - hit[0] < LIVE_OFFERS_TTL_S:
            return hit[1]
    offers = live_offers(_session(profile, region), region, family)
    with _LIVE_LOCK:
        _LIVE_CACHE[key] = (time.monotonic(), offers)
    return offers


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


def plausible_spot(price: float | None, on_demand: float | None) -> bool:
    """A spot price is a discount only when it is > 0 and below on-demand (DESIGN §2.1)."""
    return price is not None and on_demand is not None and 0 < price < on_demand


def live_offers(session: Any, region: str, family: str | None) -> list[Offer]:
    """One region's offers from the EC2 API (spot live, on-demand from Pricing or the snapshot)."""
    ec2 = session.client("ec2", region_name=region, config=_retry_config(3))
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
    on_demand = _on_demand_prices(session, region, [n for n in names if n in zones])
    offers: list[Offer] = []
    for name in names:
        if name not in zones or name not in on_demand:
            continue  # not sold here, or no on-demand price to compare a spot price with
        facts = {k: v for k, v in types[name].items() if k != "architectures"}
        od_price, od_source, od_as_of = on_demand[name]
        offers.append(Offer(provider=PROVIDER, market="on-demand", price=od_price, on_demand_price=od_price,
                            spot_price=None, region=region, zone=None, instance_type=name, price_source=od_source,
                            price_as_of=od_as_of, **facts))
        for zone in sorted(zones[name]):
            price, stamp = spot.get((name, zone), (None, None))
            if not plausible_spot(price, od_price):
                continue
            offers.append(Offer(provider=PROVIDER, market="spot", price=price, on_demand_price=od_price,
                                spot_price=price, region=region, zone=zone, instance_type=name,
                                price_source=LIVE_SOURCE, price_as_of=stamp, **facts))
    return offers


def _on_demand_prices(session: Any, region: str, names: list[str]) -> dict[str, tuple[float, str, datetime | None]]:
    """On-demand $/h per type: the Pricing API when it answers, else the snapshot (recorded in the source)."""
    found: dict[str, tuple[float, str, datetime | None]] = {}
    try:
        pricing = session.client("pricing", region_name="us-east-1", config=_retry_config(1))
        now = datetime.now(timezone.utc)
        for name in names:
            price = _pricing_api_price(pricing, region, name)
            if price is not None:
                found[name] = (price, LIVE_SOURCE, now)
    except Exception as error:  # the Pricing API is optional (and absent from simulators)
        log.info("aws: Pricing API unavailable (%s); on-demand prices from the snapshot", type(error).__name__)
    for row in prices.rows("aws_prices"):
        if row["market"] == "on-demand" and row["region"] == region and row["instance_type"] in names:
            found.setdefault(row["instance_type"], (float(row["price"]), PRICE_SOURCE, prices.as_of(row["as_of"])))
    return found


def _pricing_api_price(pricing: Any, region: str, instance_type: str) -> float | None:
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
               "preInstalledSw": "NA", "capacitystatus": "Used"}
    response = pricing.get_products(ServiceCode="AmazonEC2", MaxResults=10, Filters=[
        {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()])
    for item in response.get("PriceList", []):
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
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
                price_as_of=prices.as_of(row["as_of"]),
                **facts,
            )
        )
    return tuple(offers)


# -- the provider config (what a cluster YAML's `provider:` section holds) -----------------------------
def offer_label(instance_type: str, where: str, market: str) -> str:
    """A Ray-label-safe name of the offer a node was bought from, e.g. g4dn.xlarge.us-east-1a.spot."""
    return f"{instance_type}.{where}.{market}"


def build_provider_config(config: "AWS", cluster_name: str, auth_token: str, nodes: int,
                          accelerator: "Accelerator | None", heartbeat_grace: float,
                          offer: Offer | None = None, image: "Image | None" = None) -> dict[str, Any]:
    """The `provider:` section for one cluster, bought from `offer` (instance type, zone, market)."""
    unknown = sorted(set(config.extra) - set(EXTRA_KEYS))
    if unknown:
        allowed = "\n".join(f"  {k}: {v}" for k, v in EXTRA_KEYS.items())
        raise SpecError(f"sky.AWS(extra=...): unknown key(s) {', '.join(unknown)}. Allowed:\n{allowed}")
    if offer is None:
        raise SpecError("AWS: build_provider_config needs the offer to buy (instance type, zone, market)")
    region = offer.region or config.region
    if not region:
        raise SpecError("AWS: no region. Fix: pass sky.AWS(region='us-east-1')")
    extra = dict(config.extra)
    resources = dict(extra.get("resources") or {})
    num_gpus = extra.get("num_gpus")
    if extra.get("simulate_accelerators") and offer.accelerator and offer.count:
        num_gpus = offer.count if num_gpus is None else num_gpus
        resources.setdefault(f"accelerator_type:{offer.accelerator}", 1.0)
    return {
        "type": "external",
        "module": "node_providers.aws.AWSNodeProvider",
        "region": region,
        "zone": offer.zone,
        "profile": config.profile,
        "instance_type": offer.instance_type,
        "market": offer.market,
        "offer": offer_label(offer.instance_type, offer.zone or region, offer.market),
        "accelerator": offer.accelerator or (accelerator.name if accelerator else None),
        "accelerator_count": offer.count,
        "ami": config.ami,
        "vpc_id": config.vpc_id,
        "subnet_id": config.subnet_id,
        "auth_token": auth_token,
        "gcs_port": int(extra.get("gcs_port", GCS_PORT)),
        "python": "python3",
        "pip": list(image.pip) if image else [],
        "apt": list(image.apt) if image else [],
        "num_cpus": extra.get("num_cpus"),
        "num_gpus": num_gpus,
        "memory": extra.get("memory"),
        "object_store_memory": extra.get("object_store_memory"),
        "resources": resources,
        "colocated_nodes": bool(extra.get("colocated_nodes", False)),
        "ssh_cidr": extra.get("ssh_cidr"),
        "driver_security_group": extra.get("driver_security_group"),
        "key_dir": extra.get("key_dir"),
        "disk_gb": extra.get("disk_gb"),
        "heartbeat_grace": heartbeat_grace,
        "first_heartbeat_grace": float(extra.get("first_heartbeat_grace", 900.0)),
        "env": {},
    }


def driver_endpoint(provider: "AWSNodeProvider", head_id: str) -> tuple[str, str]:
    """A direct driver: the head's private IP and Ray port; this process's node IP is the head's.

    That works where this process shares the head's network (the simulator, a driver on the head).
    A laptop outside the VPC needs Ray Client through an SSH tunnel: a later issue.
    """
    ip = provider.internal_ip(head_id)
    return f"{ip}:{provider.provider_config.get('gcs_port', GCS_PORT)}", ip


def validate_image(config: "AWS", image: "Image") -> None:
    """Cloud nodes install `pip`/`apt` at boot; only a Python other than the driver's is refused."""
    here = "%d.%d.%d" % sys.version_info[:3]
    if image.python and not here.startswith(image.python):
        raise SpecError(
            f"Image.python={image.python!r}: a Ray driver needs the nodes on its own Python ({here}); "
            f"drop python= or run your script with Python {image.python}"
        )


def driver_runtime_env(config: "AWS", image: "Image") -> dict[str, Any]:
    """Nothing: the startup script installs `Image.pip`/`apt` before Ray starts on every node."""
    return {}


# -- bootstrap helpers (prepare) -----------------------------------------------------------------------
def _tag_spec(resource: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource, "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()]}]


def _cluster_filter(cluster_name: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_name]}]


def choose_subnet(ec2: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """The subnet to launch into: `subnet_id` if given, else the VPC's (default VPC's) subnet in the zone."""
    if cfg.get("subnet_id"):
        subnets = ec2.describe_subnets(SubnetIds=[cfg["subnet_id"]])["Subnets"]
        return subnets[0]
    vpc_id = cfg.get("vpc_id")
    if not vpc_id:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ProvisioningError(
                f"AWS: region {cfg['region']} has no default VPC. Fix: pass sky.AWS(vpc_id=..., subnet_id=...)")
        vpc_id = vpcs[0]["VpcId"]
    filters = [{"Name": "vpc-id", "Values": [vpc_id]}]
    if cfg.get("zone"):
        filters.append({"Name": "availability-zone", "Values": [cfg["zone"]]})
    subnets = ec2.describe_subnets(Filters=filters)["Subnets"]
    if not subnets:
        where = f"zone {cfg['zone']}" if cfg.get("zone") else "any zone"
        raise CapacityError(f"AWS: VPC {vpc_id} has no subnet in {where}; this offer cannot be placed there")
    return max(subnets, key=lambda s: (s.get("DefaultForAz", False), s.get("AvailableIpAddressCount", 0)))


def default_ami(ec2: Any, architecture: str = "x86_64") -> str:
    """The newest AWS Deep Learning Base AMI (NVIDIA driver, Ubuntu 22.04) for this architecture."""
    images = ec2.describe_images(Owners=["amazon"], Filters=[
        {"Name": "name", "Values": [DEFAULT_AMI_NAME]},
        {"Name": "state", "Values": ["available"]},
        {"Name": "architecture", "Values": [architecture]},
    ])["Images"]
    if not images:
        raise ProvisioningError(
            f"AWS: no image named {DEFAULT_AMI_NAME!r} ({architecture}) in this region. "
            "Fix: pass sky.AWS(ami='ami-...') with an image that has the NVIDIA driver and python3")
    return max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"]


def _architecture(ec2: Any, instance_type: str) -> str:
    info = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    archs = info[0].get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]) if info else ["x86_64"]
    return "x86_64" if "x86_64" in archs else archs[0]


def _security_group(ec2: Any, cluster_name: str, vpc_id: str, ssh_cidr: str | None,
                    driver_group: str | None) -> str:
    """The cluster's group: all traffic from its own members, SSH from the driver only. Reused if present."""
    existing = ec2.describe_security_groups(Filters=_cluster_filter(cluster_name) + [
        {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
    if existing:
        return existing[0]["GroupId"]
    group_id = ec2.create_security_group(
        GroupName=f"skyward-{cluster_name}", VpcId=vpc_id,
        Description=f"skyward_ray cluster {cluster_name}: nodes talk to each other; SSH from the driver only",
        TagSpecifications=_tag_spec("security-group", {TAG_CLUSTER: cluster_name, "Name": f"skyward-{cluster_name}"}),
    )["GroupId"]
    rules: list[dict[str, Any]] = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
    if driver_group:
        rules.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": driver_group}]})
    if ssh_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": ssh_cidr, "Description": "SSH from the skyward_ray driver"}]})
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules)
    return group_id


def _key_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg.get("key_dir") or Path.home() / ".skyward_ray" / "keys")


def _key_pair(ec2: Any, cluster_name: str, cfg: dict[str, Any]) -> str:
    """A key pair for this cluster only; its private half is kept (0600) while the cluster lives."""
    name = f"skyward-{cluster_name}"
    with contextlib.suppress(Exception):
        if ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"]:
            return name
    material = ec2.create_key_pair(KeyName=name, KeyType="ed25519",
                                   TagSpecifications=_tag_spec("key-pair", {TAG_CLUSTER: cluster_name}))["KeyMaterial"]
    directory = _key_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(material)
    return name


def delete_cluster_resources(ec2: Any, cluster_name: str, cfg: dict[str, Any], timeout: float = 180.0) -> None:
    """Delete the cluster's security groups and key pair (found by tag/name), retrying while ENIs detach."""
    from botocore.exceptions import ClientError

    groups = ec2.describe_security_groups(Filters=_cluster_filter(cluster_name))["SecurityGroups"]
    deadline = time.monotonic() + timeout
    for group in groups:
        while True:
            try:
                ec2.delete_security_group(GroupId=group["GroupId"])
                break
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code == "InvalidGroup.NotFound":
                    break
                if code != "DependencyViolation" or time.monotonic() > deadline:
                    raise
                time.sleep(3)
    name = f"skyward-{cluster_name}"
    with contextlib.suppress(ClientError):
        ec2.delete_key_pair(KeyName=name)
    with contextlib.suppress(OSError):
        (_key_dir(cfg) / f"{name}.pem").unlink()


# -- the node provider ---------------------------------------------------------------------------------
class AWSNodeProvider(NodeProvider):
    """Ray autoscaler v1 `NodeProvider` on EC2. Thread-safe; all state in EC2 tags."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.session = _session(provider_config.get("profile"), provider_config["region"])
        self.ec2 = self.session.client("ec2", config=_retry_config())
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._reserved_indexes: set[int] = set()
        self._head_ip: str | None = None

    # -- prepare / teardown ----------------------------------------------------------------------
    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        """Credentials, subnet, AMI, security group, key pair. All or nothing: a failure removes what it made."""
        cfg = cluster_config["provider"]
        cluster_name = cluster_config["cluster_name"]
        session = _session(cfg.get("profile"), cfg["region"])
        check_credentials(session)
        ec2 = session.client("ec2", config=_retry_config())
        cfg.setdefault("auth_token", secrets.token_hex(32))
        cfg.setdefault("gcs_port", GCS_PORT)
        if not cfg.get("instance_type"):  # a cluster YAML names it per node type
            types = [t.get("node_config", {}).get("InstanceType") for t in
                     cluster_config.get("available_node_types", {}).values()]
            cfg["instance_type"] = next((t for t in types if t), None)
            if not cfg["instance_type"]:
                raise SpecError("AWS: no instance type; set provider.instance_type or node_config.InstanceType")
        try:
            with aws_errors("prepare the network, image and key pair", cfg["region"]):
                subnet = choose_subnet(ec2, cfg)
                if not cfg.get("ami"):
                    cfg["ami"] = default_ami(ec2, _architecture(ec2, cfg["instance_type"]))
                # No SSH rule unless asked for: nodes boot themselves, so by default nothing at all is
                # open to the outside. (The laptop-over-SSH driver will pass the driver's own /32.)
                ssh_cidr = cfg.get("ssh_cidr")
                cfg["security_group_id"] = _security_group(ec2, cluster_name, subnet["VpcId"], ssh_cidr,
                                                           cfg.get("driver_security_group"))
                cfg["key_name"] = _key_pair(ec2, cluster_name, cfg)
        except BaseException:
            with contextlib.suppress(Exception):
                delete_cluster_resources(ec2, cluster_name, cfg, timeout=30)
            raise
        cfg.update(subnet_id=subnet["SubnetId"], vpc_id=subnet["VpcId"], zone=subnet["AvailabilityZone"])
        return cluster_config

    def cleanup_cluster_resources(self) -> None:
        """Once every instance is terminated (waits for it), delete the security group and key pair."""
        with aws_errors("remove the cluster's security group and key pair", self.cluster_name):
            left = self._active_ids({})
            if left:
                self.terminate_nodes(left)
            ids = [i["InstanceId"] for i in self._describe(self._cluster_filters({}, states=None))]
            if ids:
                self.ec2.get_waiter("instance_terminated").wait(
                    InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
            delete_cluster_resources(self.ec2, self.cluster_name, self.provider_config)

    # -- queries -----------------------------------------------------------------------------------
    def _cluster_filters(self, tag_filters: dict[str, str], states: list[str] | None = ACTIVE_STATES
                         ) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{TAG_RAY_CLUSTER_NAME}", "Values": [self.cluster_name]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tag_filters.items()]
        if states:
            filters.append({"Name": "instance-state-name", "Values": states})
        return filters

    def _describe(self, filters: list[dict[str, Any]] | None = None, ids: list[str] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if filters:
            kwargs["Filters"] = filters
        if ids:
            kwargs["InstanceIds"] = ids
        found = []
        with aws_errors("describe instances", self.cluster_name):
            for page in self.ec2.get_paginator("describe_instances").paginate(**kwargs):
                for reservation in page["Reservations"]:
                    found.extend(reservation["Instances"])
        now = time.monotonic()
        with self._lock:
            for instance in found:
                self._cache[instance["InstanceId"]] = (now, instance)
        return found

    def _instance(self, node_id: str, max_age: float = 1.0) -> dict[str, Any] | None:
        """One instance's description, at most `max_age` seconds old (launchers poll: spare the API)."""
        with self._lock:
            hit = self._cache.get(node_id)
        if hit and time.monotonic() - hit[0] < max_age:
            return hit[1]
        try:
            found = self._describe(ids=[node_id])
        except ProvisioningError as error:
            if "InvalidInstanceID" in str(error):  # never existed, or long gone
                return None
            raise
        return found[0] if found else None

    def _active_ids(self, tag_filters: dict[str, str]) -> list[str]:
        instances = self._describe(self._cluster_filters(tag_filters))
        return [i["InstanceId"] for i in sorted(instances, key=lambda i: int(_tags(i).get(TAG_INDEX, 0)))]

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return self._active_ids(tag_filters)

    def is_running(self, node_id: str) -> bool:
        instance = self._instance(node_id)
        return instance is not None and instance["State"]["Name"] == "running"

    def is_terminated(self, node_id: str) -> bool:
        instance = self._instance(node_id)
        return instance is None or instance["State"]["Name"] not in ("pending", "running")

    def node_tags(self, node_id: str) -> dict[str, str]:
        instance = self._instance(node_id)
        return _tags(instance) if instance else {}

    def internal_ip(self, node_id: str) -> str:
        instance = self._instance(node_id, max_age=3600)  # an instance keeps its private address
        return instance.get("PrivateIpAddress", "") if instance else ""

    def external_ip(self, node_id: str) -> str | None:
        instance = self._instance(node_id)
        return instance.get("PublicIpAddress") if instance else None

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with aws_errors("tag an instance", node_id):
            self.ec2.create_tags(Resources=[node_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        with self._lock:
            self._cache.pop(node_id, None)

    # -- create / terminate ------------------------------------------------------------------------
    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int,
        resources: dict[str, float], labels: dict[str, str],
    ) -> dict[str, Any]:
        """One `run_instances` call for `count` nodes (MinCount=MaxCount), booting from user data."""
        cfg = self.provider_config
        is_head = tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD
        head_ip = None if is_head else self._find_head_ip()
        base = self._reserve_indexes(is_head, labels, count)
        try:
            instance_type = node_config.get("InstanceType") or cfg["instance_type"]
            market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType") or cfg.get("market", "on-demand")
            node_tags = {**tags, TAG_CLUSTER: self.cluster_name, TAG_RAY_CLUSTER_NAME: self.cluster_name,
                         TAG_OFFER: cfg.get("offer") or offer_label(instance_type, cfg.get("zone") or cfg["region"], market),
                         TAG_INDEX: str(base)}
            node_tags.setdefault("Name", tags.get(TAG_RAY_NODE_NAME, f"{self.cluster_name}-{base}"))
            boot = self._boot(node_tags, labels, resources, base, count, is_head, head_ip, market)
            params: dict[str, Any] = {
                "ImageId": node_config.get("ImageId") or cfg["ami"],
                "InstanceType": instance_type,
                "MinCount": count,
                "MaxCount": count,
                "SubnetId": node_config.get("SubnetId") or cfg["subnet_id"],
                "SecurityGroupIds": [cfg["security_group_id"]],
                "KeyName": cfg["key_name"],
                "UserData": startup_script.render(boot),
                "InstanceInitiatedShutdownBehavior": "terminate",
                "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
                "TagSpecifications": _tag_spec("instance", node_tags) + _tag_spec("volume", {
                    TAG_CLUSTER: self.cluster_name, TAG_RAY_CLUSTER_NAME: self.cluster_name}),
            }
            if market == "spot":
                params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                    "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
            if cfg.get("disk_gb"):
                params["BlockDeviceMappings"] = [{"DeviceName": "/dev/sda1", "Ebs": {
                    "VolumeSize": int(cfg["disk_gb"]), "VolumeType": "gp3", "DeleteOnTermination": True}}]
            where = f"{instance_type} {market} in {cfg.get('zone') or cfg['region']}"
            with aws_errors(f"launch {count} instance(s)", where):
                instances = self.ec2.run_instances(**params)["Instances"]
            if count > 1:  # each instance learns its index from its launch index; say it in its tags too
                for instance in instances:
                    self.set_node_tags(instance["InstanceId"], {TAG_INDEX: str(base + instance.get("AmiLaunchIndex", 0))})
        finally:
            with self._lock:
                self._reserved_indexes -= set(range(base, base + count))
        now = time.monotonic()
        with self._lock:
            for instance in instances:
                self._cache[instance["InstanceId"]] = (now, instance)
        return {i["InstanceId"]: {"instance_id": i["InstanceId"], "ip": i.get("PrivateIpAddress")} for i in instances}

    def _find_head_ip(self) -> str:
        if self._head_ip:
            return self._head_ip
        heads = self._describe(self._cluster_filters({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}, states=["pending", "running"]))
        if not heads or not heads[0].get("PrivateIpAddress"):
            raise ProvisioningError(f"AWS: cluster {self.cluster_name} has no running head node to join workers to")
        self._head_ip = heads[0]["PrivateIpAddress"]
        return self._head_ip

    def _reserve_indexes(self, is_head: bool, labels: dict[str, str], count: int) -> int:
        """The first node index of this request: given by the caller, 0 for the head, else the next free ones."""
        with self._lock:
            if "skyward/node-index" in labels:
                base = int(labels["skyward/node-index"])
            elif is_head:
                base = 0
            else:
                used = {int(_tags(i).get(TAG_INDEX, -1)) for i in self._describe(self._cluster_filters({}))}
                used |= self._reserved_indexes | {0}
                base = next(b for b in itertools.count(1) if not used & set(range(b, b + count)))
            self._reserved_indexes |= set(range(base, base + count))
            return base

    def _boot(self, tags: dict[str, str], labels: dict[str, str], resources: dict[str, float], base: int,
              count: int, is_head: bool, head_ip: str | None, market: str) -> startup_script.NodeBoot:
        cfg = self.provider_config
        accelerator = cfg.get("accelerator") or ""
        node_labels = {**labels, "skyward/provider": PROVIDER, "skyward/offer": tags[TAG_OFFER]}
        node_labels.pop("skyward/node-index", None)
        if accelerator:
            node_labels.setdefault("skyward/accelerator", accelerator)
        shell_labels = {"skyward/instance-id": "$SKYWARD_INSTANCE_ID", "skyward/node-index": "$SKYWARD_NODE_INDEX"}
        index_shell = str(base) if count == 1 else f"$(({base} + {LAUNCH_INDEX_SHELL}))"
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        return startup_script.NodeBoot(
            role="head" if is_head else "worker",
            cluster_name=self.cluster_name,
            auth_token=cfg["auth_token"],
            gcs_port=int(cfg.get("gcs_port", GCS_PORT)),
            head_ip=head_ip,
            python=cfg.get("python", "python3"),
            pip=list(cfg.get("pip") or []),
            apt=list(cfg.get("apt") or []),
            env={**(cfg.get("env") or {}), "SKYWARD_PROVIDER": PROVIDER, "SKYWARD_ACCELERATOR": accelerator,
                 "SKYWARD_ACCELERATOR_COUNT": str(cfg.get("accelerator_count") or 0),
                 "SKYWARD_SPOT": "1" if market == "spot" else "0"},
            shell_env={"SKYWARD_NODE_INDEX": index_shell},
            node_type_name=tags.get(TAG_RAY_USER_NODE_TYPE, "skyward.head" if is_head else "skyward.worker"),
            labels=node_labels,
            shell_labels=shell_labels,
            num_cpus=resources.get("CPU", cfg.get("num_cpus")),
            num_gpus=resources.get("GPU", cfg.get("num_gpus")),
            memory=int(resources["memory"]) if "memory" in resources else cfg.get("memory"),
            object_store_memory=cfg.get("object_store_memory"),
            resources={**(cfg.get("resources") or {}), **custom},
            market_type=market,
            region=cfg["region"],
            zone=cfg.get("zone"),
            instance_id_shell=INSTANCE_ID_SHELL,
            node_ip_shell=NODE_IP_SHELL,
            extra_ray_args=startup_script.colocated_port_args(is_head) if cfg.get("colocated_nodes") else [],
            heartbeat_grace=float(cfg.get("heartbeat_grace", 30.0)),
            first_heartbeat_grace=float(cfg.get("first_heartbeat_grace", 900.0)),
            head_wait_timeout=float(cfg.get("first_heartbeat_grace", 900.0)),
            shutdown_command="shutdown -h now",
        )

    def get_command_runner(self, log_prefix: str, node_id: str, auth_config: dict[str, Any], cluster_name: str,
                           process_runner: Any, use_internal_ip: bool,
                           docker_config: dict[str, Any] | None = None) -> "UserDataCommandRunner":
        """For `ray up`: nodes set themselves up from user data, so there is nothing to run over SSH."""
        return UserDataCommandRunner(node_id)

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        self.terminate_nodes([node_id])
        return None

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        """Terminate (never stop): a stopped instance would keep its disk billing and its tags."""
        ids = sorted(set(node_ids))
        if not ids:
            return None
        try:
            with aws_errors("terminate instances", ", ".join(ids)):
                self.ec2.terminate_instances(InstanceIds=ids)
        except ProvisioningError as error:
            if "InvalidInstanceID" not in str(error):
                raise
            for node_id in ids:  # one unknown id fails the whole call: end the others one by one
                with contextlib.suppress(ProvisioningError):
                    with aws_errors("terminate an instance", node_id):
                        self.ec2.terminate_instances(InstanceIds=[node_id])
        with self._lock:
            for node_id in ids:
                self._cache.pop(node_id, None)
        return None


class UserDataCommandRunner:
    """What Ray's cluster launcher gets instead of SSH: a runner that runs nothing, and says so.

    A node of this provider installs the image and starts Ray from its user data, so the YAML's
    `setup_commands`/`*_start_ray_commands`/`file_mounts` are not used. Commands are recorded (and
    logged once) so nobody mistakes them for having run.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.skipped: list[str] = []

    def run(self, cmd: str | None = None, timeout: int = 120, exit_on_fail: bool = False,
            port_forward: Any = None, with_output: bool = False, environment_variables: Any = None,
            run_env: str = "auto", ssh_options_override_ssh_key: str = "", shutdown_after_run: bool = False) -> Any:
        if cmd:
            self.skipped.append(cmd)
            log.debug("aws: %s boots from user data; not running %r", self.node_id, cmd)
        return b"" if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: Any = None) -> None:
        self.skipped.append(f"rsync-up {source} {target}")

    def run_rsync_down(self, source: str, target: str, options: Any = None) -> None:
        self.skipped.append(f"rsync-down {source} {target}")

    def remote_shell_command_str(self) -> str:
        return f"# {self.node_id} has no SSH session from skyward_ray; use the AWS console or SSM\n"

    def run_init(self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool) -> bool | None:
        return None


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
