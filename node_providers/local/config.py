"""`sky.Local()`: this machine as a pool (the default provider; no cloud account needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from skyward_ray.planning.providers import ProviderConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer


class Local(ProviderConfig):
    """This machine. Each node is a local `ray start` process group bound to its own 127.x address.

    `simulate_accelerators=True` makes every node advertise the requested accelerators as Ray
    resources (no hardware behind them) so placement can be exercised on a laptop or in CI.
    """

    name: ClassVar[str] = "local"
    node_provider: ClassVar[str | None] = "node_providers.local.node_provider:LocalNodeProvider"
    nodes_share_driver_python: ClassVar[bool] = True
    direct_driver: ClassVar[bool] = True

    boot_timeout: float = Field(default=90.0, gt=0, description="seconds to wait for every node to join")
    cpus_per_node: float | None = Field(
        default=None, gt=0, description="CPUs each node advertises; default: this machine's CPUs split across the nodes"
    )

    @field_validator("cpus_per_node")
    @classmethod
    def _whole_cpus(cls, value: float | None) -> float | None:
        """`ray start --num-cpus` takes a whole number: 0.5 would only fail later, in every node's boot."""
        if value is not None and value != int(value):
            raise ValueError(f"cpus_per_node={value:g}: a node advertises a whole number of CPUs (Ray's --num-cpus). "
                             f"Fix: cpus_per_node={max(1, round(value))}")
        return value

    object_store_memory: int = Field(
        default=100 * 1024**2, ge=75 * 1024**2, description="bytes of object store per node (Ray's minimum is 75 MiB)"
    )

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.local.offers import list_offers

        return list_offers(self, accelerator)
