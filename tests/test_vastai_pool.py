"""Real Ray pools on the local Vast.ai: the REST fake for the API, its host simulator boots each
instance's onstart script in its own network namespace; the driver reaches the head through an
SSH tunnel to the direct port Vast advertised, pinned to the host key the driver generated.

Vast.ai offers serve one-node pools only (no private network between hosts), so every pool here
has one node. The driver process carries the account's key; no instance may see it.
"""

from __future__ import annotations

import json
import time

import pytest

import skyward_ray as sky
from tests.simvast import SIM_SETTINGS, USER_KEY, ask_row, simulated_vast
from tests.timeouts import SIM_BOOT_TIMEOUT


@sky.function
def where() -> dict:
    import os

    info = sky.instance_info()
    return {"node": info.node, "instance_id": info.instance_id, "spot": info.spot, "provider": info.provider,
            "container_id": os.environ.get("CONTAINER_ID"), "has_instance_key": bool(os.environ.get("CONTAINER_API_KEY")),
            "env": json.dumps(dict(os.environ))}


@pytest.fixture(scope="module")
def vast(tmp_path_factory):
    asks = [ask_row(101, dph_total=0.20, min_bid=0.08), ask_row(102, dph_total=0.22, min_bid=0.09),
            ask_row(103, dph_total=0.30, min_bid=0.12)]
    with simulated_vast(asks) as (sim, hosts):
        yield sim, hosts, str(tmp_path_factory.mktemp("keys"))
        assert hosts.stop() == [], "a simulated machine was still running when the module ended"


def provider(vast) -> sky.VastAI:
    sim, _, keys = vast
    return sky.VastAI(api_key=sim.user_key, server_url=sim.url, key_dir=keys, live_offers_ttl=0, **SIM_SETTINGS)


@pytest.fixture(autouse=True)
def nothing_left(vast):
    yield
    sim, hosts, _ = vast
    left = hosts.wait_idle(timeout=20)
    if left:
        hosts.host.terminate(left)
        pytest.fail(f"simulated machines left running: {left}")
    assert sim.live() == [], "an instance was left at Vast.ai"


def test_a_one_node_spot_pool_runs_a_task_through_the_ssh_tunnel_and_leaves_no_instance(vast):
    """Also: the rental's answer is lost (the connection drops after Vast.ai rented the instance).
    The instance is found by its launch token, never rented a second time."""
    sim, hosts, _ = vast
    sim.lose_next_create_answer()
    started = time.monotonic()
    with sky.Compute(provider=provider(vast), accelerator="T4", nodes=1, allocation="spot", boot_timeout=SIM_BOOT_TIMEOUT) as pool:
        ready = time.monotonic() - started
        rentals = [c for c in sim.calls if c.method == "PUT" and c.path.startswith("/api/v0/asks/")]
        assert [c.path for c in rentals] == ["/api/v0/asks/101/"], "a rental whose answer was lost was sent again"
        assert pool.offer.provider == "vastai" and pool.offer.market == "spot" and pool.offer.instance_type == "101"
        [answer] = where() @ pool
        [instance] = sim.live()
        assert answer["instance_id"] == answer["container_id"] == str(instance.id)
        assert answer["spot"] and answer["provider"] == "vastai" and answer["has_instance_key"]
        assert USER_KEY not in answer["env"], "the account's key reached an instance"
        assert instance.payload["price"] == 0.08  # the ask's minimum bid
        opened = {k: v for k, v in instance.payload["env"].items() if not k.startswith("SKYWARD_BOOT_")}  # + the payload
        assert (instance.payload["runtype"], opened) == ("ssh_direc ssh_proxy", {"-p 2222:2222": "1"})
    print(f"\n1-node Vast.ai pool ready in {ready:.1f}s")
    deletes = [(c.key_kind, c.status) for c in sim.calls if c.method == "DELETE"]
    # The driver destroys the instance (its key: 200, or 404 where the node was first). The node's own
    # EXIT trap may still call once the container is stopped; what Vast.ai answers a destroyed
    # instance's key is undocumented (the fake: 401), and it changes nothing: one destroy took effect.
    assert [status for _, status in deletes].count(200) == 1, deletes
    assert all(status in (200, 404) for kind, status in deletes if kind == "user"), deletes
    assert all(status in (200, 401, 404) for kind, status in deletes if kind != "user"), deletes
    assert any(kind == "user" for kind, _ in deletes), deletes


