"""`sky.plan(...)`: a dry run of `sky.Compute` — which offer would be bought, and why.

It builds the spec list from the same arguments `Compute` takes, asks each spec's provider for
offers (snapshot prices when there is no live API or no credentials), ranks them with the pure
selector, and, when nothing fits, raises `NoOffersError` that says per provider why not and what
does exist nearby. Nothing is provisioned.
"""

from __future__ import annotations

import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Sequence

from skyward_ray.errors import NoOffersError, SpecError, StalePricesWarning
from skyward_ray.planning.accelerators import Accelerator, parse_accelerator
from skyward_ray.planning.nodes import as_nodes
from skyward_ray.planning.offer_table import place, price_age
from skyward_ray.planning.offers import Offer, Plan
from skyward_ray.planning.providers import ProviderConfig, provider_classes, provider_from_name
from skyward_ray.planning.selector import select
from skyward_ray.planning.spec import ALLOCATIONS, Spec

DEFAULT_ALLOCATION = "spot-if-available"
#: a plan chosen from snapshot prices older than this many days warns (`StalePricesWarning`)
STALE_PRICE_DAYS = 30


def _providers(provider: Any) -> list[Any]:
    """provider= may be one config, a name ('aws' or 'aws,runpod'), None, or a list of those."""
    if isinstance(provider, str):
        return [provider_from_name(name) for name in provider.split(",") if name.strip()] or [None]
    if isinstance(provider, (list, tuple)):
        return [item for entry in provider for item in _providers(entry)] or [None]
    return [provider]


def specs_from_arguments(
    specs: Sequence[Spec] = (),
    *,
    provider: ProviderConfig | str | Sequence[ProviderConfig | str] | None = None,
    accelerator: Accelerator | str | None = None,
    allocation: str = DEFAULT_ALLOCATION,
    region: str | None = None,
    max_hourly_cost: float | None = None,
) -> list[Spec]:
    """Positional `Spec`s, or keyword fields for one spec per provider — never both."""
    for item in specs:
        if not isinstance(item, Spec):
            raise SpecError(
                f"positional arguments must be sky.Spec(...), got {item!r}. Fix: pass accelerator= / provider= "
                "as keywords, or wrap each choice in sky.Spec(provider=..., accelerator=...)"
            )
    if specs:
        mixed = [
            name
            for name, value, default in (
                ("provider", provider, None), ("accelerator", accelerator, None), ("allocation", allocation, DEFAULT_ALLOCATION),
                ("region", region, None), ("max_hourly_cost", max_hourly_cost, None),
            )
            if value != default
        ]
        if mixed:
            raise SpecError(
                f"got sky.Spec(...) arguments and also {', '.join(f'{m}=' for m in mixed)}; pass either Specs or "
                f"keyword fields, not both. Fix: move {', '.join(f'{m}=' for m in mixed)} into each sky.Spec(...)"
            )
        return list(specs)
    if allocation not in ALLOCATIONS:  # checked here too so the message names the keyword, not Spec
        raise SpecError(f"allocation={allocation!r} is not one of {', '.join(repr(a) for a in ALLOCATIONS)}")
    parsed = parse_accelerator(accelerator)
    return [
        Spec(provider=config, accelerator=parsed, allocation=allocation, region=region, max_hourly_cost=max_hourly_cost)
        for config in _providers(provider)
    ]


def gather_offers(specs: Sequence[Spec]) -> tuple[list[list[Offer]], list[str]]:
    """Each spec's offers and notes on failures. One listing per distinct provider config +
    accelerator, and the listings run in parallel: live APIs answer in 0.3–3 s each, and a plan over
    three clouds should wait for the slowest one, not for their sum."""
    configs = [spec.provider.for_region(spec.region) for spec in specs]
    keys = [
        (type(config).__qualname__, config.model_dump_json(), spec.accelerator.name if spec.accelerator else "")
        for config, spec in zip(configs, specs)
    ]
    first_spec = {key: (config, spec) for key, config, spec in reversed(list(zip(keys, configs, specs)))}
    listings: dict[tuple[str, str, str], list[Offer]] = {}
    notes: list[str] = []

    def listing(config: ProviderConfig, spec: Spec) -> list[Offer]:
        return list(config.list_offers(spec.accelerator))

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(first_spec))), thread_name_prefix="offers") as pool:
        futures = {key: pool.submit(listing, *pair) for key, pair in first_spec.items()}
        for key in dict.fromkeys(keys):  # in spec order, so notes read in the order asked
            config = first_spec[key][0]
            notes.extend(note for note in config.offer_notes() if note not in notes)
            try:
                listings[key] = futures[key].result()
            except Exception as error:  # one provider failing must not hide the others' offers
                listings[key] = []
                notes.append(f"{config.name}: could not list offers ({type(error).__name__}: {error})")
    return [listings[key] for key in keys], notes


def plan(
    *specs: Spec,
    provider: ProviderConfig | str | Sequence[ProviderConfig | str] | None = None,
    accelerator: Accelerator | str | None = None,
    nodes: Any = 1,
    allocation: str = DEFAULT_ALLOCATION,
    image: Any = None,  # accepted so plan() takes Compute's arguments; planning does not depend on it
    region: str | None = None,
    max_hourly_cost: float | None = None,
) -> Plan:
    """Ranked offers for these arguments; raises `NoOffersError` (with reasons) when none fits."""
    count = as_nodes(nodes).ceiling  # an elastic pool may grow to max: plan (and price) for max
    spec_list = specs_from_arguments(
        specs, provider=provider, accelerator=accelerator, allocation=allocation, region=region,
        max_hourly_cost=max_hourly_cost,
    )
    offers, notes = gather_offers(spec_list)
    result = select(spec_list, offers, nodes=count)
    result.notes.extend(notes)
    if not result.offers:
        raise no_offers_error(result, offers)
    stale = stale_price_note(result.chosen)
    if stale:
        result.notes.append(stale)
        warnings.warn(stale, StalePricesWarning, stacklevel=2)
    return result


