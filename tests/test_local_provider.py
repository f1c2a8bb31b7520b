"""The local provider as a Ray NodeProvider, simulated accelerators, and the Image on local nodes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

import skyward_ray as sky
from node_providers.local import LocalNodeProvider
from node_providers.local.process_host import processes_with_marker
from skyward_ray import names
from skyward_ray.api import dispatch
from skyward_ray.cluster import launcher, provisioning
from skyward_ray.cluster.contract import ClusterParams


def _provider(nodes: int = 3) -> tuple[LocalNodeProvider, str]:
    name = launcher.new_cluster_name()
    return provisioning.load_node_provider(sky.Local(), ClusterParams(auth_token="t" * 64, nodes=nodes), name), name


def _tags(name: str, kind: str) -> dict[str, str]:
    return {TAG_RAY_CLUSTER_NAME: name, TAG_RAY_NODE_KIND: kind}


def test_node_provider_interface_state_survives_reinstantiation():
    provider, name = _provider()
    try:
        head = next(iter(provider.create_node_with_resources_and_labels({}, _tags(name, NODE_KIND_HEAD), 1, {}, {})))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # thread-safe creation
            workers = [
                wid for created in pool.map(
                    lambda _: provider.create_node_with_resources_and_labels({}, _tags(name, NODE_KIND_WORKER), 1, {}, {}),
                    range(2))
                for wid in created
            ]
        assert provider.non_terminated_nodes({}) == [head, *sorted(workers)]
        assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
        ips = {provider.internal_ip(i) for i in [head, *workers]}
        assert len(ips) == 3 and all(ip.startswith("127.") for ip in ips)
        assert provider.node_tags(head)[names.NODE_INDEX] == "0"
        assert sorted(provider.node_tags(w)[names.NODE_INDEX] for w in workers) == ["1", "2"]

        again = LocalNodeProvider(provider.provider_config, name)  # what Ray's autoscaler does
        assert again.non_terminated_nodes({}) == provider.non_terminated_nodes({})
        assert again.node_tags(head)[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD
        again.set_node_tags(head, {"extra": "yes"})
        assert provider.node_tags(head)["extra"] == "yes"

        assert processes_with_marker(head)
        again.terminate_nodes([head, *workers])
        assert provider.non_terminated_nodes({}) == []
        assert all(provider.is_terminated(i) for i in [head, *workers])
        assert processes_with_marker(name + "-*") == []
    finally:
        provider.cleanup_cluster_resources()
    assert not Path(provider.provider_config["prepared"]["state_dir"]).exists()


def test_startup_script_carries_identity_and_labels_but_neither_the_token_nor_cloud_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET-SHOULD-NOT-LEAK")
    provider, name = _provider(nodes=1)
    try:
        head = next(iter(provider.create_node_with_resources_and_labels({}, _tags(name, NODE_KIND_HEAD), 1, {}, {})))
        script = (Path(provider.cloud.host.machines()[head].directory) / "startup.sh").read_text()
        provider.terminate_nodes([head])
    finally:
        provider.cleanup_cluster_resources()
    assert "t" * 64 not in script  # the token reaches a local node in its environment only
    assert 'RAY_AUTH_TOKEN:?' in script
    assert 'RAY_CLOUD_INSTANCE_ID="$SKYWARD_INSTANCE_ID"' in script
    assert "RAY_NODE_TYPE_NAME=skyward.head" in script or "RAY_NODE_TYPE_NAME=skyward.worker" in script
    assert "skyward/node-index=0" in script and "skyward/provider=local" in script
    assert "--object-store-memory=104857600" in script
    assert "SECRET-SHOULD-NOT-LEAK" not in script and "AWS_" not in script


@sky.function
def gpu_view() -> dict:
    info = sky.instance_info()
    return {"gpu_ids": ray.get_gpu_ids(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "accelerator": info.accelerator, "count": info.accelerator_count, "node": info.node}


@sky.function(resources={"GPU": 1})
def one_gpu() -> list:
    return ray.get_gpu_ids()


def test_simulated_accelerators_are_placed_like_real_ones():
    provider = sky.Local(simulate_accelerators=True)
    with sky.Compute(provider=provider, accelerator=sky.accelerators.H100(count=2), nodes=2) as pool:
        assert pool.plan.chosen.accelerator == "H100" and pool.plan.chosen.count == 2
        resources = ray.cluster_resources()
        assert resources["GPU"] == 4
        assert resources["accelerator_type:H100"] == 2
        assert resources["CPU"] <= max(os.cpu_count() or 1, 2)
        assert resources["object_store_memory"] == 2 * 100 * 1024**2
        views = gpu_view() @ pool
        assert [v["node"] for v in views] == [0, 1]
        assert all(len(v["gpu_ids"]) == 2 for v in views)  # default: a call gets its node's accelerators
        assert all(sorted(v["cuda"].split(",")) == ["0", "1"] for v in views)
        assert {v["accelerator"] for v in views} == {"H100"} and {v["count"] for v in views} == {2}
        assert sorted(len(ids) for ids in sky.gather(one_gpu(), one_gpu(), one_gpu()) >> pool) == [1, 1, 1]
        assert [n.accelerator for n in pool.nodes] == ["H100", "H100"]


def test_simulated_accelerators_must_be_asked_for():
    from node_providers.local.offers import canonical_gpu, detect_gpus

    here = sum(1 for _, name, memory in detect_gpus() if (canonical_gpu(name, memory) or None) and
               canonical_gpu(name, memory).family == "H100")
    with pytest.raises(sky.NoOffersError, match=r"on local .*\n\s+\d+ × (accelerator|count): e\.g\. "):
        sky.plan(provider=sky.Local(), accelerator=f"H100:{here + 1}")  # more than this host has, even a GPU host
    assert sky.plan(provider=sky.Local(simulate_accelerators=True), accelerator=f"H100:{here + 1}").chosen.count \
        == here + 1


@sky.function
def uses_image() -> tuple[str, str]:
    import tabulate

    return tabulate.__version__, os.environ["SKY_TEST_VAR"]


def test_image_pip_and_env_reach_every_task_but_not_this_process():
    image = sky.Image(pip=["tabulate==0.9.0"], env={"SKY_TEST_VAR": "hello"})
    with sky.Compute(nodes=2, image=image) as pool:
        assert uses_image() @ pool == [("0.9.0", "hello"), ("0.9.0", "hello")]
    assert importlib.util.find_spec("tabulate") is None
    assert "SKY_TEST_VAR" not in os.environ


@sky.function
def slow_node_id(seconds: float, directory: str) -> str:
    Path(directory, f"{sky.instance_info().node}-{os.getpid()}-{time.monotonic_ns()}").touch()  # "started"
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)
    return ray.get_runtime_context().get_node_id()


def wait_for_start_on(directory: Path, node: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.name.startswith(f"{node}-") for p in directory.iterdir()):
        assert time.monotonic() < deadline, f"no call started on node {node} within {timeout:g}s"
        time.sleep(0.05)


def test_a_lost_node_s_calls_are_retried_the_node_replaced_and_a_pinned_call_fails_naming_it(tmp_path):
    first, second = tmp_path / "gather", tmp_path / "pinned"
    first.mkdir()
    second.mkdir()
    with sky.Compute(nodes=2) as pool:
        head, worker = pool.nodes
        future = sky.gather(*[slow_node_id(3, str(first)) for _ in range(4)]) > pool
        wait_for_start_on(first, 1)  # a call is running on the worker now
        pool._cluster.provider.terminate_nodes([worker.instance_id])  # the machine disappears
        results = future.result(timeout=120)
        assert len(results) == 4
        assert head.ray_node_id in results
        assert not pool._cluster.provider.is_running(worker.instance_id)
        deadline = time.monotonic() + 90  # the pool brings its size back with a new machine
        while not pool.replaced and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pool.replaced and pool.replaced[0][0] == worker.instance_id
        new = pool.nodes[1]
        assert new.index == 1 and new.instance_id != worker.instance_id and new.ray_node_id != worker.ray_node_id
        where = sky.function(lambda: ray.get_runtime_context().get_node_id())
        assert where() @ pool == [head.ray_node_id, new.ray_node_id]

        # `@` pins each call to its node: losing the node fails the call at once, naming the node
        pinned = threading.Thread(target=lambda: outcome.append(_raises(lambda: slow_node_id(60, str(second)) @ pool)))
        outcome: list = []
        pinned.start()
        wait_for_start_on(second, 0)
        wait_for_start_on(second, 1)
        started = time.monotonic()
        pool._cluster.provider.terminate_nodes([new.instance_id])
        pinned.join(timeout=90)
        assert not pinned.is_alive() and time.monotonic() - started < 60
        [error] = outcome
        assert isinstance(error, sky.NodeLostError), repr(error)
        assert f"node 1 ({new.instance_id}" in str(error) and "pool.replaced" in str(error)
    time.sleep(dispatch.FORCE_CANCEL_AFTER_S + 1)  # past the deferred forced cancel of the failed group
    assert not ray.is_initialized(), "a cancel after the pool was gone must not start a Ray of its own"


def _raises(call) -> BaseException | None:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - the test inspects it
        return error
    return None


def test_ending_a_machine_leaves_another_hosts_machine_of_the_same_id_running(tmp_path):
    """Two hosts (two simulated accounts, two test workers) may both have a machine "7001": ending
    one host's ends its own processes only, those that left the group (a daemon) included."""
    from node_providers.local.process_host import ProcessHost, machine_directory

    def these_two() -> list:
        """The 7001s of this test's two hosts (a simulated cloud in another test worker may have
        a 7001 of its own right now)."""
        found = []
        for proc in processes_with_marker("7001"):
            with contextlib.suppress(psutil.Error):
                if (machine_directory(proc) or "").startswith(str(tmp_path) + os.sep):
                    found.append(proc)
        return found

    script = "sleep 300 &\nsetsid sleep 301 &\nwait\n"  # a child in the group, and one that left it
    ours, theirs = ProcessHost(tmp_path / "ours"), ProcessHost(tmp_path / "theirs")
    try:
        for host in (ours, theirs):
            host.boot("7001", script, "127.0.0.1")
        # each machine: its script's bash and the two sleeps (a `setsid` in between is brief)
        deadline = time.monotonic() + 10
        while len(these_two()) != 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(these_two()) == 6
        ours.terminate(["7001"])
        assert not ours.is_running("7001")
        assert theirs.is_running("7001"), "ending our 7001 ended the other host's 7001"
        assert len(these_two()) == 3
    finally:
        ours.terminate(["7001"])
        theirs.terminate(["7001"])
    assert these_two() == []
