"""Ray's dashboard for any pool (`sky.Compute(dashboard=True)`): reachable at `pool.dashboard_url`,
guarded by the pool's token, whose file (0600) the start line names and which is never printed.

A local pool reaches its head's dashboard directly; a simulated-AWS pool through a second SSH
tunnel to the head (only port 22 is open). `ray job submit` through `skyward-ray env` on a detached
pool started with `up --dashboard` is tested with the detached pools (tests/test_detached.py).
One pool boot per test.
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import skyward_ray as sky
from tests.simnet.probes import tcp_connects
from tests.timeouts import SIM_BOOT_TIMEOUT


@sky.function
def double(x: int) -> int:
    return 2 * x


def status_of(url: str, token: str | None) -> int:
    """The HTTP status of GET `url`, with the pool's token as Ray's dashboard wants it, or without."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def token_file_named_in(output: str) -> Path:
    line = next(line for line in output.splitlines() if "dashboard" in line and "token in " in line)
    return Path(line.split("token in ", 1)[1].split(";", 1)[0].strip())


def check_dashboard(pool: sky.Compute, output: str) -> Path:
    """The dashboard answers with the token and refuses without; the token is in a 0600 file, not printed."""
    url = pool.dashboard_url
    assert url is not None and url.startswith("http://127.0.0.1:"), url
    assert url in output, output
    token = os.environ["RAY_AUTH_TOKEN"]  # the pool's, set in this process while it is open
    assert token not in output, "the token is never printed"
    path = token_file_named_in(output)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == token
    assert status_of(f"{url}/api/version", token) == 200
    assert status_of(f"{url}/api/version", None) in (401, 403), "the dashboard refuses a request without the token"
    return path


def test_a_local_pool_with_dashboard_answers_at_its_url_with_the_token(caplog):
    caplog.set_level(logging.INFO, logger="skyward_ray")  # the console's lines (quiet in tests) as log records
    with sky.Compute(nodes=1, dashboard=True) as pool:
        path = check_dashboard(pool, caplog.text)
        assert double(21) >> pool == 42
    assert not path.exists(), "the token file goes with the pool"
    with sky.Compute(nodes=1) as pool:
        assert pool.dashboard_url is None, "off by default"


def test_a_simulated_aws_pool_with_dashboard_answers_through_the_tunnel(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="skyward_ray")
    from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws

    with simulated_aws("us-east-1") as (sim, hosts), aws_environment(sim.client_env()):
        config = sky.AWS(region="us-east-1", key_dir=str(tmp_path), ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
        with sky.Compute(provider=config, accelerator="T4", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT, dashboard=True) as pool:
            path = check_dashboard(pool, caplog.text)
            # reached through the tunnel only: from the driver, the head's public address answers on SSH
            # and not on the dashboard's port (its private one is not routed from here at all)
            head = hosts.sim_hosts[pool.nodes[0].instance_id]
            assert tcp_connects(head.public_ip, 22) and not tcp_connects(head.public_ip, 8265)
        assert not path.exists()
        assert hosts.wait_idle() == []


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
