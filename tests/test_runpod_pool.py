"""Real Ray pools on the fake RunPod: the real SDK against the fake API, each pod's container command
booted as an isolated machine (tests.simrunpod), the driver reaching the head through the SSH
tunnel to the pod's mapped public port with the pinned host key.

The driver process carries the fake account's user key (RUNPOD_API_KEY); no pod may see it.
"""

from __future__ import annotations

import time

import pytest

import skyward_ray as sky
from tests.simnet import tcp_connects
from tests.simrunpod import SIM_SETTINGS, USER_KEY, simulated_runpod
from tests.timeouts import SIM_BOOT_TIMEOUT

GPU = "NVIDIA GeForce RTX 4090"


@sky.function
def where() -> dict:
    import os

    info = sky.instance_info()
    return {"node": info.node, "instance_id": info.instance_id, "ip": info.ip, "spot": info.spot,
            "pod_id": os.environ.get("RUNPOD_POD_ID"), "key": os.environ.get("RUNPOD_API_KEY")}


@pytest.fixture(scope="module")
def account(tmp_path_factory):
    with simulated_runpod() as (sim, hosts):
        yield sim, hosts, str(tmp_path_factory.mktemp("keys"))
        assert hosts.stop() == [], "a simulated pod was still running when the module ended"


@pytest.fixture
def fake(account):
    sim, hosts, keys = account
    yield sim, hosts, keys
    sim.clear_faults()
    assert sim.live_pods() == [], "a pod was left in the account"
    assert hosts.wait_idle() == [], "a simulated pod machine was left running"


def runpod(keys: str) -> sky.RunPod:
    return sky.RunPod(key_dir=keys, **SIM_SETTINGS)


def test_a_one_node_pool_runs_a_task_through_the_ssh_tunnel_and_leaves_no_pod(fake):
    sim, hosts, keys = fake
    started = time.monotonic()
    with sky.Compute(provider=runpod(keys), accelerator="RTX4090", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT) as pool:
        [answer] = where() @ pool
        first_result = time.monotonic() - started
        assert pool.offer.provider == "runpod" and pool.offer.instance_type == GPU
        [pod] = sim.live_pods()
        assert answer["instance_id"] == answer["pod_id"] == pod.id
        assert answer["key"] == pod.pod_key and answer["key"] != USER_KEY, "the pod holds only its own key"
        [mapped] = [p for p in pod.runtime["ports"] if p["privatePort"] == 22]
        assert mapped["isIpPublic"] and mapped["publicPort"] != 22
        assert tcp_connects(mapped["ip"], mapped["publicPort"]), "sshd answers at the mapped public port"
        assert not tcp_connects(mapped["ip"], 22), "the container's port 22 is not public itself"
    print(f"\nrunpod 1-node pool: first result {first_result:.1f}s after Compute() "
          f"(container start {hosts.boot_seconds[pod.id]:.2f}s after placement)")
    assert sim.live_pods() == []


def test_a_two_node_pool_on_the_global_network_uses_both_pods(fake):
    sim, hosts, keys = fake
    with sky.Compute(provider=runpod(keys), accelerator="RTX4090", nodes=2, allocation="on-demand",
                     boot_timeout=SIM_BOOT_TIMEOUT) as pool:
        answers = where() @ pool
        pods = {p.id: p for p in sim.live_pods()}
        assert [a["node"] for a in answers] == [0, 1]
        assert {a["instance_id"] for a in answers} == set(pods) and len(pods) == 2
        assert all(p.global_network and not p.interruptible for p in pods.values())
        assert {a["ip"] for a in answers} == {hosts.sim_hosts[i].private_ip for i in pods}, "Ray runs on the private network"
        lost = pool.nodes[1].instance_id
        sim.interrupt(lost)  # RunPod takes the worker back: the pod shows EXITED
        deadline = time.monotonic() + 180
        while not pool.replaced and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pool.replaced and pool.replaced[0][0] == lost
        again = where() @ pool
        assert [a["node"] for a in again] == [0, 1] and lost not in {a["instance_id"] for a in again}
        assert lost in sim.ended, "the EXITED pod was terminated, not left billing its disk"
    assert sim.live_pods() == []


