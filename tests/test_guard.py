"""The cost guard and the boot-script generator's validation: refused before anything exists.

Every refusal here is checked from the outside: a `SpecError` whose message names the total, the
ceiling and both ways to raise it, and no pool directory, state file or process left behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess

import pytest

import skyward_ray as sky
from node_providers.local.cloud import check_capacity
from skyward_ray.cluster import pool_state
from skyward_ray.errors import SpecError
from skyward_ray.node import startup_script
from skyward_ray.planning import cost_guard
from tests.conftest import pool_processes

NO_AWS_CREDENTIALS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                      "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def _runtime_entries() -> set[str]:
    """Local pool directories and pool state files under this user's runtime root."""
    root = pool_state.runtime_root()
    records = {f"pools/{p.name}" for p in (root / "pools").glob("*")} if (root / "pools").is_dir() else set()
    return {p.name for p in root.iterdir() if p.name != "pools" and not p.name.startswith("pytest-")} | records


@pytest.fixture
def nothing_created():
    """The test must leave no new pool directory, state file or pool process."""
    before, processes = _runtime_entries(), {p.pid for p in pool_processes()}
    yield
    assert _runtime_entries() - before == set(), "a pool directory or state file was created"
    assert {p.pid for p in pool_processes()} - processes == set(), "a pool process was started"


