"""`sky.VastAI()`: the Vast.ai marketplace. Offers only, for now: provisioning is refused with a typed error."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from skyward_ray.planning.providers import ProviderConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer


class VastAI(ProviderConfig):
    """Vast.ai marketplace. The API key comes from `api_key` or `VAST_API_KEY`."""

    name: ClassVar[str] = "vastai"

    api_key: str | None = Field(default=None, repr=False, description="Vast.ai API key; default: VAST_API_KEY")
    min_reliability: float = Field(default=0.95, ge=0, le=1, description="a number in 0..1")
    verified_only: bool = Field(default=True, description="True to list verified hosts only")

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.vastai.offers import list_offers

        return list_offers(self, accelerator)