def test_a_capacity_error_on_the_first_offer_moves_to_the_next_and_leaves_nothing(fake):
    sim, hosts, keys = fake
    sim.fail_capacity(GPU, times=1)  # the first launch (the cheapest offer) finds none
    with sky.Compute(provider=runpod(keys), accelerator="RTX4090", nodes=1, allocation="spot-if-available",
                     boot_timeout=SIM_BOOT_TIMEOUT) as pool:
        assert isinstance(pool.failures[0][1], sky.CapacityError)
        assert "no longer any instances available" in str(pool.failures[0][1])
        failed = pool.failures[0][0]
        assert failed != pool.offer and failed.price <= pool.offer.price
        [answer] = where() @ pool
        assert answer["spot"] == (pool.offer.market == "spot")
        assert [p.id for p in sim.live_pods()] == [answer["instance_id"]], "the failed attempt left no pod"
        assert sim.live_pods()[0].gpu_count == pool.offer.count
    deploys = [c for c in sim.calls() if c.operation in ("podRentInterruptable", "podFindAndDeployOnDemand")][-2:]
    assert [c.status for c in deploys] == [200, 200] and "bidPerGpu" in deploys[0].query


def resolve(hosts, pod_id: str, name: str) -> str | None:
    """The address `name` has inside pod `pod_id` (its /etc/hosts: a bare pod's own, in its root; else the
    file `ip netns exec` binds over the host's), None when it has none."""
    if hosts.bare:
        text = hosts.rootfs(pod_id).written("/etc/hosts").read_text()
        return next((line.split()[0] for line in text.splitlines() if name in line.split()[1:]), None)
    done = hosts.sim_hosts[pod_id].call(["getent", "hosts", name])
    return done.stdout.split()[0] if done.returncode == 0 else None


def test_only_pods_on_the_global_network_reach_each_other(fake):
    """Pods placed straight through the API (the container runs a plain TCP server): two made through
    REST with `globalNetworking` reach each other by `<pod id>.runpod.internal`; a third made through
    GraphQL (which has no such field) reaches neither."""
    sim, hosts, keys = fake
    import requests
    from runpod.api.graphql import run_graphql_query
    from runpod.api.mutations.pods import generate_pod_deployment_mutation

    headers = {"Authorization": f"Bearer {sim.user_key}"}

    def networked(name: str) -> str:
        body = {"name": name, "imageName": "runpod/base", "gpuTypeIds": [GPU], "globalNetworking": True,
                "dockerStartCmd": ["python3", "-m", "http.server", "8000"]}
        answer = requests.post(f"{sim.url}/v1/pods", json=body, headers=headers, timeout=30)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def lonely_pod() -> str:
        mutation = generate_pod_deployment_mutation("lonely", "runpod/base", GPU,
                                                    docker_args="python3 -m http.server 8000", env={})
        return run_graphql_query(mutation, api_key=sim.user_key)["data"]["podFindAndDeployOnDemand"]["id"]

    try:
        a, b, lonely = networked("net-a"), networked("net-b"), lonely_pod()
        deadline = time.monotonic() + 30
        while not all(p in hosts.sim_hosts and 8000 in hosts.sim_hosts[p].listening_ports() for p in (a, b, lonely)):
            assert time.monotonic() < deadline, hosts.errors
            time.sleep(0.2)
        ha, hb, hl = (hosts.sim_hosts[p] for p in (a, b, lonely))
        assert resolve(hosts, a, f"{b}.runpod.internal") == hb.private_ip
        assert ha.tcp_connects(hb.private_ip, 8000) and hb.tcp_connects(ha.private_ip, 8000)
        assert not hl.tcp_connects(ha.private_ip, 8000) and not ha.tcp_connects(hl.private_ip, 8000)
        assert resolve(hosts, lonely, f"{a}.runpod.internal") is None
    finally:
        for pod in sim.live_pods():
            requests.delete(f"{sim.url}/v1/pods/{pod.id}", headers=headers, timeout=30)


def test_a_pod_that_never_boots_times_out_and_is_terminated(fake):
    sim, hosts, keys = fake
    sim.never_boot.add(GPU)
    with pytest.raises(sky.BootTimeoutError):
        with sky.Compute(provider=runpod(keys), accelerator="RTX4090", nodes=1, allocation="on-demand",
                         boot_timeout=6):
            pass
    assert sim.live_pods() == [] and len(sim.ended) >= 1
