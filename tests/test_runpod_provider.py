"""The RunPod node provider against the fake RunPod API, through the real runpod SDK: no Ray boot here.

Offers (live vs snapshot, the TTL cache, the plan's network rule), what each pod launch really
sends (the container command, env, global networking, the interruptible bid), identity and
isolation by pod name, error mapping for each fault, and self-termination with the pod's own key.
Pods here get no machine (no host simulator): they stay pending, which is all these tests need.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND

import skyward_ray as sky
from node_providers.runpod import RunPodNodeProvider
from node_providers.runpod.cloud import ENV_TAGS, SHUTDOWN_COMMAND
from skyward_ray import names
from skyward_ray.cluster import provisioning
from skyward_ray.cluster.contract import NotFoundError
from skyward_ray.planning.accelerators import parse_accelerator
from tests.conftest import REPO
from tests.provider_helpers import cluster_name, cluster_params, create
from tests.simrunpod import CAPACITY_MESSAGE, SIM_SETTINGS, USER_KEY, runpod_environment, simulated_runpod

GPU = "NVIDIA GeForce RTX 4090"


@pytest.fixture(scope="module")
def api():
    with simulated_runpod(with_hosts=False) as (sim, _):
        yield sim


@pytest.fixture
def sim(api):
    yield api
    api.clear_faults()
    for pod in api.live_pods():  # pods of a test that failed halfway
        api._end(pod.id)


def provider_for(tmp_path, nodes=1, market="on-demand", name=None, **settings):
    name = name or cluster_name()
    params = cluster_params(nodes=nodes, instance_type=GPU, market=market, offer=f"{GPU}.any.{market}",
                            accelerator="RTX4090", accelerator_count=1)
    config = sky.RunPod(key_dir=str(tmp_path), **{**SIM_SETTINGS, **settings})
    return provisioning.load_node_provider(config, params, name), name


REST_CREATE = "POST /v1/pods"


def deploys(sim, since=0.0):
    """Every pod create sent: GraphQL deploy mutations and REST `POST /v1/pods`."""
    return [c for c in sim.calls()[since:] if c.operation in ("podFindAndDeployOnDemand", "podRentInterruptable",
                                                               REST_CREATE)]


def docker_payload(query: str) -> str:
    """The boot payload inside a create's container command (`dockerArgs`, or REST `dockerStartCmd`:
    base64 in a bash -c), decoded."""
    if query.lstrip().startswith("{"):
        args = json.loads(query)["dockerStartCmd"][-1]
    else:
        args = re.search(r'dockerArgs: "([^"]*)"', query).group(1)
    return base64.b64decode(re.search(r"echo (\S+) \| base64 -d", args).group(1)).decode()


def installed_host_key(payload: str) -> str:
    """The host key the payload installs for sshd (base64 in the payload), decoded ("" when none)."""
    found = re.search(r'echo (\S+) \| base64 -d > "\$S/ssh/host_ed25519_key"', payload)
    return base64.b64decode(found.group(1)).decode() if found else ""


# -- offers ------------------------------------------------------------------------------------------
def test_without_a_key_offers_come_from_the_snapshot_fast_and_without_a_request(sim, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.runpod/config.toml either
    before = len(sim.calls())
    with runpod_environment({"RUNPOD_API_BASE_URL": sim.url}):
        started = time.monotonic()
        offers = sky.RunPod(live_offers_ttl=0).list_offers(parse_accelerator("RTX4090"))
        took = time.monotonic() - started
    assert offers and {o.price_source for o in offers} == {"snapshot:runpod"}
    assert took < 1.0
    assert len(sim.calls()) == before, "no request may be sent without a key"


def test_with_a_key_prices_are_live_per_pod_and_reused_within_the_ttl(sim):
    before = len(sim.calls())
    offers = sky.RunPod(live_offers_ttl=60).list_offers(parse_accelerator("RTX4090"))
    again = sky.RunPod(live_offers_ttl=60).list_offers(parse_accelerator("RTX4090"))
    assert {o.price_source for o in offers} == {"live:runpod"} and again == offers
    assert [c.operation for c in sim.calls()[before:]] == ["gpuTypes"], "one query, then the cache"
    by = {(o.count, o.market): o.price for o in offers}
    floor, on_demand = sim.gpus[GPU].bid_floor, sim.gpus[GPU].on_demand
    assert by[(1, "on-demand")] == on_demand and by[(4, "on-demand")] == pytest.approx(4 * on_demand)
    assert by[(8, "spot")] == pytest.approx(8 * floor)
    sim.gpus[GPU].on_demand = 9.0  # the market moves: a zero TTL sees it at once
    assert {o.price for o in sky.RunPod(live_offers_ttl=0).list_offers(parse_accelerator("RTX4090"))
            if o.count == 1 and o.market == "on-demand"} == {9.0}


def test_the_plan_keeps_offers_without_global_networking_for_one_node_pools_only(sim):
    for config in (sky.RunPod(live_offers_ttl=0), None):  # live, then the snapshot (no key)
        with runpod_environment({} if config else {"RUNPOD_API_BASE_URL": sim.url}):
            provider = config or sky.RunPod()
            one = sky.plan(provider=provider, accelerator="MI300X", nodes=1, allocation="on-demand")
            assert one.offers and all(o.single_node_reason for o in one.offers)
            with pytest.raises(sky.NoOffersError, match="NVIDIA GPU pods only"):
                sky.plan(provider=provider, accelerator="MI300X", nodes=2, allocation="on-demand")
            two = sky.plan(provider=provider, accelerator="RTX4090", nodes=2, allocation="on-demand")
            assert two.offers and all(o.single_node_reason is None for o in two.offers)


# -- machines ----------------------------------------------------------------------------------------
def test_created_pods_are_listed_and_survive_a_new_provider_instance(sim, tmp_path):
    provider, name = provider_for(tmp_path, nodes=3)
    head = create(provider, name)
    workers = create(provider, name, NODE_KIND_WORKER, count=2)
    assert len(provider.non_terminated_nodes({})) == 3
    again = RunPodNodeProvider(provider.provider_config, name)  # another process's provider: only the cloud's state
    assert again.non_terminated_nodes({}) == head + workers
    assert again.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER}) == workers
    assert [again.node_tags(w)[names.NODE_INDEX] for w in workers] == ["1", "2"]
    assert {p.name for p in sim.live_pods()} >= {f"skyward-{name}-head-0", f"skyward-{name}-worker-1",
                                                  f"skyward-{name}-worker-2"}
    assert again.internal_ip(head[0]) == f"{head[0]}.runpod.internal", "2+ pods join over global networking"
    assert not again.is_running(head[0]), "a pod whose runtime is null is pending"
    again.terminate_nodes(head + workers)
    assert provider.non_terminated_nodes({}) == []
    provider.cleanup_cluster_resources()


def test_clusters_are_isolated_by_pod_name_and_foreign_pods_are_never_touched(sim, tmp_path):
    foreign = sim.add_foreign_pod("my-notebook")
    lookalike = sim.add_foreign_pod("skyward-sky-a-b-head-0")  # cluster "sky-a-b", not "sky-a"
    first, a = provider_for(tmp_path / "a", name="sky-a")
    second, b = provider_for(tmp_path / "b", name="sky-b")
    mine, theirs = create(first, a), create(second, b)
    assert first.non_terminated_nodes({}) == mine and second.non_terminated_nodes({}) == theirs
    first.cleanup_cluster_resources()
    assert {p.id for p in sim.live_pods()} == {foreign, lookalike, *theirs}
    second.cleanup_cluster_resources()
    assert {p.id for p in sim.live_pods()} == {foreign, lookalike}
    sim._end(foreign)
    sim._end(lookalike)


def test_a_pod_launch_sends_its_boot_in_the_container_command_and_no_credential(sim, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", USER_KEY)
    since = len(sim.calls())
    provider, name = provider_for(tmp_path, nodes=1)
    [head] = create(provider, name)
    [call] = deploys(sim, since)
    assert call.operation == "podFindAndDeployOnDemand" and call.caller == "user"
    assert "globalNetwork" not in call.query, "a one-node pool needs no private network"
    assert 'ports: "22/tcp"' in call.query and "supportPublicIp: true" in call.query
    payload = docker_payload(call.query)
    assert "skyward_ray node bootstrap" in payload
    # the head makes its own host key and prints it on the pod's log: no key is made on the driver or sent
    assert sorted(p.name for p in Path(provider.params.ssh_key_dir).iterdir()) == ["id_ed25519", "id_ed25519.pub"]
    assert installed_host_key(payload) == "" and "PRIVATE KEY" not in payload
    assert payload.index("/usr/sbin/sshd") < payload.index("ssh-keygen") < payload.index(
        "BEGIN SSH HOST KEY KEYS") < payload.index("skyward_ray node bootstrap")
    assert provider.params.ssh_public_key.split()[1] in payload, "the driver's cluster key is authorised"
    pod = next(p for p in sim.live_pods() if p.id == head)
    assert set(pod.env) == {ENV_TAGS}
    for text in (call.query, payload, *pod.env.values()):
        assert USER_KEY not in text, "the user's API key travelled to a pod"
        assert "RUNPOD_API_KEY=" not in text
    provider.cleanup_cluster_resources()


def test_a_pods_log_comes_from_the_v2_stream_which_stays_open(sim, tmp_path):
    from node_providers.runpod.transport import LOG_IDLE_S

    provider, name = provider_for(tmp_path)
    [head] = create(provider, name)
    printed = "skyward: installing\n-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3Nza skyward-head\nlast line"
    sim.hosts = types.SimpleNamespace(log=lambda pod_id, lines: "\n".join(printed.splitlines()[-lines:]))
    try:
        started = time.monotonic()
        assert provider.cloud.read_log(head, 100) == printed  # the whole backfill, in order
        took = time.monotonic() - started
        assert provider.cloud.read_log(head, 2) == "ssh-ed25519 AAAAC3Nza skyward-head\nlast line"  # `tail`
        with pytest.raises(NotFoundError, match="pod not found"):
            provider.cloud.read_log("nosuchpod", 10)
    finally:
        sim.hosts = None
    # the fake holds the stream open 30 s, as RunPod keeps it open for new lines: read until it is quiet
    assert LOG_IDLE_S <= took < LOG_IDLE_S + 5, took
    assert [c.operation for c in sim.calls()[-3:]] == [f"GET /v2/pods/{head}/logs"] * 2 + ["GET /v2/pods/nosuchpod/logs"]
    provider.terminate_nodes([head])
    provider.cleanup_cluster_resources()


def test_two_node_pools_use_global_networking_in_the_secure_cloud(sim, tmp_path):
    since = len(sim.calls())
    provider, name = provider_for(tmp_path, nodes=2)
    create(provider, name)
    create(provider, name, NODE_KIND_WORKER)
    calls = deploys(sim, since)
    bodies = [json.loads(c.query) for c in calls]
    assert [c.operation for c in calls] == [REST_CREATE] * 2 and all(c.status == 201 for c in calls)
    assert all(b["globalNetworking"] is True and b["cloudType"] == "SECURE" and b["interruptible"] is False
               for b in bodies)
    worker_boot = docker_payload(calls[1].query)
    head_id = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD})[0]
    assert f"{head_id}.runpod.internal" in worker_boot, "workers join the head by its global-network name"
    assert "/usr/sbin/sshd" not in worker_boot, "only the head runs sshd"
    provider.cleanup_cluster_resources()


def test_an_interruptible_pod_bids_the_current_floor(sim, tmp_path):
    since = len(sim.calls())
    provider, name = provider_for(tmp_path, market="spot")
    [head] = create(provider, name)
    [call] = deploys(sim, since)
    assert call.operation == "podRentInterruptable"
    assert re.search(r"bidPerGpu: ([0-9.]+)", call.query).group(1) == f"{sim.gpus[GPU].bid_floor:.4f}"
    assert next(p for p in sim.live_pods() if p.id == head).interruptible
    provider.cleanup_cluster_resources()


# -- errors ------------------------------------------------------------------------------------------
def test_no_capacity_is_a_capacity_error_with_runpods_words_and_leaves_no_pod(sim, tmp_path):
    provider, name = provider_for(tmp_path)
    sim.fail_capacity(GPU)
    with pytest.raises(sky.CapacityError, match="no longer any instances available"):
        create(provider, name)
    assert provider.non_terminated_nodes({}) == [] and CAPACITY_MESSAGE.startswith("There are no longer")


def test_a_bid_under_the_moved_floor_is_a_capacity_error(sim, tmp_path):
    provider, name = provider_for(tmp_path, market="spot")
    sim.bid_slip[GPU] = 0.05  # the floor rises between the price read and the rent
    with pytest.raises(sky.CapacityError, match="bid was refused"):
        create(provider, name)
    assert provider.non_terminated_nodes({}) == []


def test_a_bad_key_is_an_auth_error_before_any_pod(sim, tmp_path):
    before = len(sim.live_pods())
    with pytest.raises(sky.AuthError, match="API key was refused") as error:
        provider_for(tmp_path, api_key="rpa_WRONGKEY")
    assert "rpa_WRONGKEY" not in str(error.value)
    assert len(sim.live_pods()) == before


def test_no_key_at_all_is_an_auth_error_naming_the_fix(sim, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with runpod_environment({"RUNPOD_API_BASE_URL": sim.url}), pytest.raises(sky.AuthError, match="RUNPOD_API_KEY"):
        provider_for(tmp_path)


# -- self-termination --------------------------------------------------------------------------------
def _shutdown_as(sim, pod_id: str, pod_key: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": pod_key, "RUNPOD_API_BASE_URL": sim.url}
    subprocess.run(["bash", "-c", SHUTDOWN_COMMAND], env=env, capture_output=True, timeout=60)


def test_a_pod_ends_itself_with_its_own_key_and_that_key_ends_nothing_else(sim, tmp_path):
    provider, name = provider_for(tmp_path, nodes=2)
    [head] = create(provider, name)
    [worker] = create(provider, name, NODE_KIND_WORKER)
    pods = {p.id: p for p in sim.live_pods()}
    _shutdown_as(sim, head, pods[worker].pod_key)  # the worker's key may not end the head
    assert head in {p.id for p in sim.live_pods()}
    assert sim.calls()[-1].caller == f"pod:{worker}"
    _shutdown_as(sim, worker, pods[worker].pod_key)
    assert sim.calls()[-1].operation == "podTerminate" and sim.calls()[-1].caller == f"pod:{worker}"
    assert provider.non_terminated_nodes({}) == [head]
    provider.cleanup_cluster_resources()
    assert provider.non_terminated_nodes({}) == []


def test_planning_with_live_runpod_offers_imports_no_ray(sim):
    import subprocess
    import sys

    code = ("import sys, skyward_ray as sky\n"
            "p = sky.plan(provider=sky.RunPod(live_offers_ttl=0), accelerator='RTX4090', nodes=2)\n"
            "print(p.offers[0].price_source, 'ray' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.split() == ["live:runpod", "False"], done.stderr[-2000:]


def test_an_exited_pod_counts_as_gone_and_is_terminated_so_it_stops_billing(sim, tmp_path):
    # a pod stopped under its pool (by RunPod or its owner) shows EXITED as a reclaimed spot pod does;
    # pools of 2+ pods are on-demand (interruptible pods cannot be on the global network)
    provider, name = provider_for(tmp_path, nodes=2)
    [head] = create(provider, name)
    [worker] = create(provider, name, NODE_KIND_WORKER)
    sim.interrupt(worker)  # the pod is stopped: EXITED, its volume still billing
    assert provider.non_terminated_nodes({}) == [head]
    assert worker in sim.ended and worker not in {p.id for p in sim.live_pods()}
    provider.cleanup_cluster_resources()


def test_loading_the_sdk_leaves_the_programs_logging_alone():
    """`import runpod` adds a StreamHandler at INFO to the root logger, which printed every status
    line of a pool twice (once more in runpod's format) in a program that never configured logging."""
    code = ("import logging; from node_providers.runpod import transport; transport.load_sdk(); import runpod; "
            "print(len(logging.getLogger().handlers), logging.getLogger().level)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert done.stdout.split() == ["0", str(logging.WARNING)], done.stdout + done.stderr
