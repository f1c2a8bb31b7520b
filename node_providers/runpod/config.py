"""`sky.RunPod(...)`: RunPod pods. Every setting a user may make is a typed field (no free-form dict)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from skyward_ray.planning.providers import RemoteMachineConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer

DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"


class RunPod(RemoteMachineConfig):
    """RunPod pods. The API key comes from `api_key`, else `RUNPOD_API_KEY`, else `~/.runpod/config.toml`.

    The key stays on the driver: a pod ends itself with the pod-scoped key RunPod gives every pod.
    """

    name: ClassVar[str] = "runpod"
    node_provider: ClassVar[str | None] = "node_providers.runpod.node_provider:RunPodNodeProvider"
    extra: ClassVar[str | None] = "runpod"
    required_modules: ClassVar[tuple[str, ...]] = ("runpod",)

    api_key: str | None = Field(default=None, repr=False, description="RunPod API key; default: RUNPOD_API_KEY")
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = Field(
        default="ALL", description='"ALL", "SECURE" or "COMMUNITY" (pools of 2+ pods are on-demand in SECURE: '
                                  'global networking)')
    image: str = Field(default=DEFAULT_IMAGE, description="the container image every pod runs (needs bash, curl, "
                                                          "openssh-server or apt-get)")
    container_disk_gb: int = Field(default=20, gt=0, description="each pod's container disk in GB (gone with the pod)")
    volume_gb: int = Field(default=0, ge=0, description="each pod's volume disk in GB (0: none; billed while the pod exists)")
    min_vcpu_count: int = Field(default=1, ge=1, description="fewest vCPUs a pod may get")
    min_memory_gb: int = Field(default=1, ge=1, description="least memory in GB a pod may get")

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.runpod.offers import list_offers

        return list_offers(self, accelerator)
