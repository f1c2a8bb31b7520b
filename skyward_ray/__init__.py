"""skyward_ray: run Python functions on the cheapest accelerators any cloud offers.

    import skyward_ray as sky

    @sky.function
    def square(x): return x * x

    with sky.Compute(nodes=3) as pool:     # provider omitted: sky.Local()
        square(7) >> pool

See DESIGN.md §1 for the whole public API.
"""

from skyward_ray import accelerators
from skyward_ray.compute import Compute
from skyward_ray.errors import (
    AuthError,
    BootTimeoutError,
    CapacityError,
    FunctionTimeoutError,
    NoOffersError,
    NotInTaskError,
    PoolClosedError,
    ProvisioningError,
    QuotaError,
    SkywardError,
    SpecError,
    UnknownAcceleratorError,
)
from skyward_ray.function import PendingFunction, PendingGroup, RemoteFunction, function, gather
from skyward_ray.image import Image
from skyward_ray.nodes import NodeInfo, Nodes
from skyward_ray.offers import Offer, Plan, Rejection
from skyward_ray.planning import plan
from skyward_ray.providers import AWS, Local, RunPod, VastAI
from skyward_ray.runtime import InstanceInfo, instance_info, shard
from skyward_ray.spec import Spec

__version__ = "0.1.0"

__all__ = [
    "AWS", "AuthError", "BootTimeoutError", "CapacityError", "Compute", "FunctionTimeoutError", "Image",
    "InstanceInfo", "Local", "NoOffersError", "NodeInfo", "Nodes", "NotInTaskError", "Offer", "PendingFunction",
    "PendingGroup", "Plan", "PoolClosedError", "ProvisioningError", "QuotaError", "Rejection", "RemoteFunction",
    "RunPod", "SkywardError", "Spec", "SpecError", "UnknownAcceleratorError", "VastAI", "accelerators",
    "function", "gather", "instance_info", "plan", "shard",
]
