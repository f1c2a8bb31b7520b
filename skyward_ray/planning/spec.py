"""`Spec`: one acceptable way to get nodes (provider + accelerator + market + limits).

Several specs form a preference set: the selector ranks the offers of all of them together, and
each ranked offer remembers which spec it answers (`Offer.spec_index`). Validation happens here,
before any cloud is contacted, and every error names the field and the fix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from skyward_ray._validation import SpecModel
from skyward_ray.errors import SpecError
from skyward_ray.planning.accelerators import Accelerator, parse_accelerator
from skyward_ray.planning.providers import ProviderConfig, provider_from_name

Allocation = Literal["spot-if-available", "spot", "on-demand", "cheapest"]
ALLOCATIONS: tuple[str, ...] = ("spot-if-available", "spot", "on-demand", "cheapest")

_HINTS = {
    "provider": "sky.AWS(), sky.RunPod(), sky.VastAI(), sky.Local(), a name like 'aws', or None for Local",
    "accelerator": "sky.accelerators.H100(count=8), a string like 'H100:8' / 'A100-80GB:8', or None for CPU-only",
    "allocation": 'one of "spot-if-available" (default), "spot", "on-demand", "cheapest"',
    "region": "a region name such as 'us-east-1' (a prefix like 'us' or a country like 'US' also matches)",
    "zone": "an availability zone such as 'us-east-1a'",
    "max_hourly_cost": "a positive number of USD per node per hour, or None for no cap",
    "vcpus": "a positive number of vCPUs per node, or None",
    "memory_gb": "a positive number of GB of RAM per node, or None",
}


class Spec(SpecModel):
    """What the user will accept: one provider, one accelerator shape, one market policy."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    _spec_hints = _HINTS

    provider: ProviderConfig = Field(default_factory=lambda: provider_from_name("local"))
    accelerator: Accelerator | None = None
    allocation: Allocation = "spot-if-available"
    region: str | None = None
    zone: str | None = None
    max_hourly_cost: float | None = Field(default=None, gt=0, description="USD per node per hour")
    vcpus: float | None = Field(default=None, gt=0, description="minimum vCPUs per node")
    memory_gb: float | None = Field(default=None, gt=0, description="minimum RAM per node, GB")

    @field_validator("provider", mode="before")
    @classmethod
    def _provider(cls, value: Any) -> ProviderConfig:
        if value is None:
            return provider_from_name("local")
        if isinstance(value, str):
            return provider_from_name(value)
        if isinstance(value, type) and issubclass(value, ProviderConfig):
            return value()
        if not isinstance(value, ProviderConfig):
            raise SpecError(f"Spec.provider: expected a provider config, got {value!r}. Fix: {_HINTS['provider']}")
        return value

    @field_validator("accelerator", mode="before")
    @classmethod
    def _accelerator(cls, value: Any) -> Accelerator | None:
        return parse_accelerator(value)

    @field_validator("region", "zone", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def describe(self) -> str:
        """Short human form: "H100:8 on aws (spot-if-available, us-east-1, ≤ $30/h)"."""
        extras = [self.allocation]
        if self.region:
            extras.append(self.region)
        if self.zone:
            extras.append(self.zone)
        if self.max_hourly_cost:
            extras.append(f"≤ ${self.max_hourly_cost:g}/h per node")
        if self.vcpus:
            extras.append(f"≥ {self.vcpus:g} vCPUs")
        if self.memory_gb:
            extras.append(f"≥ {self.memory_gb:g} GB RAM")
        what = str(self.accelerator) if self.accelerator else "CPU-only"
        return f"{what} on {self.provider.name} ({', '.join(extras)})"
