"""Live smoke on Vast.ai: the cheapest 1-instance pool, `>>`, `@`, a pip package, a user helper,
teardown, nothing left. `SKYWARD_LIVE=1` with VAST_API_KEY, or `SKYWARD_LIVE=sim` for the simulated
marketplace."""

from __future__ import annotations

import pytest

import skyward_ray as sky
from tests.live.harness import abandoned_pool_ends_itself, require, smoke

LIVE = require(("VAST_API_KEY",), "Vast.ai")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    if LIVE == "real":
        yield sky.VastAI()
        return
    from tests.simvast import SIM_SETTINGS, ask_row, simulated_vast

    with simulated_vast([ask_row(101, dph_total=0.20, min_bid=0.08)]) as (sim, hosts):
        yield sky.VastAI(api_key=sim.user_key, server_url=sim.url, key_dir=str(tmp_path_factory.mktemp("keys")),
                         live_offers_ttl=0, **SIM_SETTINGS)


def test_cheapest_pool_end_to_end(config):
    smoke(config, accelerator=None if LIVE == "real" else "T4", live=LIVE, boot_timeout=900 if LIVE == "real" else 180)


def test_a_killed_drivers_machine_ends_itself(config):
    """The driver is SIGKILLed (no teardown runs): the pool's machine ends itself once its heartbeat
    stops, and `gc` removes what only a driver would have."""
    abandoned_pool_ends_itself(config, accelerator=None if LIVE == "real" else "T4", live=LIVE,
                               boot_timeout=900 if LIVE == "real" else 180)
