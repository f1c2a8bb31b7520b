"""The offer selector: specs + offers → a ranked `Plan`, with a reason for every offer left out.

Pure and deterministic (no I/O, no clock), so it is tested on fixture tables and benchmarked on
100k offers. Semantics (DESIGN §2.1):

* each input `Offer` is one purchase in one market; `allocation` picks markets and order:
  `spot` → spot only; `on-demand` → on-demand only; `spot-if-available` → every spot offer by
  price, then every on-demand offer by price; `cheapest` → all markets in one price order.
* a spot price of 0, or not below the on-demand price of the same thing, is no discount: that
  spot entry is rejected (it says why), never ranked.
* filters: provider, accelerator (family; memory and form factor when asked), exactly `count`
  per node, min vCPUs / RAM, region / zone, `max_hourly_cost` per node, and for pools of 2+
  nodes a private network between machines (`Offer.single_node_reason`).
* never more machine than asked: a node with more accelerators than `count` is rejected (saying
  how to allow it) unless the accelerator says `larger_ok`; then, within each market tier below,
  every exact match ranks before every larger node, whatever their prices.
* several specs share one ranking. Entries a spec asked for outright (any market under `spot`,
  `on-demand`, `cheapest`; spot under `spot-if-available`) form the first tier; the on-demand
  fallbacks of `spot-if-available` specs form the second tier, after every first-tier entry.
* a spot-only request on an offer with no spot price says whether its price source lists no spot
  prices at all (a snapshot without them: live prices need credentials) or just not for that one.
* the same purchase listed twice (two names → same id, or two identical rows) is ranked once.
* order: market tier, exact before larger, price; ties then go by spec order, then provider /
  region / zone / instance type, so equal inputs always give the same plan.
"""

from __future__ import annotations

import gc
from operator import itemgetter
from typing import Any, Callable, Iterable, Sequence

from skyward_ray.errors import SpecError
from skyward_ray.planning.accelerators import memory_matches
from skyward_ray.planning.offers import Offer, Plan, Rejection
from skyward_ray.planning.spec import Spec

_SPOT_FIRST = {"spot": 0, "on-demand": 1}
_ONE_ORDER = {"spot": 0, "on-demand": 0}

Check = Callable[[Offer], "tuple[str, str] | None"]


def select(specs: Sequence[Spec], offers_per_spec: Sequence[Iterable[Offer]], nodes: int = 1) -> Plan:
    """Rank every offer that satisfies its spec; the plan's `offers[0]` is the choice."""
    if len(specs) != len(offers_per_spec):
        raise SpecError(f"select(): {len(specs)} specs but {len(offers_per_spec)} offer lists")
    # Tens of thousands of short-lived, acyclic objects: the cyclic GC only costs time here.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        kept, rejected = _rank(specs, offers_per_spec, nodes)
        ranked = sorted(kept.values(), key=itemgetter(0))
        offers_out = [offer if offer.spec_index == index else _with_spec_index(offer, index) for _, offer, index in ranked]
    finally:
        if gc_was_enabled:
            gc.enable()
    return Plan(offers=offers_out, rejected=rejected, specs=list(specs), nodes=nodes)


def _rank(specs: Sequence[Spec], offers_per_spec: Sequence[Iterable[Offer]],
          nodes: int = 1) -> tuple[dict[Any, Any], list[Rejection]]:
    kept: dict[tuple[Any, ...], tuple[tuple[Any, ...], Offer, int]] = {}
    rejected: list[Rejection] = []
    reject = rejected.append
    for spec_index, (spec, offers) in enumerate(zip(specs, offers_per_spec)):
        offers = offers if isinstance(offers, (list, tuple)) else list(offers)
        checks = _checks(spec, offers, nodes)
        group = _SPOT_FIRST if spec.allocation == "spot-if-available" else _ONE_ORDER
        exact = spec.accelerator.count if spec.accelerator is not None else None
        for offer in offers:
            for check in checks:
                failure = check(offer)
                if failure is not None:
                    reject(_rejection(offer, failure[1], failure[0], spec_index))
                    break
            else:
                d = offer.__dict__
                region, zone, instance_type, tier, market = d["region"], d["zone"], d["instance_type"], d["tier"], d["market"]
                identity = (d["provider"], region, zone, instance_type, tier, d["count"], market)
                larger = exact is not None and d["count"] != exact  # only ever True under larger_ok
                rank = (group[market], larger, d["price"], spec_index, d["provider"], region or "", zone or "",
                        instance_type, tier or "", d["count"], market)
                previous = kept.get(identity)
                if previous is None:
                    kept[identity] = (rank, offer, spec_index)
                    continue
                loser, loser_spec = offer, spec_index
                if rank < previous[0]:
                    kept[identity] = (rank, offer, spec_index)
                    loser, loser_spec = previous[1], previous[2]
                reason = f"duplicate listing of {loser.instance_type} (ranked once, as the cheaper row)"
                reject(_rejection(loser, reason, "duplicate", loser_spec))
    return kept, rejected


