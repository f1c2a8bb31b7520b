"""Provider configurations: which cloud, and how to reach it.

Each config names the `node_providers/` module that implements it. Code in `skyward_ray/` talks
to a provider only through that module (its offer source and its Ray `NodeProvider`), so nothing
here branches on a provider's name.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from skyward_ray.accelerators import Accelerator
    from skyward_ray.offers import Offer


class ProviderConfig(BaseModel):
    """Base of every provider config; `name` is the value `Offer.provider` carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str]
    module: ClassVar[str]

    def node_provider_module(self) -> ModuleType:
        return importlib.import_module(self.module)

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        """Every offer this provider has that could serve `accelerator` (a hint; may be broader)."""
        return self.node_provider_module().list_offers(self, accelerator)


class Local(ProviderConfig):
    """This machine. Each node is a local `ray start` process bound to its own 127.0.1.x address.

    `simulate_accelerators=True` makes every node advertise the requested accelerators as Ray
    resources (no hardware behind them) so placement logic can be exercised on a laptop or in CI.
    """

    name: ClassVar[str] = "local"
    module: ClassVar[str] = "node_providers.local"

    simulate_accelerators: bool = False
    cpus_per_node: float | None = Field(
        default=None, gt=0, description="CPUs each node advertises; default: this machine's CPUs split across the nodes"
    )
    object_store_memory: int = Field(
        default=100 * 1024**2, ge=75 * 1024**2, description="bytes of object store per node (Ray's minimum is 75 MiB)"
    )
    boot_timeout: float = Field(default=90.0, gt=0, description="seconds to wait for every node to join")
    heartbeat_grace: float = Field(
        default=30.0, gt=0, description="seconds without a driver heartbeat before the nodes stop themselves"
    )


class AWS(ProviderConfig):
    """Amazon EC2. Credentials come from the usual boto3 chain (env, profile, instance role)."""

    name: ClassVar[str] = "aws"
    module: ClassVar[str] = "node_providers.aws"

    region: str | None = None
    regions: tuple[str, ...] | None = None
    profile: str | None = None
    ami: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class RunPod(ProviderConfig):
    """RunPod pods. The API key comes from `api_key`, `RUNPOD_API_KEY` or `~/.runpod/config.toml`."""

    name: ClassVar[str] = "runpod"
    module: ClassVar[str] = "node_providers.runpod"

    api_key: str | None = Field(default=None, repr=False)
    cloud_type: str = Field(default="ALL", pattern="^(ALL|SECURE|COMMUNITY)$")


class VastAI(ProviderConfig):
    """Vast.ai marketplace. The API key comes from `api_key` or `VAST_API_KEY`."""

    name: ClassVar[str] = "vastai"
    module: ClassVar[str] = "node_providers.vastai"

    api_key: str | None = Field(default=None, repr=False)
    min_reliability: float = Field(default=0.95, ge=0, le=1)
    verified_only: bool = True
