"""What every `simulated_<cloud>` context manager does, once: a cloud's fake API and its host simulator
started in the right order, the client environment pointed at the fake for the block, and both
ended on the way out, whatever happened inside it.

    with simulated_cloud("the simulated AWS region", SimAWS(region), HostSimulator, aws_environment) as (sim, hosts):
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tests.simapi import ApiSimulator
from tests.simhost import SimulatedHosts
from tests.simnet import check_available

# Every simulated node shares this small machine: small nodes (a cloud adds its own settings).
NODE_SETTINGS: dict[str, Any] = {
    "num_cpus": 1,
    "simulate_accelerators": True,  # each node "has" the offer's GPUs: Ray schedules GPU tasks on it
    "object_store_memory": 80 * 1024**2,
    "memory": 1024**3,
}

A = TypeVar("A", bound=ApiSimulator)
H = TypeVar("H", bound=SimulatedHosts)


@contextlib.contextmanager
def simulated_cloud(what: str, api: A, hosts: Callable[[A], H] | None,
                    environment: Callable[[dict[str, str]], contextlib.AbstractContextManager[None]] | None = None,
                    api_on_driver_network: bool = False) -> Iterator[tuple[A, H | None]]:
    """`(api, hosts)` for the block. `hosts(api)` makes the host simulator (None: an API without
    machines, which needs no namespaces). `api_on_driver_network`: the API listens on the driver's
    address of the simulated network, so machines reach it there (the hosts start first)."""
    if hosts is not None:
        reason = check_available()
        if reason is not None:
            import pytest  # only a test skips; a bench never gets here without namespaces

            pytest.skip(f"{what} needs network namespaces and sshd: {reason}")
    machines: H | None = None
    try:
        if api_on_driver_network:
            assert hosts is not None
            machines = hosts(api)
            machines.start()
            api.start(host=machines.network.driver_ip)
        else:
            api.start()
        with environment(api.client_env()) if environment is not None else contextlib.nullcontext():
            if machines is None and hosts is not None:
                machines = hosts(api)
                machines.start()
            yield api, machines
    finally:
        if machines is not None:
            machines.stop()
        api.stop()