def _checks(spec: Spec, offers: Sequence[Offer], nodes: int = 1) -> list[Check]:
    """The filters this spec needs, cheapest first; each returns (filter, reason) or None."""
    checks: list[Check] = []
    provider = spec.provider.name
    checks.append(lambda o: None if o.provider == provider else ("provider", f"from {o.provider}; this spec asks {provider}"))
    accelerator = spec.accelerator
    if accelerator is not None:
        name, count = accelerator.name, accelerator.count
        checks.append(lambda o: None if o.accelerator == name else ("accelerator", f"{o.accelerator or 'no accelerator'}, asked {name}"))
        if accelerator.form_factor is not None:
            form_factor = accelerator.form_factor
            checks.append(
                lambda o: None if o.form_factor == form_factor
                else ("form_factor", f"{name} {o.form_factor or '(form factor not listed)'}, asked {name} {form_factor}")
            )
        if accelerator.memory is not None:
            memory = accelerator.memory
            checks.append(
                lambda o: None if o.accelerator_memory_gb is not None and memory_matches(memory, o.accelerator_memory_gb)
                else ("memory", f"{name} {_gb(o.accelerator_memory_gb)}, asked {name} {memory:g}GB")
            )
        checks.append(_count_check(name, count, accelerator.larger_ok))
    if spec.vcpus is not None:
        vcpus = spec.vcpus
        checks.append(
            lambda o: None if o.vcpus is not None and o.vcpus >= vcpus
            else ("vcpus", f"{_num(o.vcpus)} vCPUs per node, asked at least {vcpus:g}")
        )
    if spec.memory_gb is not None:
        ram = spec.memory_gb
        checks.append(
            lambda o: None if o.memory_gb is not None and o.memory_gb >= ram
            else ("memory_gb", f"{_num(o.memory_gb)} GB RAM per node, asked at least {ram:g}")
        )
    if spec.region is not None:
        region_ok = _region_matcher(spec.region)
        checks.append(lambda o: None if region_ok(o.region) else ("region", f"region {o.region or 'not listed'}, asked {spec.region}"))
    if spec.zone is not None:
        zone = spec.zone
        checks.append(
            lambda o: None if o.zone == zone or (o.zone is None and o.region is not None and zone.startswith(o.region))
            else ("zone", f"zone {o.zone or o.region or 'not listed'}, asked {zone}")
        )
    checks.append(_market_check(spec, offers))
    if nodes > 1:
        checks.append(
            lambda o: None if o.single_node_reason is None
            else ("network", f"{nodes} nodes cannot form one Ray cluster here: {o.single_node_reason}")
        )
    if spec.max_hourly_cost is not None:
        cap = spec.max_hourly_cost
        checks.append(
            lambda o: None if o.price <= cap
            else ("max_hourly_cost", f"${o.price:,.2f}/h per node ({o.market}) is over max_hourly_cost ${cap:,.2f}/h per node")
        )
    return checks