def stale_price_note(offer: Offer, now: datetime | None = None) -> str | None:
    """A warning when the chosen offer's price is from a snapshot older than `STALE_PRICE_DAYS`
    (or undated): the real price may differ (AWS cut its GPU prices in 2025, for one)."""
    if not offer.price_source.startswith("snapshot"):
        return None
    if offer.price_as_of is None:
        return (f"the chosen price ({offer.provider} {offer.instance_type}) is from an undated snapshot: the real "
                "price may differ. Live prices need the provider's credentials")
    as_of = offer.price_as_of if offer.price_as_of.tzinfo else offer.price_as_of.replace(tzinfo=timezone.utc)
    days = ((now or datetime.now(timezone.utc)) - as_of).days
    if days <= STALE_PRICE_DAYS:
        return None
    return (f"the chosen price ({offer.provider} {offer.instance_type}) is from a snapshot {days} days old "
            f"({price_age(offer, now)}), older than {STALE_PRICE_DAYS} days: the real price may differ. Live "
            "prices need the provider's credentials")


def no_offers_error(result: Plan, offers_per_spec: Sequence[Sequence[Offer]]) -> NoOffersError:
    """Why nothing matched, per spec and provider, and the nearest things that exist."""
    lines = [f"No offer matches what was asked ({result.nodes} node{'s' if result.nodes != 1 else ''}):"]
    by_spec: dict[int, list[Any]] = {}
    for rejection in result.rejected:
        by_spec.setdefault(rejection.spec_index, []).append(rejection)
    for index, spec in enumerate(result.specs):
        rejections = by_spec.get(index, [])
        lines.append(f"  {spec.describe()}:")
        if not offers_per_spec[index]:
            what = f"{spec.accelerator.name} " if spec.accelerator else ""
            sold = _families_sold(spec.provider)
            has = f"; it has {', '.join(sold)}" if sold else ""
            lines.append(f"    {spec.provider.name} lists no {what}offers{has}")
            continue
        counts = Counter(r.filter for r in rejections)
        example = {}
        for r in sorted(rejections, key=lambda r: r.offer.price):
            example.setdefault(r.filter, r.reason)
        for name, n in counts.most_common():
            lines.append(f"    {n} × {name}: e.g. {example[name]}")
    nearest = _nearest(result, offers_per_spec)
    if nearest:
        lines.append("Nearest that exist:")
        lines.extend(f"  - {line}" for line in nearest)
    lines.extend(f"note: {note}" for note in result.notes)
    error = NoOffersError("\n".join(lines))
    error.plan = result  # type: ignore[attr-defined]
    return error


# Near misses first: an offer failing only on price or market is closer than one of another size.
_CLOSENESS = ("max_hourly_cost", "no_discount", "market", "network", "zone", "region", "vcpus", "memory_gb", "count", "memory", "form_factor", "accelerator")


def _nearest(result: Plan, offers_per_spec: Sequence[Sequence[Offer]], limit: int = 3) -> list[str]:
    """Cheapest near misses (closest failing check first), then other providers selling the family."""
    lines: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    misses = [r for r in result.rejected if r.filter in _CLOSENESS]
    misses.sort(key=lambda r: (_CLOSENESS.index(r.filter), r.offer.price))
    for rejection in misses:
        offer = rejection.offer
        key = (offer.provider, offer.accelerator_label, offer.instance_type, rejection.filter)
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"{_offer_line(offer)} — left out: {rejection.reason}")
        if len(lines) >= limit:
            break
    capped = [r for r in misses if r.filter == "max_hourly_cost"]
    if capped:
        cheapest = min(r.offer.price for r in capped)
        lines.append(f"raise max_hourly_cost to at least {cheapest:.2f} (USD per node per hour) to get the cheapest offer "
                     "that fits the rest")
    asked_providers = {spec.provider.name for spec in result.specs}
    for spec in result.specs:
        if spec.accelerator is None:
            continue
        for name, cls in sorted(provider_classes().items()):
            if name in asked_providers:
                continue
            try:
                others = cls().list_offers(spec.accelerator)
            except Exception:
                continue
            fitting = [o for o in others if o.accelerator == spec.accelerator.name and o.price > 0]
            if fitting:
                cheapest = min(fitting, key=lambda o: (o.count < spec.accelerator.count, o.price))
                lines.append(f"{_offer_line(cheapest)} — on a provider you did not ask (provider={name!r})")
    return lines


def _offer_line(offer: Offer) -> str:
    return (
        f"{offer.provider} {offer.instance_type} {offer.accelerator_label} {offer.market} "
        f"${offer.price:,.2f}/h in {place(offer) if offer.region or offer.zone else 'any region'} ({price_age(offer)})"
    )


def _families_sold(config: ProviderConfig) -> list[str]:
    try:
        return sorted({o.accelerator for o in config.list_offers(None) if o.accelerator})
    except Exception:
        return []