def test_a_capacity_error_moves_to_the_next_offer_and_the_failed_attempt_leaves_nothing(vast):
    sim, _, _ = vast
    sim.fail_next_create("no_such_ask", times=2)  # the ask, and its same-card replacement, rented meanwhile
    with sky.Compute(provider=provider(vast), accelerator="T4", nodes=1, allocation="on-demand",
                     boot_timeout=SIM_BOOT_TIMEOUT) as pool:
        assert len(pool.failures) == 1 and isinstance(pool.failures[0][1], sky.CapacityError)
        assert pool.failures[0][0].instance_type == "101"
        assert "no_such_ask" in str(pool.failures[0][1])
        [answer] = where() @ pool
        [instance] = sim.live()
        assert answer["instance_id"] == str(instance.id) and instance.ask["id"] != 101
    creates = [(c.path, c.status) for c in sim.calls if c.method == "PUT" and c.path.startswith("/api/v0/asks/")]
    assert creates[-3:-1] == [("/api/v0/asks/101/", 404), ("/api/v0/asks/102/", 404)]


@sky.function
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_an_interrupted_instance_fails_the_call_and_is_still_destroyed_at_teardown(vast):
    """The instance is still listed (stopped, its disk billed), so the pool tells a lost head from the
    listing and the head's silence, not from Ray Client giving up on its channel 30 s later."""
    sim, hosts, _ = vast
    with pytest.raises(sky.PoolLostError) as caught:
        with sky.Compute(provider=provider(vast), accelerator="T4", nodes=1, allocation="spot",
                         boot_timeout=SIM_BOOT_TIMEOUT) as pool:
            [instance] = sim.live()
            sim.interrupt(instance.id)  # outbid: the container stops, Vast keeps the instance (and its disk)
            interrupted = time.monotonic()
            nap(30) @ pool
    print(f"\nan outbid head raised PoolLostError {time.monotonic() - interrupted:.1f}s after the interruption")
    assert str(instance.id) in str(caught.value), caught.value
    assert sim.live() == [] and instance.id in sim.destroyed
    deletes = [(c.key_kind, c.status) for c in sim.calls
               if c.method == "DELETE" and c.path == f"/api/v0/instances/{instance.id}/"]
    # Teardown destroys the stopped instance, unless the instance's own EXIT trap (the container was
    # stopped) destroyed itself first: either way exactly one destroy took effect, and teardown tried.
    assert [status for _, status in deletes].count(200) == 1, deletes
    assert ("user", 200) in deletes or ("user", 404) in deletes, deletes


def test_a_boot_that_never_finishes_times_out_and_leaves_no_instance(vast):
    sim, _, _ = vast
    sim.stuck_loading = True  # the image never finishes loading
    try:
        started = time.monotonic()
        with pytest.raises(sky.BootTimeoutError, match="within 6s"):
            with sky.Compute(provider=provider(vast), accelerator="T4", nodes=1, allocation="on-demand",
                             boot_timeout=6):
                pass
        assert time.monotonic() - started < 60
    finally:
        sim.stuck_loading = False
    assert sim.live() == []


def test_a_boot_past_its_timeout_shows_the_instances_own_log_and_leaves_nothing(vast):
    sim, _, _ = vast
    with pytest.raises(sky.BootTimeoutError) as caught:
        # 2 s: a node makes its Python environment and starts Ray in 4 s or more even from a warm cache
        with sky.Compute(provider=provider(vast), accelerator="T4", nodes=1, allocation="on-demand", boot_timeout=2):
            pass
    assert "skyward:" in str(caught.value), str(caught.value)  # the boot script's own lines, from `vastai logs`
    assert sim.live() == []


def test_instances_reach_each_other_only_through_opened_public_ports(vast):
    """Why Vast.ai pools are one node: another instance's Ray ports are unreachable (the fake is faithful to it)."""
    sim, hosts, _ = vast
    auth = {"Authorization": f"Bearer {USER_KEY}"}
    ids = []
    try:
        for ask in (101, 102):
            status, answer = sim.handle("PUT", f"/api/v0/asks/{ask}/", {},
                                        {"image": "ubuntu", "onstart": "sleep 120", "env": {"-p 2222:2222": "1"}},
                                        auth)
            assert status == 200, answer
            ids.append(answer["new_contract"])
        deadline = time.monotonic() + 30
        while not all(i in hosts.sim_hosts for i in ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        first, second = (hosts.sim_hosts[i] for i in ids)
        first.start_echo_server("0.0.0.0", 6379, "ray-gcs")
        first.start_echo_server("0.0.0.0", 2222, "sshd")
        assert not second.tcp_connects(first.private_ip, 6379), "a Vast.ai instance reached another's private side"
        assert not second.tcp_connects(first.public_ip, 6379), "a port nobody opened was reachable"
        host_port = sim.instances[ids[0]].host_ports[2222]
        assert (second.read_banner(first.public_ip, host_port) or "").startswith("sshd")  # opened, at its host port
    finally:
        for instance_id in ids:
            sim.handle("DELETE", f"/api/v0/instances/{instance_id}/", {}, {}, auth)