def _count_check(name: str, count: int, larger_ok: bool) -> Check:
    """Exactly `count` per node; more only with `larger_ok` (a larger node costs more, and a call
    takes all of its accelerators), and the rejection says how to allow it."""
    def fits(o: Offer) -> tuple[str, str] | None:
        if o.count == count or (larger_ok and o.count > count):
            return None
        if o.count < count:
            return ("count", f"{o.count}× {name} per node, asked {count}")
        return ("count", f"{o.count} x {name} per node, {count} asked (pass larger_ok=True, "
                         f"or write '{name}:{count}+', to allow larger machines)")

    return fits


def _market_check(spec: Spec, offers: Sequence[Offer]) -> Check:
    """Allocation → which markets are wanted; spot entries must be a real discount."""
    allocation = spec.allocation

    def spot_is_discount(o: Offer) -> tuple[str, str] | None:
        if o.price <= 0:
            return ("no_discount", "spot price $0.00 is not a real price (feed quirk); no spot entry")
        if o.on_demand_price is not None and o.price >= o.on_demand_price:
            return ("no_discount", f"spot ${o.price:,.2f}/h is not below on-demand ${o.on_demand_price:,.2f}/h; no discount")
        return None

    if allocation == "on-demand":
        return lambda o: None if o.market == "on-demand" else ("market", "spot offer; allocation='on-demand' buys on-demand only")
    if allocation == "spot":
        with_spot = {_machine(o) for o in offers if o.market == "spot"}
        sources_with_spot = {o.price_source for o in offers if o.market == "spot" or o.spot_price is not None}

        def spot_only(o: Offer) -> tuple[str, str] | None:
            if o.market == "spot":
                return spot_is_discount(o)
            if _machine(o) in with_spot:
                return ("market", "on-demand offer; allocation='spot' buys spot only")
            why = "on-demand only" if o.price_source in sources_with_spot else _no_spot_source(o)
            return ("market", f"no spot price listed for this offer ({why}); allocation='spot' buys spot only")

        return spot_only
    def any_market(o: Offer) -> tuple[str, str] | None:
        if o.market != "spot":
            return None
        price = o.price
        if price > 0 and (o.on_demand_price is None or price < o.on_demand_price):
            return None
        return spot_is_discount(o)

    return any_market


def _no_spot_source(o: Offer) -> str:
    """Why a whole price source has no spot price, in words that say what would change it."""
    kind, _, name = o.price_source.partition(":")
    name = name or o.provider
    if kind == "snapshot":
        return f"the snapshot has no spot prices for {name}; live prices need {o.provider} credentials"
    return f"{o.price_source} lists no spot prices"


def _machine(o: Offer) -> tuple[Any, ...]:
    return (o.provider, o.region, o.instance_type, o.tier, o.count)


def _region_matcher(asked: str) -> Callable[[str | None], bool]:
    """'us-east-1' exact; 'us' / 'us-east' a dash prefix; 'US' / 'Texas' a part of 'Texas, US'."""
    wanted = asked.strip().lower()
    memo: dict[str | None, bool] = {}

    def matches(region: str | None) -> bool:
        hit = memo.get(region)
        if hit is None:
            text = (region or "").lower()
            hit = bool(region) and (
                text == wanted or text.startswith(wanted + "-") or wanted in (part.strip() for part in text.split(","))
            )
            memo[region] = hit
        return hit

    return matches


def _rejection(offer: Offer, reason: str, filter_name: str, spec_index: int) -> Rejection:
    # Built without re-validating: the offer is already a validated Offer and this runs per offer.
    return _construct(Rejection, {"offer": offer, "reason": reason, "filter": filter_name, "spec_index": spec_index})


def _with_spec_index(offer: Offer, spec_index: int) -> Offer:
    values = offer.__dict__.copy()
    values["spec_index"] = spec_index
    obj = _new(Offer)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", offer.__pydantic_fields_set__ | _SPEC_INDEX)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


_SPEC_INDEX = frozenset({"spec_index"})


_new = object.__new__
_set = object.__setattr__


def _construct(cls: Any, values: dict[str, Any]) -> Any:
    """`cls.model_construct` minus its per-field default handling (every field is given)."""
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _gb(value: float | None) -> str:
    return f"{value:g}GB" if value is not None else "(memory not listed)"


def _num(value: float | None) -> str:
    return f"{value:g}" if value is not None else "unlisted"
