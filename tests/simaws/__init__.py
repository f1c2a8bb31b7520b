"""Simulated AWS for tests and benches: moto behind a fault-injecting front, plus a host simulator.

    with simulated_aws() as (sim, hosts):
        with sky.Compute(provider=sky.AWS(region="us-east-1", ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS), ...) as pool:

`simulated_aws` points this process's boto3 at the simulator (and restores the environment after),
and ends every simulated machine on the way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.environment import scoped_environment
from tests.simaws.hosts import HostSimulator
from tests.simaws.server import Fault, SimAWS
from tests.simcloud import NODE_SETTINGS, simulated_cloud

# Hosts log in as root (the simulated image's user); the SSH rule's source is the driver's address
# on the simulated network (`hosts.ssh_cidr`), so tests pass it per region.
SIM_SETTINGS = {**NODE_SETTINGS, "ssh_user": "root"}

__all__ = ["Fault", "HostSimulator", "SIM_SETTINGS", "SimAWS", "simulated_aws", "aws_environment"]


def aws_environment(env: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """Set AWS variables for the block; restore (or remove) them after. Other AWS_* are hidden meanwhile."""
    return scoped_environment(env, hide_prefixes=("AWS_",))


@contextlib.contextmanager
def simulated_aws(region: str = "us-east-1", boot_delay: float = 0.0,
                  key_dir: str | None = None) -> Iterator[tuple[SimAWS, HostSimulator]]:
    with simulated_cloud("the simulated AWS region", SimAWS(region),
                         lambda sim: HostSimulator(sim, boot_delay=boot_delay), aws_environment) as (sim, hosts):
        assert hosts is not None
        yield sim, hosts
