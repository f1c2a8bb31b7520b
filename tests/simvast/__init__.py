"""A local Vast.ai for tests: the REST fake (`server.py`) and its host simulator (`hosts.py`).

    with simulated_vast(asks) as (sim, hosts):
        with sky.Compute(provider=sky.VastAI(api_key=sim.user_key, server_url=sim.url, **SIM_SETTINGS), ...):

The fake listens on the driver's address on the simulated public network, so both this process
(the SDK) and the simulated instances (their self-destroy call) reach it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tests.simnet import check_available
from tests.simvast.hosts import VastHosts
from tests.simvast.server import USER_KEY, SimVast, ask_row

SIM_SETTINGS = {
    "num_cpus": 1,
    "simulate_accelerators": True,
    "object_store_memory": 80 * 1024**2,
    "memory": 1024**3,
    "ssh_user": "root",
}

__all__ = ["SIM_SETTINGS", "SimVast", "USER_KEY", "VastHosts", "ask_row", "simulated_vast"]


@contextlib.contextmanager
def simulated_vast(asks: list[dict[str, Any]], loading_delay: float = 0.3) -> Iterator[tuple[SimVast, VastHosts]]:
    reason = check_available()
    if reason is not None:
        import pytest

        pytest.skip(f"the simulated Vast.ai hosts need network namespaces and sshd: {reason}")
    sim = SimVast(asks, loading_delay=loading_delay)
    hosts = VastHosts(sim)
    try:
        hosts.start()
        sim.start(host=hosts.network.driver_ip)
        yield sim, hosts
    finally:
        hosts.stop()
        sim.stop()
