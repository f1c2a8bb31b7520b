"""Vast.ai marketplace offers: live `search_offers` when an API key is configured (cached for
`live_offers_ttl` seconds), the dated snapshot when there is none.

Each row is one host's GPUs at a price for the whole bundle (`dph_total`), plus an interruptible
floor (`min_bid`, where listed) that we treat as the spot price. Rows are filtered by the config's
reliability floor and verification where the row lists them, as `search_offers` would. The row's
`instance_type` (an ask id in a live listing; SkyPilot's instance-type name in the shipped
snapshot) identifies the offer, so an ask listed under two gpu_names is one offer.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from catalog import prices
from catalog.taxonomy import taxonomy
from skyward_ray.planning.offer_source import fingerprint, live_listing, live_or_snapshot, market_offers
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.vastai.config import VastAI
    from skyward_ray.planning.accelerators import Accelerator

PROVIDER = "vastai"
PRICE_SOURCE = "snapshot:vastai"
LIVE_SOURCE = "live:vastai"
# Every Vast.ai instance is a container on some host's Docker bridge: instances on different hosts
# reach each other only through NAT'd public ports, never on all ports as Ray needs. Vast.ai's
# overlay networks (machines of one physical cluster) are not created by this provider yet.
SINGLE_NODE_REASON = ("Vast.ai instances on different hosts share no private network (Ray needs every port "
                      "between nodes); skyward_ray does not create Vast.ai overlay networks yet")


def list_offers(config: "VastAI", accelerator: "Accelerator | None") -> list[Offer]:
    """Live asks when an API key is configured, else the snapshot's."""
    family = accelerator.name if accelerator is not None else None
    return live_or_snapshot(PROVIDER, (lambda: live_offers(config, family)) if config.resolved_api_key() else None,
                            lambda: snapshot_offers(config, family))


def snapshot_offers(config: "VastAI", family: str | None) -> list[Offer]:
    """Snapshot asks at or above `min_reliability` (verified only if asked), for the family asked.

    A row that lists no reliability or verification (the SkyPilot-derived snapshot has neither) is
    not filtered on it: the snapshot cannot tell.
    """
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
        reliability = prices.number(row["reliability"])  # None: not listed
        verified = {"verified": True, "unverified": False}.get(row["verification"])  # None: not listed
        pair = market_offers(
            prices.number(row["dph_total"]), prices.number(row["min_bid"]),
            provider=PROVIDER,
            accelerator=variant.family if variant else row["gpu_name"],
            count=count,
            form_factor=variant.form_factor if variant else None,
            accelerator_memory_gb=variant.memory_gb if variant else gpu_memory_gb,
            region=region(row["geolocation"]),
            instance_type=row["instance_type"],
            vcpus=prices.number(row["vcpus"]),
            memory_gb=prices.number(row["memory_gib"]),
            price_source=PRICE_SOURCE,
            **prices.dating(row),
            single_node_reason=SINGLE_NODE_REASON,
        )
        offers += [(offer, reliability, verified) for offer in pair]
    return tuple(offers)


# -- live offers -------------------------------------------------------------------------------------


def search_query(config: "VastAI") -> dict[str, Any]:
    """The `search_offers` filters: rentable asks on hosts at the config's reliability (and
    verification), with at least one direct port (skyward's sshd is reached on one)."""
    query: dict[str, Any] = {
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "reliability": {"gte": config.min_reliability},
        "direct_port_count": {"gte": 1},
        "num_gpus": {"gte": 1},
    }
    if config.verified_only:
        query["verified"] = {"eq": True}
    return query


def _listing_key(config: "VastAI") -> tuple[Any, ...]:
    return (PROVIDER, config.server_url, fingerprint(config.resolved_api_key()), config.min_reliability,
            config.verified_only)


def search_rows(config: "VastAI", fresh: bool = False) -> list[dict[str, Any]]:
    """The raw ask rows `search_offers` returns, reused for `live_offers_ttl` seconds unless `fresh`."""
    from node_providers.vastai.api import client, vast_errors
    from node_providers.vastai.pacing import paced

    def search() -> list[dict[str, Any]]:
        with vast_errors("search offers"):
            sdk = client(config)
            rows = paced(config, "search", lambda: sdk.search_offers(
                query=search_query(config), type="on-demand", order="dph_total", limit=1000,
                storage=config.disk_gb, no_default=True))
        rows = [r for r in rows if isinstance(r, dict)]
        with _LISTED_LOCK:
            if len(_LISTED) > 50_000:
                _LISTED.clear()
            _LISTED.update({(config.server_url, str(r.get("id"))): r for r in rows})
        return rows

    return live_listing(_listing_key(config), config.live_offers_ttl, search, fresh=fresh)


# ask id → the row it was last listed with in this process, kept past later listings that lack it:
# the fallback for a cluster whose tags do not say the price it bought (a hand-made ClusterParams)
_LISTED: dict[tuple[str, str], dict[str, Any]] = {}
_LISTED_LOCK = threading.Lock()


def listed_row(config: "VastAI", ask_id: str) -> dict[str, Any] | None:
    """The row an ask was last listed with in this process (None if it never was)."""
    with _LISTED_LOCK:
        return _LISTED.get((config.server_url, str(ask_id)))


def row_offers(row: dict[str, Any], now: datetime | None = None) -> list[Offer]:
    """One ask row → its on-demand offer and, where it lists a minimum bid, its interruptible (spot) offer."""
    tax = taxonomy()
    count = int(row.get("num_gpus") or 0)
    gpu_memory_gb = float(row.get("gpu_ram") or 0) / 1024
    variant = tax.lookup(PROVIDER, row.get("gpu_name") or "", gpu_memory_gb)
    return market_offers(
        _number(row.get("dph_total")), _number(row.get("min_bid")),
        provider=PROVIDER,
        accelerator=variant.family if variant else row.get("gpu_name"),
        count=count,
        form_factor=variant.form_factor if variant else None,
        accelerator_memory_gb=variant.memory_gb if variant else gpu_memory_gb,
        region=region(row.get("geolocation")),
        instance_type=str(row["id"]),
        vcpus=_number(row.get("cpu_cores_effective")),
        memory_gb=(_number(row.get("cpu_ram")) or 0) / 1024 or None,
        price_source=LIVE_SOURCE,
        price_as_of=now or datetime.now(timezone.utc),
        single_node_reason=SINGLE_NODE_REASON,
    )


def live_offers(config: "VastAI", family: str | None) -> list[Offer]:
    """Offers from `search_offers` (a failure is the caller's: the snapshot answers then)."""
    now = datetime.now(timezone.utc)
    offers = [o for row in search_rows(config) for o in row_offers(row, now)]
    return [o for o in offers if family is None or o.accelerator == family]


def region(geolocation: Any) -> str | None:
    """Vast's `geolocation` ("Texas, US") as a region name safe in Ray labels and offer labels ("Texas-US")."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(geolocation or "")).strip("-")
    return text or None


def _number(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
