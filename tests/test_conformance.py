"""One conformance suite for every cloud skyward_ray can provision (local, AWS, RunPod, Vast.ai).

Each cloud runs through its real SDK against its local stand-in (see `tests/conformance`), and
passes the same checks, at two levels: the generic Ray node provider over the cloud's `Cloud`
(machines listed, isolated, found again by a new provider, pending then running, no credential
in what they boot from), and a whole pool through `sky.Compute` (a capacity error moves to the
next offer, an interrupted machine is replaced, and nothing at all is left afterwards). A new
cloud passes this suite before it ships.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

import skyward_ray as sky
from skyward_ray import names
from skyward_ray.cluster import launcher, pool_admin, pool_state, provisioning
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider
from tests.conformance import HARNESSES, Harness, open_harness


@pytest.fixture(scope="module", params=list(HARNESSES))
def harness(request) -> Iterator[Harness]:
    with open_harness(request.param) as opened:
        yield opened


@sky.function
def identity() -> dict:
    info = sky.instance_info()
    return {"node": info.node, "instance_id": info.instance_id, "provider": info.provider}


@sky.function
def machine_view(paths: list[str]) -> dict:
    """Which of the driver's `paths` this node can see, and whether its image has a system python3."""
    import os
    system_python = [p for p in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3") if os.path.exists(p)]
    return {"visible": [p for p in paths if os.path.exists(p)], "system_python3": system_python}


def _tags(name: str, kind: str) -> dict[str, str]:
    return {TAG_RAY_CLUSTER_NAME: name, TAG_RAY_NODE_KIND: kind}


@contextlib.contextmanager
def cluster(h: Harness, nodes: int = 1, **params: Any) -> Iterator[tuple[ScriptBootedNodeProvider, str]]:
    """A prepared cluster's node provider; every machine it made is ended and its resources removed after.
    No driver beats or delivers secrets to these machines, so they get a grace that outlasts the test
    (a machine ending itself for want of a driver, as it should, is not the test's subject)."""
    name = launcher.new_cluster_name()
    params = {"first_heartbeat_grace": 900.0, **params}
    provider = provisioning.load_node_provider(h.config, h.params(nodes=nodes, **params), name)
    try:
        yield provider, name
    finally:
        provider.terminate_nodes(provider.non_terminated_nodes({}))
        deadline = time.monotonic() + 60
        while provider.non_terminated_nodes({}) and time.monotonic() < deadline:
            time.sleep(0.3)
        provider.cleanup_cluster_resources()


def create(provider: ScriptBootedNodeProvider, name: str, kind: str, count: int = 1) -> list[str]:
    created = provider.create_node_with_resources_and_labels({}, _tags(name, kind), count, {}, {})
    return list(created)


def left_behind(h: Harness, before: dict[str, list[str]], timeout: float = 30.0) -> dict[str, list[str]]:
    """What bills at the cloud now and did not before, once that is nothing or `timeout` passed
    (clouds end things asynchronously; what was already ending before may be gone too)."""
    deadline = time.monotonic() + timeout
    while True:
        new = {kind: sorted(set(ids) - set(before.get(kind, []))) for kind, ids in h.billable().items()}
        new = {kind: ids for kind, ids in new.items() if ids}
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.5)


# -- the node provider over the cloud -----------------------------------------------------------------
def test_creating_n_machines_lists_exactly_n_and_teardown_leaves_nothing(harness):
    before = harness.billable()
    with cluster(harness, nodes=3) as (provider, name):
        head = create(provider, name, NODE_KIND_HEAD)
        workers = create(provider, name, NODE_KIND_WORKER, count=2)
        assert len(head) == 1 and len(workers) == 2
        assert sorted(provider.non_terminated_nodes({})) == sorted(head + workers)
        assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == head
        assert sorted(provider.node_tags(i)[names.NODE_INDEX] for i in head + workers) == ["0", "1", "2"]
        assert harness.billable() != before, "the machines are visible at the cloud"
    assert left_behind(harness, before) == {}, "teardown left something billing"


def test_clusters_are_isolated_from_each_other_and_from_foreign_machines(harness):
    foreign = harness.foreign_machine() if harness.foreign_machine else None
    with cluster(harness) as (first, first_name), cluster(harness) as (second, second_name):
        mine = create(first, first_name, NODE_KIND_HEAD)
        theirs = create(second, second_name, NODE_KIND_HEAD)
        assert first.non_terminated_nodes({}) == mine and second.non_terminated_nodes({}) == theirs
        assert foreign not in first.non_terminated_nodes({}) + second.non_terminated_nodes({})
        first.terminate_nodes(mine)
        deadline = time.monotonic() + 60
        while first.non_terminated_nodes({}) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert first.non_terminated_nodes({}) == []
        assert second.non_terminated_nodes({}) == theirs, "ending one cluster touched another"
    if foreign is not None:
        assert any(foreign in ids for ids in harness.billable().values()), "a foreign machine was ended"


