"""Live smoke on RunPod: the cheapest 1-pod pool, `>>`, `@`, a pip package, a user helper, teardown,
nothing left. `SKYWARD_LIVE=1` with RUNPOD_API_KEY, or `SKYWARD_LIVE=sim` for the simulated RunPod."""

from __future__ import annotations

import pytest

import skyward_ray as sky
from tests.live.harness import abandoned_pool_ends_itself, require, smoke

LIVE = require(("RUNPOD_API_KEY",), "RunPod")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    if LIVE == "real":
        yield sky.RunPod()
        return
    from tests.simrunpod import SIM_SETTINGS, simulated_runpod

    with simulated_runpod() as (sim, hosts):
        yield sky.RunPod(key_dir=str(tmp_path_factory.mktemp("keys")), **SIM_SETTINGS)


def test_cheapest_pool_end_to_end(config):
    smoke(config, accelerator=None if LIVE == "real" else "RTX4090", live=LIVE,
          boot_timeout=900 if LIVE == "real" else 180)


def test_a_killed_drivers_machine_ends_itself(config):
    """The driver is SIGKILLed (no teardown runs): the pool's machine ends itself once its heartbeat
    stops, and `gc` removes what only a driver would have."""
    abandoned_pool_ends_itself(config, accelerator=None if LIVE == "real" else "RTX4090", live=LIVE,
                               boot_timeout=900 if LIVE == "real" else 180)
