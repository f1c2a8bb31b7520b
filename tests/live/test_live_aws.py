"""Live smoke on AWS: the cheapest 1-node pool (a spot GPU where one is cheapest), `>>`, `@`, a pip
package, a user helper, teardown, nothing left; then the same on
two nodes the cloud networks. `SKYWARD_LIVE=1` with AWS credentials (the
configured region), or `SKYWARD_LIVE=sim` for the simulated region."""

from __future__ import annotations

import pytest

import skyward_ray as sky
from tests.live.harness import abandoned_pool_ends_itself, require, smoke

LIVE = require(("AWS_ACCESS_KEY_ID", "AWS_PROFILE"), "AWS")
REGION = "us-east-1"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    if LIVE == "real":
        yield sky.AWS()
        return
    from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws

    with simulated_aws(REGION) as (sim, hosts), aws_environment(sim.client_env()):
        yield sky.AWS(region=REGION, key_dir=str(tmp_path_factory.mktemp("keys")), ssh_cidr=hosts.ssh_cidr,
                      **SIM_SETTINGS)
        assert hosts.stop() == [], "a simulated machine was still running"


def test_cheapest_pool_end_to_end(config):
    smoke(config, accelerator=None if LIVE == "real" else "T4", live=LIVE, boot_timeout=900 if LIVE == "real" else 180)


def test_two_networked_nodes(config):
    """Two nodes in the cloud's own network (one security group that admits itself): the worker
    joins the head, and `@` runs on both."""
    smoke(config, accelerator=None if LIVE == "real" else "T4", live=LIVE, boot_timeout=900 if LIVE == "real" else 240,
          nodes=2)


def test_a_killed_drivers_machine_ends_itself(config):
    """The driver is SIGKILLed (no teardown runs): the pool's machine ends itself once its heartbeat
    stops, and `gc` removes what only a driver would have."""
    abandoned_pool_ends_itself(config, accelerator=None if LIVE == "real" else "T4", live=LIVE,
                               boot_timeout=900 if LIVE == "real" else 180)
