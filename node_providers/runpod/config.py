"""`sky.RunPod()`: RunPod pods. Offers only, for now: provisioning is refused with a typed error."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from skyward_ray.planning.providers import ProviderConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer


class RunPod(ProviderConfig):
    """RunPod pods. The API key comes from `api_key`, `RUNPOD_API_KEY` or `~/.runpod/config.toml`."""

    name: ClassVar[str] = "runpod"

    api_key: str | None = Field(default=None, repr=False, description="RunPod API key; default: RUNPOD_API_KEY")
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = Field(
        default="ALL", description='"ALL", "SECURE" or "COMMUNITY"')

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.runpod.offers import list_offers

        return list_offers(self, accelerator)
