"""Elastic pools: `sky.Nodes(min=1, max=3)` grows under load and shrinks back when idle, through Ray's
v2 autoscaler running in this (the driver's) process, on the local provider and on the simulated AWS
region; nothing is left after the pool ends.

The load is a barrier: three 1-CPU calls that each wait until all three run at once, so the pool
must hold three 1-CPU nodes at the same time and the demand lasts until the new nodes have joined.
"""

from __future__ import annotations

import os
import time

import pytest

import skyward_ray as sky
from node_providers.local.process_host import end_processes, processes_with_marker
from tests.conftest import MARKS_NAMESPACE
from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws
from tests.timeouts import SIM_BOOT_TIMEOUT

IDLE_TIMEOUT = 3.0


@sky.function
def meet(tag: str, parties: int) -> str:
    """Mark this call's start, wait (bounded) until `parties` calls of `tag` run at once; say where it ran."""
    import os
    import time

    from ray.experimental import internal_kv  # a helper of the tests cannot be imported on a node

    node = sky.instance_info().instance_id
    namespace = MARKS_NAMESPACE.decode()
    internal_kv._internal_kv_put(f"{tag}:{node}:{os.getpid()}", b"1", namespace=namespace)
    deadline = time.monotonic() + 150
    while len(internal_kv._internal_kv_list(f"{tag}:", namespace=namespace)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(internal_kv._internal_kv_list(f'{tag}:', namespace=namespace))} "
                               f"of {parties} calls ran at once")
        time.sleep(0.1)
    return node


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll `condition` until true; return the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout:g}s"
        time.sleep(0.25)
    return time.monotonic() - started


def grow_and_shrink(pool: sky.Compute, tag: str, boot_timeout: float) -> tuple[str, list[str]]:
    """The scenario both providers run: 1 node, 3 at once under load, back to 1 when idle."""
    assert len(pool.nodes) == 1
    head = pool.nodes[0].instance_id
    ran = sky.gather(*[meet(tag, 3) for _ in range(3)]) >> pool
    assert len(set(ran)) == 3 and head in ran, f"the three calls ran on {ran}"
    wait_for(lambda: {n.instance_id for n in pool.nodes} == set(ran), 15, "pool.nodes listing the 3 nodes")
    assert [n.index for n in pool.nodes] == [0, 1, 2]
    workers = sorted(set(ran) - {head})
    wait_for(lambda: [n.instance_id for n in pool.nodes] == [head], IDLE_TIMEOUT + boot_timeout,
             "shrinking back to the head")
    assert sky.gather(*[meet(f"{tag}-after", 1) for _ in range(2)]) >> pool == [head, head]
    return head, workers


def test_nodes_spec_for_elastic_pools():
    nodes = sky.Nodes(min=1, max=8, idle_timeout=120)
    assert (nodes.desired, nodes.floor, nodes.ceiling, nodes.elastic, nodes.idle_timeout) == (1, 1, 8, True, 120)
    assert sky.Nodes(2, max=4).floor == 2 and sky.Nodes(2, max=4).elastic
    assert not sky.Nodes(3).elastic and not sky.Nodes(3, min=3, max=3).elastic
    with pytest.raises(sky.SpecError, match="idle_timeout"):
        sky.Nodes(min=1, max=3, idle_timeout=0)
    with pytest.raises(sky.SpecError, match="max=2 is less than desired=3"):
        sky.Nodes(min=3, max=2)