def test_identity_survives_a_new_provider_instance(harness):
    with cluster(harness, nodes=2) as (provider, name):
        head = create(provider, name, NODE_KIND_HEAD)
        worker = create(provider, name, NODE_KIND_WORKER)
        again = type(provider)(provider.provider_config, name)  # what Ray's autoscaler does at will
        assert sorted(again.non_terminated_nodes({})) == sorted(head + worker)
        assert again.node_tags(head[0])[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD
        assert again.node_tags(worker[0])[names.NODE_INDEX] == "1"
        again.set_node_tags(worker[0], {"conformance": "yes"})
        provider._forget_listing()
        assert provider.node_tags(worker[0])["conformance"] == "yes"


def test_machines_go_pending_then_running(harness):
    with cluster(harness) as (provider, name):
        (head,) = create(provider, name, NODE_KIND_HEAD)
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = next(m.state for m in provider.machines(fresh=True) if m.instance_id == head)
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == "running":
                break
            time.sleep(0.2)
        assert seen[-1] == "running" and seen in (["running"], ["pending", "running"]), seen
        assert provider.is_running(head) and not provider.is_terminated(head)


def test_no_credential_appears_in_any_boot_payload(harness):
    with cluster(harness) as (provider, name):
        create(provider, name, NODE_KIND_HEAD)
        payloads = harness.boot_payloads()
        assert payloads and all("skyward_ray node bootstrap" in p for p in payloads)
        for payload in payloads:
            for secret in harness.secrets:
                assert secret not in payload, f"a {harness.name} credential is in a boot payload"


def test_status_lists_skywards_clusters_and_gc_ends_only_those_whose_driver_is_gone(harness):
    """What `skyward-ray status` and `gc` see: every skyward cluster of the account with its driver's
    liveness (the owner tag on its machines), never a foreign machine; `end` leaves nothing."""
    dead = pool_state.Owner(socket.gethostname(), 4_000_000, 1.0).as_tag()  # no such process
    with cluster(harness, pool_tags={names.OWNER: dead}) as (orphaned, orphan_name), \
            cluster(harness, pool_tags=pool_state.owner_tags(0.5)) as (kept, kept_name):
        (orphan_head,) = create(orphaned, orphan_name, NODE_KIND_HEAD)
        create(kept, kept_name, NODE_KIND_HEAD)
        pools = {p.name: p for p in pool_admin.survey(configs=[harness.config], providers=[harness.name]).pools}
        assert {orphan_name, kept_name} <= set(pools)
        assert pools[orphan_name].liveness == "dead" and pools[kept_name].liveness == "live"
        assert [m.instance_id for m in pools[orphan_name].active] == [orphan_head]
        assert pool_admin.end(pools[orphan_name]) == []
        orphaned._forget_listing()
        assert orphaned.non_terminated_nodes({}) == [] and len(kept.non_terminated_nodes({})) == 1
        again = {p.name for p in pool_admin.survey(configs=[harness.config], providers=[harness.name]).pools}
        assert orphan_name not in again and kept_name in again


# -- a whole pool --------------------------------------------------------------------------------------
def test_a_pool_falls_back_on_capacity_survives_or_reports_an_interruption_and_leaves_nothing(harness, tmp_path):
    """Two nodes where the cloud can network them (a lost worker is replaced), else one (losing
    it loses the pool, with `sky.PoolLostError`); either way nothing is left afterwards. On a cloud
    whose machines are bare, no node sees a file the driver wrote, its interpreter or its checkout."""
    h = harness
    driver_file = tmp_path / "written-by-the-driver.txt"
    driver_file.write_text("the driver's own")
    driver_paths = [str(driver_file), sys.executable, str(Path(__file__).resolve())]
    nodes = h.pool_nodes
    before = h.billable()
    first = sky.plan(provider=h.config, accelerator=h.accelerator, nodes=nodes).offers[0]
    blocked = first.instance_type if h.fail_capacity is not None else None
    with (h.fail_capacity(blocked) if blocked else contextlib.nullcontext()):
        with sky.Compute(provider=h.config, accelerator=h.accelerator, nodes=nodes, **h.compute_settings) as pool:
            if blocked:
                assert pool.offer.instance_type != blocked
                assert isinstance(pool.failures[0][1], sky.CapacityError)
            answers = identity() @ pool
            assert [a["node"] for a in answers] == list(range(nodes))
            assert [a["instance_id"] for a in answers] == [n.instance_id for n in pool.nodes]
            assert {a["provider"] for a in answers} == {h.name}
            if h.bare_machines:
                views = machine_view(driver_paths) @ pool
                assert [v["visible"] for v in views] == [[]] * nodes, views
                if not h.image_has_python:  # the boot installed the node's Python; the image still has none
                    assert [v["system_python3"] for v in views] == [[]] * nodes, views
            if h.interrupt is not None and nodes >= 2:
                lost = pool.nodes[1].instance_id
                h.interrupt(lost)
                deadline = time.monotonic() + 180
                while not pool.replaced and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert pool.replaced and pool.replaced[0][0] == lost
                again = identity() @ pool
                assert [a["node"] for a in again] == [0, 1] and lost not in {a["instance_id"] for a in again}
    assert left_behind(h, before, timeout=60) == {}, "the pool left something billing"