@pytest.fixture
def no_aws_credentials(monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in NO_AWS_CREDENTIALS.items():
        monkeypatch.setenv(key, value)


# -- the cost guard --------------------------------------------------------------------------------
def test_a_thousand_local_nodes_are_refused_by_the_node_ceiling(nothing_created):
    with pytest.raises(SpecError) as caught:
        with sky.Compute(nodes=1000):
            pass
    message = str(caught.value)
    assert "nodes=1000" in message and "64 nodes per pool" in message and "Nothing was created" in message
    assert "max_pool_nodes=1000" in message and "SKYWARD_MAX_POOL_NODES=1000" in message


def test_the_node_ceiling_is_raised_per_pool_or_by_the_environment(monkeypatch):
    assert cost_guard.ceilings(max_pool_nodes=500).nodes == 500
    monkeypatch.setenv("SKYWARD_MAX_POOL_NODES", "200")
    assert cost_guard.ceilings().nodes == 200 and cost_guard.ceilings().nodes_source == "SKYWARD_MAX_POOL_NODES"
    assert cost_guard.ceilings(max_pool_nodes=300).nodes == 300  # the keyword wins over the environment
    with pytest.raises(SpecError, match=r"nodes=250 .*ceiling of 200 nodes .*set by \$SKYWARD_MAX_POOL_NODES"):
        sky.Compute(nodes=250)
    monkeypatch.setenv("SKYWARD_MAX_POOL_NODES", "lots")
    with pytest.raises(SpecError, match="SKYWARD_MAX_POOL_NODES='lots' is not a number"):
        sky.Compute(nodes=2)


def test_a_pool_over_the_hourly_ceiling_is_refused_naming_the_total_the_cap_and_the_fixes(no_aws_credentials,
                                                                                          nothing_created):
    pool = sky.Compute(provider=sky.AWS(region="us-east-1"), accelerator="H100:8", nodes=2, allocation="on-demand")
    with pytest.raises(SpecError) as caught:
        with pool:
            pass
    message = str(caught.value)
    price = pool.plan.chosen.price
    assert price * 2 > 100
    assert f"${price * 2:,.2f}/h in total (2 nodes × ${price:,.2f}/h per node" in message
    assert "ceiling of $100.00/h per pool (the default)" in message and "Nothing was created" in message
    assert "max_pool_hourly_cost=" in message and "SKYWARD_MAX_POOL_HOURLY_COST=" in message
    assert "max_hourly_cost= caps the price per node" in message


def test_the_hourly_ceiling_set_by_the_environment_is_named_as_such(no_aws_credentials, nothing_created, monkeypatch):
    monkeypatch.setenv("SKYWARD_MAX_POOL_HOURLY_COST", "0.01")
    with pytest.raises(SpecError, match=r"ceiling of \$0\.01/h per pool \(set by \$SKYWARD_MAX_POOL_HOURLY_COST\)"):
        with sky.Compute(provider=sky.AWS(region="us-east-1"), accelerator="T4", nodes=1):
            pass


def test_hourly_ceiling_arithmetic_and_precedence(monkeypatch):
    limits = cost_guard.ceilings(max_pool_hourly_cost=50)
    cost_guard.check_pool(5, 10.0, limits)  # exactly at the ceiling is allowed
    with pytest.raises(SpecError, match=r"\$50\.01/h in total"):
        cost_guard.check_pool(1, 50.01, limits)
    monkeypatch.setenv("SKYWARD_MAX_POOL_HOURLY_COST", "inf")
    cost_guard.check_pool(64, 1e6, cost_guard.ceilings())
    assert cost_guard.ceilings(max_pool_hourly_cost=10).hourly_cost == 10  # the keyword wins
    for bad in (0, -1, "10", True):
        with pytest.raises(SpecError, match="max_pool_hourly_cost"):
            cost_guard.ceilings(max_pool_hourly_cost=bad)  # type: ignore[arg-type]


def test_the_local_provider_refuses_more_nodes_than_this_machine_can_hold(nothing_created):
    nodes = 2 * (os.cpu_count() or 1) + 1
    with pytest.raises(SpecError) as caught:
        with sky.Compute(nodes=nodes, max_pool_nodes=max(nodes, 64)):
            pass
    assert f"nodes={nodes} is more than this machine can run" in str(caught.value)
    assert "Nothing was started" in str(caught.value)
    with pytest.raises(SpecError, match=r"2 CPUs carry at most 4 local nodes"):
        check_capacity(5, 100 * 1024**2, cpus=2, available_memory=64 * 1024**3)
    with pytest.raises(SpecError, match=r"GiB of available memory holds at most 3 local nodes"):
        check_capacity(4, 100 * 1024**2, cpus=64, available_memory=2 * 1024**3)
    check_capacity(4, 100 * 1024**2, cpus=2, available_memory=64 * 1024**3)


def test_max_hourly_cost_is_per_node_in_every_message():
    with pytest.raises(sky.NoOffersError) as caught:
        sky.plan(provider=sky.AWS(region="us-east-1"), accelerator="H100:8", max_hourly_cost=5)
    assert "is over max_hourly_cost $5.00/h per node" in str(caught.value)
    assert "(USD per node per hour)" in str(caught.value)


# -- the boot script: hostile values ---------------------------------------------------------------
def _boot(**changes) -> startup_script.NodeBoot:
    fields = {"role": "worker", "cluster_name": "sky-0123abcd", "auth_token": "ab" * 32, "head_ip": "10.0.0.1",
              "requirements": [], **changes}
    return startup_script.NodeBoot(**fields)


HOSTILE = ["x\nrm -rf ~", "$(touch /tmp/pwned)", "a;b", "a'b", 'a"b', "`id`", "a b\n", "a&&b"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_and_addresses_are_refused(value):
    for changes in ({"cluster_name": value}, {"head_ip": value}, {"env": {value: "1"}},
                    {"node_type_name": value}, {"region": value}, {"labels": {"skyward/x": value}},
                    {"labels": {value: "1"}}, {"ray_version": value}, {"auth_token": value}):
        with pytest.raises(SpecError, match="boot script: .* is not allowed"):
            startup_script.render(_boot(**changes))


def test_addresses_are_checked_as_addresses():
    assert "--address=10.1.2.3:6379" in startup_script.render(_boot(head_ip="10.1.2.3"))
    assert "--address=fd00::1:6379" in startup_script.render(_boot(head_ip="fd00::1"))
    # a private network's DNS name (RunPod's global network) is an address too
    assert "--address=4rynev041mziag.runpod.internal:6379" in startup_script.render(
        _boot(head_ip="4rynev041mziag.runpod.internal"))
    for bad in ("10.1.2", "999.1.1.1", "-host.example.com", "a..b", "10.0.0.1 --block"):
        with pytest.raises(SpecError, match="head_ip"):
            startup_script.render(_boot(head_ip=bad))


def test_hostile_values_end_up_inert(tmp_path):
    """Values (not names) are quoted: the shell sees them as data, and runs nothing from them."""
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker})`touch {marker}`;touch {marker}\n'\"; touch {marker}; echo '"
    script = startup_script.render(_boot(env={"SKYWARD_TEST_VALUE": hostile}, pip=[hostile], apt=[hostile]))
    assert shlex.quote(hostile) in script  # pip and apt packages: quoted the same way
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0  # still one valid script
    # run what the script does before it installs anything: every export, the hostile one among them
    prefix = script[:script.index("\n" + startup_script.APT_MARK)]
    env = {"PATH": os.environ["PATH"], "SKYWARD_INSTANCE_ID": "i-1", "SKYWARD_NODE_IP": "10.0.0.2",
           "SKYWARD_ENV_DIR": str(tmp_path / "env"), "SKYWARD_MACHINE_DIR": str(tmp_path / "machine")}
    # files, not pipes: the script's boot-deadline watcher runs on in the background (its own group, ended below)
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(["bash", "-c", prefix + '\nprintf %s "$SKYWARD_TEST_VALUE"'], stdout=stdout,
                                stderr=stderr, env=env, start_new_session=True)
        try:
            returncode = proc.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert returncode == 0, err.read_text()
    assert out.read_text() == hostile and not marker.exists()


def test_a_token_delivered_in_the_environment_is_never_written_into_the_script():
    script = startup_script.render(_boot(auth_token=""))
    assert 'RAY_AUTH_TOKEN:?' in script and "export RAY_AUTH_TOKEN\n" in script
    with_token = startup_script.render(_boot())
    assert "ab" * 32 in with_token  # clouds without another channel (user data) still get it in the script
