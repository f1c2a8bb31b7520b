"""What a pool is asked to be, checked before anything exists, and the keeper's way of asking.

`PoolRequest` is `sky.Compute(...)`'s arguments validated (bad input raises `SpecError` naming
the field, before any plan or machine): the specs, the size, the image, the cost ceilings. It is
what a detached pool's `up` hands its keeper, so the keeper makes this very pool.

`KeeperMode` is the one typed option that turns a `sky.Compute` into a keeper's pool
(`Compute.for_keeper`): the pool's own name, and the state its record carries from the start.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from skyward_ray.errors import SpecError
from skyward_ray.planning import cost_guard
from skyward_ray.planning import plan as planning
from skyward_ray.planning.accelerators import Accelerator
from skyward_ray.planning.detached import DetachedSpec
from skyward_ray.planning.image import Image
from skyward_ray.planning.nodes import Nodes, as_nodes
from skyward_ray.planning.offers import Offer, Plan
from skyward_ray.planning.providers import ProviderConfig
from skyward_ray.planning.spec import Spec


def offer_words(offer: Offer) -> str:
    """An offer in a few words, for the cost guard's refusals."""
    return f"{offer.provider} {offer.instance_type} {offer.market}"


@dataclass(frozen=True)
class PoolRequest:
    """`sky.Compute`'s arguments, checked. `arguments` is what a keeper needs to make the same pool."""

    specs: list[Spec]
    desired: Nodes
    image: Image
    ceilings: cost_guard.Ceilings
    boot_timeout: float | None
    arguments: dict[str, Any] = field(default_factory=dict)
    dashboard: bool = False  # run Ray's dashboard on the head (a `with` pool's; a keeper's is in KeeperMode)

    @classmethod
    def from_arguments(cls, specs: list[Spec], *,
                       provider: ProviderConfig | str | Sequence[ProviderConfig | str] | None = None,
                       accelerator: Accelerator | str | None = None,
                       nodes: int | Nodes = 1, allocation: str = "spot-if-available", image: Image | None = None,
                       region: str | None = None, max_hourly_cost: float | None = None,
                       boot_timeout: float | None = None, max_pool_hourly_cost: float | None = None,
                       max_pool_nodes: int | None = None, dashboard: bool = False) -> "PoolRequest":
        """Check everything that can be checked without a plan or a cloud call: refuse what cannot be
        honoured (a provider whose SDK is missing included) before anything is planned or printed."""
        desired = as_nodes(nodes)  # elastic when min=/max= differ from desired (see cluster/elastic.py)
        ceilings = cost_guard.ceilings(max_pool_hourly_cost, max_pool_nodes)
        cost_guard.check_nodes(desired.max or desired.desired, ceilings)
        if image is not None and not isinstance(image, Image):
            raise SpecError(f"image={image!r}: pass a sky.Image(pip=[...], apt=[...], env={{...}})")
        image = image or Image()
        checked = planning.specs_from_arguments(
            list(specs), provider=provider, accelerator=accelerator, allocation=allocation, region=region,
            max_hourly_cost=max_hourly_cost,
        )
        for spec in checked:  # refuse what cannot be honoured before anything is provisioned
            spec.provider.require_provisioning()
            image.check_for(spec.provider)
        arguments = {"nodes": desired, "image": image, "boot_timeout": boot_timeout,
                     "max_pool_hourly_cost": max_pool_hourly_cost, "max_pool_nodes": max_pool_nodes}
        return cls(checked, desired, image, ceilings, boot_timeout, arguments, dashboard=bool(dashboard))

    def plan(self) -> Plan:
        """The ranked offers (`NoOffersError` when none fits); an elastic pool is priced at its max."""
        return planning.plan(*self.specs, nodes=self.desired.ceiling)

    def check_cost(self, offer: Offer) -> None:
        """`SpecError` when the pool on `offer` would cost more per hour than its ceiling allows."""
        cost_guard.check_cost(self.desired.ceiling, offer.price, self.ceilings, offer_words(offer))


@dataclass(frozen=True)
class KeeperMode:
    """A detached pool made by its keeper: the pool's own name (not a fresh one per launch
    attempt), and its state for the pool's record (`kind="keeper"`). A keeper is no Ray driver:
    it ships no code, and the nodes export the Image's environment themselves."""

    name: str
    state: dict[str, Any]

    @classmethod
    def from_spec(cls, spec: DetachedSpec, log: str | None, started_at: float) -> "KeeperMode":
        return cls(spec.name, {"status": "starting", "idle_timeout": spec.idle_timeout,
                               "max_lifetime": spec.max_lifetime, "dashboard": spec.dashboard, "log": log,
                               "started_at": started_at})

    def remaining_lifetime(self) -> float | None:
        """Seconds left of the pool's max lifetime (None: no limit): what the head enforces itself,
        so the pool ends on time even when this keeper is gone or wedged."""
        lifetime = self.state.get("max_lifetime")
        if lifetime is None:
            return None
        return max(float(lifetime) - (time.time() - float(self.state["started_at"])), 1.0)

    @property
    def dashboard(self) -> bool:
        return bool(self.state.get("dashboard"))
