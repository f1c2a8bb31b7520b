"""skyward_ray: run Python functions on the cheapest accelerators any cloud offers.

    import skyward_ray as sky

    @sky.function
    def square(x): return x * x

    with sky.Compute(nodes=3) as pool:     # provider omitted: sky.Local()
        square(7) >> pool

The public API, by where it lives (see docs/architecture.md):

- `skyward_ray.planning`: specs, offers and the selector (`plan`, `Spec`, `Image`, `Nodes`, ...);
  pure data work that never imports Ray; `check` (can a pool launch on each provider: reads only);
- `skyward_ray.api`: `function`, `gather`, `Compute` (and `Compute.up()` for a detached pool),
  `attach` (join a detached pool by name), `instance_info`, `shard`;
- `node_providers.<cloud>.config`: `Local`, `Container`, `AWS`, `RunPod`, `VastAI`.

`import skyward_ray` is cheap: what needs Ray (`Compute`, `instance_info`, `shard`) is imported
on first use.
"""

# No `from __future__ import annotations`, and private names for what the lazy loader uses:
# `dir(sky)` shows the public API only.
import importlib as _importlib

from node_providers.aws.config import AWS
from node_providers.container.config import Container
from node_providers.local.config import Local
from node_providers.runpod.config import RunPod
from node_providers.vastai.config import VastAI
from skyward_ray.api.function import PendingFunction, PendingGroup, RemoteFunction, function, gather
from skyward_ray.errors import (
    AuthError,
    BootTimeoutError,
    CapacityError,
    FunctionCrashedError,
    FunctionTimeoutError,
    HostKeyChangedError,
    NodeLostError,
    NoOffersError,
    NotInTaskError,
    PoolClosedError,
    PoolLostError,
    ProviderUnavailableError,
    ProvisioningError,
    QuotaError,
    SkywardError,
    SpotQuotaError,
    TeardownError,
    SpecError,
    UnknownAcceleratorError,
)
from skyward_ray.planning import accelerators
from skyward_ray.planning.check import CheckReport, check
from skyward_ray.planning.image import Image
from skyward_ray.planning.nodes import NodeInfo, Nodes
from skyward_ray.planning.offers import Offer, Plan, Rejection
from skyward_ray.planning.plan import plan
from skyward_ray.planning.spec import Spec

__version__ = "0.1.0"

# Imported on first use: these import Ray.
_LAZY = {
    "AttachedPool": "skyward_ray.api.detached",
    "Compute": "skyward_ray.api.compute",
    "attach": "skyward_ray.api.detached",
    "InstanceInfo": "skyward_ray.api.runtime",
    "instance_info": "skyward_ray.api.runtime",
    "shard": "skyward_ray.api.runtime",
}


def __getattr__(name: str) -> object:
    """Load a Ray-importing name on first use (`import skyward_ray` stays cheap)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skyward_ray' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The loaded names and the lazy ones, so `dir(sky)` lists `Compute` before its first use."""
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AWS", "AttachedPool", "AuthError", "BootTimeoutError", "CapacityError", "CheckReport", "Compute", "Container", "FunctionCrashedError",
    "FunctionTimeoutError", "HostKeyChangedError", "Image",
    "InstanceInfo", "Local", "NoOffersError", "NodeInfo", "NodeLostError", "Nodes", "NotInTaskError", "Offer", "PendingFunction",
    "PendingGroup", "Plan", "PoolClosedError", "PoolLostError", "ProviderUnavailableError", "ProvisioningError", "QuotaError",
    "Rejection", "RemoteFunction", "RunPod", "SkywardError", "Spec", "SpecError", "SpotQuotaError", "TeardownError", "UnknownAcceleratorError",
    "VastAI", "accelerators", "attach", "check", "function", "gather", "instance_info", "plan", "shard",
]
