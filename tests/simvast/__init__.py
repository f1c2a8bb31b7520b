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

from tests.simcloud import NODE_SETTINGS, simulated_cloud
from tests.simvast.hosts import VastHosts
from tests.simvast.server import USER_KEY, SimVast, ask_row

SIM_SETTINGS = {**NODE_SETTINGS, "ssh_user": "root"}

__all__ = ["SIM_SETTINGS", "SimVast", "USER_KEY", "VastHosts", "ask_row", "simulated_vast"]


@contextlib.contextmanager
def simulated_vast(asks: list[dict[str, Any]], loading_delay: float = 0.3) -> Iterator[tuple[SimVast, VastHosts]]:
    with simulated_cloud("the simulated Vast.ai hosts", SimVast(asks, loading_delay=loading_delay), VastHosts,
                         api_on_driver_network=True) as (sim, hosts):
        assert hosts is not None
        yield sim, hosts