def test_an_elastic_pool_is_priced_and_counted_at_max_by_the_cost_guard(monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:  # offers from the snapshot, nothing asked of AWS
        monkeypatch.delenv(key)
    for key, value in {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    pool = sky.Compute(provider=sky.AWS(region="us-east-1"), accelerator="H100:8", allocation="on-demand",
                       nodes=sky.Nodes(min=1, max=2))
    price = sky.plan(provider=sky.AWS(region="us-east-1"), accelerator="H100:8", allocation="on-demand").chosen.price
    assert 50 < price <= 100, "one node fits the default $100/h ceiling, two do not"
    with pytest.raises(sky.SpecError, match=rf"2 nodes × \${price:,.2f}/h per node"):
        with pool:
            pass
    with pytest.raises(sky.SpecError, match="nodes=100 .*ceiling of 64 nodes"):
        sky.Compute(nodes=sky.Nodes(min=1, max=100))


def test_a_local_elastic_pool_grows_to_max_under_load_and_shrinks_back_when_idle():
    with sky.Compute(provider=sky.Local(cpus_per_node=1),
                     nodes=sky.Nodes(min=1, max=3, idle_timeout=IDLE_TIMEOUT)) as pool:
        head, workers = grow_and_shrink(pool, "local", boot_timeout=60)
        for worker in workers:  # a worker ended by the autoscaler is a machine gone, all its processes
            wait_for(lambda: not processes_with_marker(worker), 15, f"{worker}'s processes ending")
        assert processes_with_marker(head)
    # the conftest fixture fails the test if any process of the pool outlives it


@sky.function
def where_am_i() -> str:
    return sky.instance_info().instance_id


def test_an_elastic_pool_grows_for_placement_groups_and_actors_and_keeps_requested_nodes():
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=1)
    class Where:
        def instance(self) -> str:
            import skyward_ray

            return skyward_ray.instance_info().instance_id

    with sky.Compute(provider=sky.Local(cpus_per_node=1),
                     nodes=sky.Nodes(min=1, max=3, idle_timeout=IDLE_TIMEOUT)) as pool:
        group = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")  # a gang: two nodes at once
        ray.get(group.ready(), timeout=120)
        wait_for(lambda: len(pool.nodes) == 2, 15, "pool.nodes listing the placement group's 2 nodes")
        remove_placement_group(group)
        actors = [Where.remote() for _ in range(3)]  # three 1-CPU actors: three nodes
        ran = ray.get([actor.instance.remote() for actor in actors], timeout=120)
        assert len(set(ran)) == 3
        wait_for(lambda: {n.instance_id for n in pool.nodes} == set(ran), 15, "pool.nodes listing the 3 nodes")
        pool.request_nodes(3)  # kept although idle, until the request is withdrawn
        for actor in actors:
            ray.kill(actor)
        time.sleep(IDLE_TIMEOUT + 4)
        assert {n.instance_id for n in pool.nodes} == set(ran)
        pool.request_nodes(0)
        wait_for(lambda: len(pool.nodes) == 1, IDLE_TIMEOUT + 60, "shrinking back once the request is withdrawn")
        assert where_am_i() >> pool == pool.nodes[0].instance_id


def test_request_nodes_needs_an_elastic_pool():
    with pytest.raises(sky.SpecError, match="needs an elastic pool.*fixed size of 2"):
        sky.Compute(nodes=2).request_nodes(3)
    with pytest.raises(sky.PoolClosedError):
        sky.Compute(nodes=sky.Nodes(min=1, max=2)).request_nodes(2)


def test_a_lost_worker_of_an_elastic_pool_is_replaced_to_keep_min():
    with sky.Compute(provider=sky.Local(cpus_per_node=1),
                     nodes=sky.Nodes(2, min=2, max=3, idle_timeout=IDLE_TIMEOUT)) as pool:
        head, lost = [n.instance_id for n in pool.nodes]
        end_processes(processes_with_marker(lost), grace=0.5)  # the machine is gone, as a spot interruption
        wait_for(lambda: len(pool.nodes) == 2 and lost not in {n.instance_id for n in pool.nodes}, 90,
                 "a new worker replacing the lost one")
        assert [n.index for n in pool.nodes] == [0, 1]
        ran = sky.gather(*[meet("replaced", 2) for _ in range(2)]) >> pool
        assert sorted(ran) == sorted(n.instance_id for n in pool.nodes) and lost not in ran


def test_leaving_an_elastic_pool_while_it_grows_leaves_nothing():
    with sky.Compute(provider=sky.Local(cpus_per_node=1),
                     nodes=sky.Nodes(min=1, max=3, idle_timeout=IDLE_TIMEOUT)) as pool:
        sky.gather(*[meet("leaving", 3) for _ in range(3)]) > pool  # sent, never awaited
        wait_for(lambda: processes_with_marker(f"{pool.name}-1") or processes_with_marker(f"{pool.name}-2"), 30,
                 "the autoscaler starting a worker")
    # the conftest fixture fails the test if a worker being started outlives the pool


# -- the simulated AWS region --------------------------------------------------------------------
REGION = "us-east-1"


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    with simulated_aws(REGION) as (sim, hosts), aws_environment(sim.client_env()):
        yield sim, hosts, str(tmp_path_factory.mktemp("keys"))
        hosts.wait_idle(timeout=30)  # a machine EC2 has terminated may take a moment to stop here
        assert hosts.stop() == [], "a simulated machine was still running when the module ended"


def test_an_aws_elastic_pool_grows_to_max_and_shrinks_back_and_leaves_nothing(region):
    sim, hosts, keys = region
    provider = sky.AWS(region=REGION, key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
    since = time.time()
    with sky.Compute(provider=provider, accelerator="T4", allocation="on-demand", boot_timeout=SIM_BOOT_TIMEOUT,
                     nodes=sky.Nodes(min=1, max=3, idle_timeout=IDLE_TIMEOUT)) as pool:
        name = pool.name
        head, workers = grow_and_shrink(pool, "aws", boot_timeout=90)
        calls = [c for c in sim.calls("RunInstances", since=since) if name in c.params.values() and c.status == 200]
        launched = sum(int(c.params["MaxCount"]) for c in calls)
        # The head, then two workers started by the autoscaler (in one RunInstances when it asks for both at
        # once). A simulated worker may also crash at boot and be replaced by the autoscaler: workers booting
        # at once share the head's Ray temp dir on the simulator's one filesystem (Ray 2.60 node.py:762-771)
        # and can race for a socket name.
        assert launched >= 3, [(c.params["MinCount"], c.params["MaxCount"]) for c in calls]
        wait_for(lambda: [i["InstanceId"] for i in sim.live_instances(cluster=name)] == [head], 60,
                 "the idle workers' instances terminating")
        ended = {i["InstanceId"] for i in sim.instances(cluster=name, states=("terminated",))}
        assert set(workers) <= ended and len(ended) == launched - 1
    assert sim.live_instances(cluster=name) == []
    assert sim.security_groups(cluster=name) == [] and sim.key_pairs() == []
    assert hosts.wait_idle() == []


def test_the_serving_statuses_are_rays():
    from ray.core.generated.autoscaler_pb2 import NodeStatus

    from skyward_ray.cluster import elastic

    assert elastic._SERVING == (NodeStatus.RUNNING, NodeStatus.IDLE)
