"""Real Ray pools on simulated AWS: moto for the API, the host simulator boots each instance's user data.

One 3-node spot pool (its two workers launched by one RunInstances) is shared by the first tests
(in file order; the last of them interrupts a spot worker mid-gather, then the pool is closed and
the account checked for leftovers). A second,
on-demand pool proves the plan walk across a capacity error. The driver process carries
recognisable fake AWS credentials; no instance's user data may contain them.
"""

from __future__ import annotations

import base64
import os
import time

import pytest

import skyward_ray as sky
from tests.conftest import MARKS_NAMESPACE, wait_started
from tests.simaws import SIM_SETTINGS, Fault, aws_environment, simulated_aws
from tests.simaws.hosts import cloud_init_text
from tests.timeouts import SIM_BOOT_TIMEOUT

REGION = "us-east-1"
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIASKYWARDFAKE00042", "AWS_SECRET_ACCESS_KEY": "skywardFakeSecretDoNotLeak0123456789abcd",
           "AWS_SESSION_TOKEN": "skywardFakeSessionTokenDoNotLeak"}


@sky.function
def where() -> dict:
    import os
    import shutil

    info = sky.instance_info()
    return {"node": info.node, "instance_id": info.instance_id, "ip": info.ip, "spot": info.spot,
            "provider": info.provider, "shutdown": shutil.which("shutdown"), "path": os.environ["PATH"].split(":")}


@sky.function
def slow_square(x: int, seconds: float) -> tuple[int, str]:
    from ray.experimental import internal_kv  # the mark wait_started waits for (no helper: nodes import no test module)

    internal_kv._internal_kv_put(f"slow_square:{sky.instance_info().node}:{os.getpid()}:{time.monotonic_ns()}", b"1",
                                 namespace=MARKS_NAMESPACE.decode())
    time.sleep(seconds)
    return x * x, sky.instance_info().instance_id


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    with simulated_aws(REGION) as (sim, hosts), aws_environment({**sim.client_env(), **SECRETS}):
        yield sim, hosts, str(tmp_path_factory.mktemp("keys"))
        assert hosts.stop() == [], "a simulated machine was still running when the module ended"


def tag(params: dict[str, str], key: str) -> str | None:
    """A tag's value in a RunInstances request's form parameters (TagSpecification.1.Tag.N.Key/Value)."""
    for name, value in params.items():
        if name.startswith("TagSpecification.1.Tag.") and name.endswith(".Key") and value == key:
            return params[name[:-len("Key")] + "Value"]
    return None


def provider(region) -> sky.AWS:
    _, hosts, keys = region
    return sky.AWS(region=REGION, key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)


@pytest.fixture(scope="module")
def spot_pool(region):
    sim, hosts, keys = region
    pool = sky.Compute(provider=provider(region), accelerator=sky.accelerators.T4(), nodes=3,
                       allocation="spot-if-available", boot_timeout=SIM_BOOT_TIMEOUT)
    pool.__enter__()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(autouse=True)
def no_leftover_machines(region):
    """Every simulated machine not belonging to an open pool must be gone after each test."""
    from skyward_ray.api.compute import _OPEN_POOLS

    yield
    sim, hosts, _ = region
    keep = {n.instance_id for p in list(_OPEN_POOLS) if p._cluster is not None for n in p._cluster.nodes}
    left = hosts.wait_idle(timeout=15, keep=keep)
    if left:
        hosts.host.terminate(left)
        pytest.fail(f"simulated machines left running: {left}")


def test_three_spot_nodes_run_tasks_on_every_instance_each_with_its_own_index(region, spot_pool):
    sim, _, _ = region
    assert spot_pool.offer.market == "spot" and spot_pool.offer.provider == "aws"
    answers = where() @ spot_pool
    ec2_ids = {i["InstanceId"] for i in sim.instances(("running",), cluster=spot_pool.name)}
    # the two workers came from one RunInstances (one boot script): each worked its index out at boot
    assert [a["node"] for a in answers] == [0, 1, 2]
    assert {a["instance_id"] for a in answers} == ec2_ids and len(ec2_ids) == 3
    assert [a["spot"] for a in answers] == [False, True, True], "the head is on-demand by default; workers are spot"
    assert all(a["provider"] == "aws" for a in answers)
    assert {a["ip"] for a in answers} == {n.ip for n in spot_pool.nodes}
    results = sky.gather(*[slow_square(x, 0.1) for x in range(6)]) >> spot_pool
    assert [r[0] for r in results] == [x * x for x in range(6)]


