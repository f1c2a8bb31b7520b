"""A fake RunPod for tests and benches: a GraphQL API the real runpod SDK talks to, plus a pod host simulator.

    with simulated_runpod() as (sim, hosts):
        with sky.Compute(provider=sky.RunPod(**SIM_SETTINGS), accelerator="RTX4090") as pool: ...

`simulated_runpod` points this process's SDK at the fake (`RUNPOD_API_BASE_URL`, `RUNPOD_API_KEY`;
restored after) and ends every simulated pod on the way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.environment import scoped_environment
from tests.simcloud import NODE_SETTINGS, simulated_cloud
from tests.simrunpod.hosts import PodHosts
from tests.simrunpod.server import BID_MESSAGE, CAPACITY_MESSAGE, USER_KEY, CapacityFault, SimRunPod

SIM_SETTINGS = {**NODE_SETTINGS, "live_offers_ttl": 0}

__all__ = ["BID_MESSAGE", "CAPACITY_MESSAGE", "CapacityFault", "PodHosts", "SIM_SETTINGS", "SimRunPod", "USER_KEY",
           "runpod_environment", "simulated_runpod"]


def runpod_environment(env: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """Set RunPod variables for the block (the SDK's API address and key hidden otherwise); restore them after."""
    return scoped_environment(env, hide_prefixes=("RUNPOD_API_BASE_URL", "RUNPOD_API_KEY"))


@contextlib.contextmanager
def simulated_runpod(boot_delay: float = 0.0, with_hosts: bool = True) -> Iterator[tuple[SimRunPod, PodHosts | None]]:
    hosts = (lambda sim: PodHosts(sim, boot_delay=boot_delay)) if with_hosts else None
    with simulated_cloud("the simulated RunPod pods", SimRunPod(), hosts, runpod_environment) as pair:
        yield pair
