"""What can be bought and why one thing was chosen: `Offer`, `Rejection`, `Plan`.

These are plain data shared by the selector (which ranks offers), the launcher (which walks a
plan in order, falling back on capacity errors) and the console (which prints them). They live in
one small module so that the provider modules in `node_providers/` can build offers without
importing the selector.
"""

from __future__ import annotations

import re

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from skyward_ray.planning.spec import Spec

Market = Literal["spot", "on-demand"]


class Offer(BaseModel):
    """One purchasable thing, priced per node per hour in the market this entry would buy.

    The same machine type appears twice in a plan when it can be bought both as spot and as
    on-demand; `market` says which purchase this entry stands for and `price` is that market's price.
    Providers list one `Offer` per market (a spot offer only where a spot price is listed);
    `on_demand_price` on a spot offer is what the selector compares it with, so a spot price of
    0 or not below on-demand is rejected as no discount. `spec_index` is set by the selector.
    """

    model_config = ConfigDict(frozen=True)

    provider: str = Field(description='"local", "aws", "runpod" or "vastai"')
    accelerator: str | None = Field(description="canonical accelerator family; None for CPU-only")
    count: int = Field(ge=0, description="accelerators per node")
    market: Market
    price: float = Field(ge=0, description="USD per hour per node in `market`")
    on_demand_price: float | None = None
    spot_price: float | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str = Field(description="instance type, GPU type id or marketplace offer id")
    vcpus: float | None = None
    memory_gb: float | None = None
    accelerator_memory_gb: float | None = None
    billing_unit: str = "hour"
    price_source: str = Field(description='where the price came from, e.g. "snapshot:aws"')
    price_as_of: datetime | None = None
    price_dated_by: str | None = Field(
        default=None, description='what `price_as_of` is: "published" (the price list\'s own date), "catalog commit" '
                                  '(a snapshot dated by its file\'s last commit: at least this old), "undated", or '
                                  'None (a live price: when it was listed)')
    price_reference: str | None = Field(default=None, description="which published price list a snapshot price is "
                                                                  "from (file and commit)")
    spec_index: int = Field(default=0, description="which of the requested specs this offer answers")
    form_factor: str | None = Field(default=None, description='"SXM", "PCIe", "NVL", "OAM"; None if unknown')
    tier: str | None = Field(
        default=None, description='provider purchase tier, e.g. RunPod "SECURE"/"COMMUNITY"; part of identity'
    )
    single_node_reason: str | None = Field(
        default=None,
        description="why several nodes of this offer cannot form one Ray cluster (no private network between "
                    "machines); None when they can. The selector rejects such offers for pools of 2+ nodes.",
    )

    @property
    def label(self) -> str:
        """A Ray-label-safe name of this purchase, e.g. g4dn.xlarge.us-east-1a.spot (tags and labels carry it).
        Characters a Ray label value may not hold (the spaces of RunPod's GPU type ids) become '-'."""
        raw = f"{self.instance_type}.{self.zone or self.region or 'any'}.{self.market}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._")[:63].rstrip("-._")

    @property
    def price_per_accelerator(self) -> float | None:
        return self.price / self.count if self.count else None

    @property
    def accelerator_label(self) -> str:
        """ "H100 SXM 80GB ×8", or "CPU" for a node without accelerators."""
        if not self.accelerator or not self.count:
            return "CPU"
        parts = [self.accelerator]
        if self.form_factor:
            parts.append(self.form_factor)
        if self.accelerator_memory_gb:
            parts.append(f"{self.accelerator_memory_gb:.0f}GB")
        return f"{' '.join(parts)} ×{self.count}"


class Rejection(BaseModel):
    """An offer left out of a plan, with the reason in words a user can act on.

    `filter` is the check that failed ("accelerator", "count", "max_hourly_cost", "market",
    "region", "duplicate", ...) so errors can summarise thousands of rejections per cause.
    """

    model_config = ConfigDict(frozen=True)

    offer: Offer
    reason: str
    filter: str = ""
    spec_index: int = Field(default=0, description="which spec's offer list this came from")


class Plan(BaseModel):
    """Ranked offers (best first) and the ones that were filtered out.

    The launcher walks `offers` in order: a capacity error moves to the next entry, and
    `plan.specs[offer.spec_index]` is the spec (and so the provider config) an entry answers.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    offers: list[Offer]
    rejected: list[Rejection] = Field(default_factory=list)
    specs: list[Spec] = Field(default_factory=list)
    nodes: int = Field(default=1, ge=1)
    notes: list[str] = Field(default_factory=list, description="e.g. a provider whose offers could not be listed")

    @property
    def chosen(self) -> Offer:
        return self.offers[0]

    def spec_for(self, offer: Offer) -> Spec:
        return self.specs[offer.spec_index]

    def __str__(self) -> str:
        from skyward_ray.planning.offer_table import render_plan

        return render_plan(self)