def test_the_nodes_shutdown_is_the_simulators_shim(region, spot_pool):
    _, hosts, _ = region
    shim_dir = "/usr/local/sbin" if hosts.bare else str(hosts.shim_dir)  # bare: the shim is in the machine's root
    for answer in where() @ spot_pool:
        assert answer["shutdown"] == f"{shim_dir}/shutdown"
        assert answer["path"].index(shim_dir) < answer["path"].index("/usr/sbin")


def _node_index(instance: dict) -> str:
    """An instance's node index as EC2 shows it: its own tag, or its batch's first index plus its launch index."""
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    if "skyward/node-index" in tags:
        return tags["skyward/node-index"]
    return str(int(tags["skyward/first-index"]) + instance["AmiLaunchIndex"])


def test_spot_requests_carry_spot_market_options_and_imdsv2_and_the_head_is_on_demand(region, spot_pool):
    sim, _, _ = region
    calls = [c for c in sim.calls("RunInstances") if spot_pool.name in c.params.values()]
    assert len(calls) == 2, "the head, then both workers in one call"
    [head_call] = [c for c in calls if tag(c.params, "skyward/node-index") == "0"]
    [worker_call] = [c for c in calls if tag(c.params, "skyward/first-index") == "1"]
    assert (head_call.params["MinCount"], head_call.params["MaxCount"]) == ("1", "1")
    assert (worker_call.params["MinCount"], worker_call.params["MaxCount"]) == ("2", "2"), "all or none"
    assert not any(k.startswith("InstanceMarketOptions") for k in head_call.params), "an on-demand head"
    assert worker_call.params["InstanceMarketOptions.MarketType"] == "spot"
    for call in calls:
        assert call.params["MetadataOptions.HttpTokens"] == "required"
        assert call.params["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert call.params["ClientToken"].startswith(spot_pool.name + "-"), "one idempotency token per call"
    assert calls[0].params["ClientToken"] != calls[1].params["ClientToken"]
    lifecycles = {_node_index(i): i.get("InstanceLifecycle") for i in sim.instances(cluster=spot_pool.name)}
    assert lifecycles == {"0": None, "1": "spot", "2": "spot"}


def test_security_group_allows_only_itself_and_ssh_from_the_driver(region, spot_pool):
    sim, hosts, _ = region
    [group] = sim.security_groups(cluster=spot_pool.name)
    rules = {(r["IpProtocol"], r.get("FromPort"), r.get("ToPort"),
              tuple(x["CidrIp"] for x in r["IpRanges"]), tuple(x["GroupId"] for x in r["UserIdGroupPairs"]))
             for r in group["IpPermissions"]}
    assert rules == {("-1", None, None, (), (group["GroupId"],)), ("tcp", 22, 22, (hosts.ssh_cidr,), ())}
    instances = sim.instances(cluster=spot_pool.name)
    assert all([g["GroupId"] for g in i["SecurityGroups"]] == [group["GroupId"]] for i in instances)


def test_no_credential_appears_in_any_user_data(region, spot_pool):
    sim, _, _ = region
    instances = sim.instances()
    assert instances
    for instance in instances:
        value = sim.client().describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]
        text = cloud_init_text(base64.b64decode(value))
        assert "skyward_ray node bootstrap" in text
        for secret in SECRETS.values():
            assert secret not in text, f"{instance['InstanceId']}'s user data carries a credential"
        assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET" not in text


def test_a_spot_interruption_mid_gather_returns_every_result_and_the_node_is_replaced(region, spot_pool):
    sim, _, _ = region
    worker = spot_pool.nodes[1].instance_id
    future = sky.gather(*[slow_square(x, 3.0) for x in range(4)]) > spot_pool
    wait_started(spot_pool, "slow_square", node=1)  # a call is running on the worker: interrupt it now
    sim.terminate(worker)
    results = future.result(timeout=180)
    assert [r[0] for r in results] == [0, 1, 4, 9]
    assert sim.instances(cluster=spot_pool.name, states=("terminated",))[0]["InstanceId"] == worker
    deadline = time.monotonic() + 120
    while not spot_pool.replaced and time.monotonic() < deadline:
        time.sleep(0.5)
    assert spot_pool.replaced and spot_pool.replaced[0][0] == worker
    replacement = spot_pool.replaced[0][1]
    assert [n.instance_id for n in spot_pool.nodes][1] == replacement
    assert replacement in [i["InstanceId"] for i in sim.live_instances(cluster=spot_pool.name)]
    assert [w["instance_id"] for w in where() @ spot_pool] == [n.instance_id for n in spot_pool.nodes]


def test_leaving_the_pool_leaves_no_instance_security_group_or_key_pair(region, spot_pool):
    sim, hosts, keys = region
    name = spot_pool.name
    spot_pool.close()
    # the interrupted worker (earlier in this module) is billed until it was lost; its replacement since
    assert spot_pool.cost_summary.startswith("4 machines, ") and spot_pool.cost > 0
    assert sim.live_instances(cluster=name) == []
    assert sim.security_groups(cluster=name) == [] and sim.key_pairs() == []
    assert hosts.wait_idle() == []


def test_a_capacity_error_moves_to_the_next_offer_and_the_failed_attempt_leaves_nothing(region):
    sim, hosts, keys = region
    first = sky.plan(provider=provider(region), accelerator="T4", nodes=2, allocation="on-demand").offers[0]

    def worker_of_first(params: dict[str, str]) -> bool:  # the head gets one; then the type runs out
        return params.get("InstanceType") == first.instance_type and "worker" in params.values()

    since = time.time()
    with sim.fault(Fault("RunInstances", code="InsufficientInstanceCapacity", when=worker_of_first,
                         message=f"We currently do not have sufficient {first.instance_type} capacity")) as fault:
        with sky.Compute(provider=provider(region), accelerator="T4", nodes=2, allocation="on-demand",
                         boot_timeout=SIM_BOOT_TIMEOUT) as pool:
            assert fault.hits == 1
            assert pool.offer.instance_type != first.instance_type and pool.offer.market == "on-demand"
            assert isinstance(pool.failures[0][1], sky.CapacityError) and pool.failures[0][0].instance_type == first.instance_type
            assert len(where() @ pool) == 2
            attempts = [c for c in sim.calls("RunInstances", since=since) if c.params["InstanceType"] == first.instance_type]
            assert [c.status for c in attempts] == [200, 400], "head launched, then the worker found no capacity"
            failed_cluster = tag(attempts[0].params, "skyward/cluster")
            assert failed_cluster != pool.name
            assert sim.live_instances(cluster=failed_cluster) == [], "the failed attempt's head was terminated"
            assert sim.security_groups(cluster=failed_cluster) == []
            [pair] = sim.key_pairs()  # the pool's own, under its random name
            assert pair["KeyName"].startswith(f"skyward-{pool.name}-")
            assert all("InstanceLifecycle" not in i for i in sim.instances(cluster=pool.name))
            runs = [c for c in sim.calls("RunInstances", since=since) if pool.name in c.params.values()]
            assert len(runs) == 2 and not any(k.startswith("InstanceMarketOptions") for c in runs for k in c.params)
    assert sim.live_instances() == [] and sim.security_groups() == [] and sim.key_pairs() == []


def test_a_spot_quota_skips_the_providers_spot_offers_not_every_zone_in_turn(region):
    sim, hosts, keys = region
    since = time.time()
    spot = Fault("RunInstances", code="MaxSpotInstanceCountExceeded", when=lambda p: "InstanceMarketOptions.MarketType" in p,
                 message="Max spot instance count exceeded")
    on_demand = Fault("RunInstances", code="InsufficientInstanceCapacity", message="no capacity (injected)",
                      when=lambda p: "InstanceMarketOptions.MarketType" not in p)
    with sim.fault(spot), sim.fault(on_demand):
        with pytest.raises(sky.ProvisioningError) as caught:
            with sky.Compute(provider=provider(region), accelerator="T4", nodes=1, allocation="spot-if-available"):
                pass
    assert spot.hits == 1, "one spot refusal for the quota, not one per spot offer"
    assert on_demand.hits >= 1, "the on-demand offers were still tried"
    assert "SpotQuotaError" in str(caught.value) and "spot instance limit" in str(caught.value)
    assert sim.live_instances() == [] and sim.security_groups() == [] and sim.key_pairs() == []
    assert all(c.status == 400 for c in sim.calls("RunInstances", since=since))
