"""A pool driven from outside the cloud: this process is a laptop, the simulated region is elsewhere.

Every simulated instance lives in its own network namespace on a private VPC network that this
process cannot route to; from here only port 22 of the head's public address answers (what the
security group admits from the driver's /32), served by an sshd that presents the host key from
the user data and accepts only the imported key. The nodes make their own Python environment
with the driver's exact versions. So everything these tests see went through the SSH tunnel.

Nothing here sends a packet to a private address: where a test shows that the VPC is out of
reach, it asks the routing table, never the network.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import ipaddress
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import ray

import skyward_ray as sky
from skyward_ray.api import channel_client, channel_head
from tests.conftest import MARKS_NAMESPACE, wait_started
from tests.simaws.server import VPC_CIDR
from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws
from tests.simnet import read_banner
from tests.timeouts import SIM_BOOT_TIMEOUT

REGION = "us-east-1"


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    with simulated_aws(REGION) as (sim, hosts), aws_environment(sim.client_env()):
        yield sim, hosts, str(tmp_path_factory.mktemp("keys"))
        assert hosts.stop() == [], "a simulated machine was still running when the module ended"


def aws(region) -> sky.AWS:
    _, hosts, keys = region
    return sky.AWS(region=REGION, key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)


@pytest.fixture(scope="module")
def pool(region):
    pool = sky.Compute(provider=aws(region), accelerator="T4", nodes=2, boot_timeout=SIM_BOOT_TIMEOUT,
                       image=sky.Image(pip=["tabulate==0.9.0"]))
    pool.__enter__()
    try:
        yield pool
    finally:
        pool.close()


def nothing_left(region, name: str | None = None) -> None:
    sim, hosts, keys = region
    assert sim.live_instances(cluster=name) == [] and sim.security_groups(cluster=name) == []
    assert [k for k in sim.key_pairs() if name is None or name in k["KeyName"]] == []
    assert hosts.wait_idle() == []
    if name is not None:
        assert not os.path.exists(os.path.join(keys, name)), "the cluster's keys are removed at teardown"


@sky.function
def environment() -> dict:
    import platform

    import tabulate

    return {"node": sky.instance_info().node, "python": platform.python_version(), "ray": ray.__version__,
            "executable": sys.executable, "cwd": os.getcwd(), "path": list(sys.path), "tabulate": tabulate.__version__}


@sky.function
def square(x: int) -> int:
    return x * x


@sky.function
def slow(x: int, seconds: float) -> tuple[int, int]:
    from ray.experimental import internal_kv  # the mark wait_started waits for (no helper: nodes import no test module)

    internal_kv._internal_kv_put(f"slow:{sky.instance_info().node}:{os.getpid()}:{time.monotonic_ns()}", b"1",
                                 namespace=MARKS_NAMESPACE.decode())
    time.sleep(seconds)
    return x, sky.instance_info().node


def test_the_driver_speaks_ray_client_through_the_tunnel(pool):
    assert pool.ray_address.startswith("ray://127.0.0.1:")
    assert ray.util.client.ray.is_connected()
    assert [n.index for n in pool.nodes] == [0, 1] and {n.provider for n in pool.nodes} == {"aws"}


def test_every_operator_works(pool):
    assert square(7) >> pool == 49
    assert (square(2) & square(3)) >> pool == (4, 9)
    assert sky.gather(*[square(i) for i in range(20)]) >> pool == [i * i for i in range(20)]
    assert (square(5) > pool).result(timeout=60) == 25
    assert pool.map(square, range(6)) == [0, 1, 4, 9, 16, 25]
    assert [r["node"] for r in environment() @ pool] == [0, 1]
    assert ray.get(ray.remote(lambda: "plain ray").remote()) == "plain ray"


def test_nodes_run_their_own_python_with_the_drivers_exact_versions_and_the_image(pool):
    here = "%d.%d.%d" % sys.version_info[:3]
    for node in environment() @ pool:
        assert node["python"] == here and node["ray"] == ray.__version__
        assert node["executable"] != sys.executable and not node["executable"].startswith(sys.prefix)
        assert node["tabulate"] == "0.9.0", "Image.pip is installed on the nodes"
        assert node["cwd"] != os.getcwd() and os.getcwd() not in node["path"]
    assert importlib.util.find_spec("tabulate") is None, "only the nodes got it"


def ssh_children() -> list[psutil.Process]:
    """This process's ssh processes (children of any depth); one that ends while they are listed
    (the host simulator runs short-lived commands from this process too) is none of them."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.name() == "ssh":
                found.append(process)
    return found


def opened_channel(pool, timeout: float = 60, lanes: bool = False):
    """The pool's call channel, once it opened (in the background, after the pool did); with
    `lanes`, once its lanes opened too (in the background, after the channel did)."""
    deadline = time.monotonic() + timeout
    while pool.dispatcher.channel is None:
        assert time.monotonic() < deadline, "a pool reached through a tunnel gets the call channel"
        time.sleep(0.1)
    while lanes and len(pool.dispatcher.channel._lanes) < channel_client.LANES:
        assert time.monotonic() < deadline, "the channel opens its lanes once it is up"
        time.sleep(0.1)
    return pool.dispatcher.channel


def test_the_driver_holds_no_connection_to_a_private_address(region, pool):
    sim = region[0]
    opened_channel(pool, lanes=True)
    square(3) >> pool
    machines = {ip for i in sim.instances(cluster=pool.name)
                for ip in (i.get("PrivateIpAddress"), i.get("PublicIpAddress")) if ip}
    remote = [c.raddr.ip.removeprefix("::ffff:") for c in psutil.Process().net_connections(kind="inet")
              if c.raddr and c.status == psutil.CONN_ESTABLISHED]
    assert "127.0.0.1" in remote, "the driver talks to the pool through the tunnel's local ends"
    assert not machines & set(remote), (machines & set(remote), remote)  # never straight to a machine
    assert not [ip for ip in remote if ipaddress.ip_address(ip) in ipaddress.ip_network(VPC_CIDR)], remote
    # SSH connections, all to the head: the tunnel (Ray Client, the GCS), the call channel (`>>`) and its lanes
    ssh = ssh_children()
    assert len(ssh) == 2 + channel_client.LANES
    head = pool.nodes[0]
    [described] = [i for i in sim.live_instances(cluster=pool.name) if i["InstanceId"] == head.instance_id]
    for process in ssh:
        peers = {c.raddr.ip.removeprefix("::ffff:") for c in process.net_connections(kind="inet") if c.raddr}
        assert described["PublicIpAddress"] in peers, "ssh reaches the head's public address"
        assert peers <= {described["PublicIpAddress"], "127.0.0.1"}, peers  # and the tunnel's local users, nothing else


def test_the_heads_ray_ports_are_out_of_reach_from_the_drivers_side(region, pool):
    sim, hosts, _ = region
    head = pool.nodes[0]
    [described] = [i for i in sim.live_instances(cluster=pool.name) if i["InstanceId"] == head.instance_id]
    public = described["PublicIpAddress"]
    assert read_banner(public, 22, timeout=2).startswith("SSH-2.0-")
    for port in (6379, 10001, 8265):
        assert read_banner(public, port, timeout=1) is None, f"port {port} answered on the public address"
    # The private address is on no network of this side: the routing table sends it nowhere we own.
    route = subprocess.run(["ip", "route", "get", head.ip], capture_output=True, text=True).stdout
    assert hosts.network.prefix not in route and "198.1" not in route.split(" src ")[0]


def test_killing_the_tunnel_mid_gather_recovers(pool):
    tunnel = pool._cluster.driver.tunnel
    port_before, restarts_before = tunnel.local_port(1), tunnel.restarts
    results: list = []
    worker = threading.Thread(target=lambda: results.append(sky.gather(*[slow(i, 2.0) for i in range(4)]) >> pool))
    worker.start()
    wait_started(pool, "slow", node=0)  # the gather is running: cut the tunnel under it
    os.kill(tunnel.pid, 9)
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert results and [x for x, _ in results[0]] == [0, 1, 2, 3], "Ray Client reconnected within its grace period"
    assert tunnel.restarts == restarts_before + 1 and tunnel.local_port(1) == port_before
    assert square(9) >> pool == 81


def test_a_call_goes_over_the_heads_call_channel_and_survives_its_ssh_connection_dropping(pool):
    channel = opened_channel(pool)
    assert channel.usable
    channel_ssh = channel._proc
    results: list = []
    worker = threading.Thread(target=lambda: results.append(nap(5, 3.0) >> pool))
    worker.start()
    gcs, deadline = pool._cluster.driver.gcs_client(), time.monotonic() + 60
    while not gcs.internal_kv_keys(b"nap:", MARKS_NAMESPACE):  # the call runs on a node: cut the channel under it
        assert time.monotonic() < deadline, "the call did not start"
        time.sleep(0.05)
    os.kill(channel_ssh.pid, 9)
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert results and results[0][0] == 5, "the channel reconnected and got the outcome it missed"
    assert channel._proc is not channel_ssh and channel.usable
    with pytest.raises(ZeroDivisionError) as raised:
        divide(1, 0) >> pool
    assert "Raised on the remote node" in "".join(raised.value.__notes__)
    with pytest.raises(sky.FunctionTimeoutError):
        late(30.0) >> pool
    assert square(12) >> pool == 144


def test_a_call_server_that_dies_is_replaced_and_the_calls_it_held_run_again(pool):
    channel = opened_channel(pool)
    server = channel._actor
    results: list = []
    errors: list = []

    def once() -> None:
        try:
            results.append(nap_once(9, 3.0) >> pool)
        except BaseException as error:  # noqa: BLE001 - what the user's code gets
            errors.append(error)

    gcs = pool._cluster.driver.gcs_client()
    for earlier in (b"slow:", b"nap:"):  # the marks of earlier tests' calls
        gcs.internal_kv_del(earlier, True, MARKS_NAMESPACE)
    group = threading.Thread(target=lambda: results.append(sky.gather(*[slow(i, 3.0) for i in range(4)]) >> pool))
    single = threading.Thread(target=once)
    group.start()
    single.start()
    wait_started(pool, "slow", node=0)
    wait_started(pool, "slow", node=1)
    deadline = time.monotonic() + 60
    while not gcs.internal_kv_keys(b"nap:", MARKS_NAMESPACE):
        assert time.monotonic() < deadline, "the call did not start"
        time.sleep(0.05)
    killed = time.monotonic()
    ray.kill(server)  # its process dies (as under the OOM killer); the head stays up
    group.join(timeout=120)
    single.join(timeout=120)
    assert not group.is_alive() and not single.is_alive()
    assert [[x for x, _ in values] for values in results] == [[0, 1, 2, 3]], "the group's calls ran again on a new call server"
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError), errors
    assert "may not run twice (max_retries=0" in str(errors[0])
    assert time.monotonic() - killed < channel_client.RECONNECT_S, "neither waited out the reconnect limit"
    assert channel._actor is not server and channel.usable
    first_id = next(channel._ids)
    assert square(13) >> pool == 169
    assert next(channel._ids) == first_id + 2, "later calls go over the new server"


def test_groups_futures_and_at_go_over_the_call_channel_and_keep_their_promises(pool, capfd):
    channel = opened_channel(pool)
    first_id = next(channel._ids)
    assert sky.gather(*[square(i) for i in range(50)]) >> pool == [i * i for i in range(50)]
    assert (square(2) & square(3)) >> pool == (4, 9)
    assert (square(5) > pool).result(timeout=60) == 25
    assert pool.map(square, range(6)) == [0, 1, 4, 9, 16, 25]
    assert [r["node"] for r in environment() @ pool] == [0, 1]
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError):  # the first failure is what the caller gets; the rest is cancelled
        sky.gather(divide(1, 0), nap(1, 60.0)) >> pool
    with pytest.raises(sky.FunctionTimeoutError):
        sky.gather(square(1), late(30.0)) >> pool
    assert time.monotonic() - started < 30, "neither group waited for its slow call"
    trials = sorted(pool.as_completed(reciprocal, [1, 0, 4], return_exceptions=True), key=lambda t: t.index)
    assert [t.value for t in trials if t.ok] == [1.0, 0.25] and isinstance(trials[1].error, ZeroDivisionError)
    future = nap(2, 60.0) > pool
    assert future.cancel() and future.cancelled()
    assert next(channel._ids) - first_id >= 50 + 2 + 1 + 6 + 2 + 2 + 2 + 3 + 1, "every call went over the channel"
    assert square(11) >> pool == 121
    time.sleep(1.0)  # what the nodes print reaches this console through Ray's log monitor, a moment later
    assert "blocking ray.get" not in "".join(capfd.readouterr()), "the call server's group waits alarm no one"


def held_on_head(channel) -> int:
    """How many outcomes the head's call server still keeps for this driver (until it acknowledges them)."""
    return ray.get(channel._actor.__ray_call__.remote(
        lambda server: sum(len(session.unacked) for session in server._sessions.values())))


def wait_none_held_on_head(channel, why: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while held_on_head(channel):
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def test_the_head_lets_go_of_the_outcomes_the_driver_has_read(pool):
    """The driver acknowledges outcomes in batches: a group's as soon as no call waits any more, a
    large one at once even while other calls still wait, a small one within ACK_DELAY_S. Nothing
    read stays on the head for long."""
    channel = opened_channel(pool)
    assert sky.gather(*[square(i) for i in range(40)]) >> pool == [i * i for i in range(40)]
    wait_none_held_on_head(channel, "a group's outcomes are acknowledged once no call waits")
    waiting = nap(3, 60.0) > pool
    try:
        assert len(noise(2 * 2**20, 5) >> pool) == 2 * 2**20
        wait_none_held_on_head(channel, "a large outcome is acknowledged at once, while another call waits")
        assert square(7) >> pool == 49
        wait_none_held_on_head(channel, "a small one within ACK_DELAY_S, while another call waits",
                               timeout=channel_client.ACK_DELAY_S + 10)
    finally:
        assert waiting.cancel()
    wait_none_held_on_head(channel, "the cancelled call's outcome is acknowledged too")


@sky.function
def reciprocal(x: float) -> float:
    return 1 / x


@sky.function
def nap(x: int, seconds: float) -> tuple[int, int]:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(f"nap:{os.getpid()}", b"1", namespace=MARKS_NAMESPACE.decode())
    time.sleep(seconds)
    return x, sky.instance_info().node


nap_once = sky.function(max_retries=0)(nap.fn)  # a call that may not run twice


@sky.function
def divide(a: int, b: int) -> float:
    return a / b


@sky.function(timeout=2)
def late(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@sky.function
def noise(size: int, seed: int, delay: float = 0.0) -> bytes:
    time.sleep(delay)
    return random.Random(seed).randbytes(size)


def _new_lanes(channel, old: list, timeout: float = 60) -> list:
    """The channel's lanes once it has `LANES` of them, none of `old` (lost ones are replaced)."""
    deadline = time.monotonic() + timeout
    while True:
        lanes = [proc for proc, _ in channel._lanes.values()]
        if len(lanes) == channel_client.LANES and not set(lanes) & set(old) and all(p.poll() is None for p in lanes):
            return lanes
        assert time.monotonic() < deadline, "the channel did not replace its lanes"
        time.sleep(0.1)


def _striped_while_lanes_stall(pool, channel, seed: int, lanes: list, cut) -> bytes:
    """`noise(..., seed) >> pool` while every lane stalls (its ssh stopped): the result's first part
    comes on the connection, the others wait in the lanes; then `cut(lanes)` loses them somehow."""
    for proc in lanes:
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        results: list = []
        worker = threading.Thread(target=lambda: results.append(noise(3 * channel_head.STRIPE_MIN, seed) >> pool))
        worker.start()
        # within 25 s: sshd drops a client that stays silent for ~30 s (ClientAliveInterval), which
        # would lose the lanes by the head's own doing
        deadline = time.monotonic() + 25
        while not channel._assemblies:  # a part is in: the rest are stuck in the lanes
            assert time.monotonic() < deadline and worker.is_alive(), "the result was not striped over the lanes"
            time.sleep(0.02)
        cut(lanes)
        worker.join(timeout=90)
        assert not worker.is_alive() and len(results) == 1
        return results[0]
    finally:
        for proc in lanes:  # Popen's kill: never a reaped pid, which may be someone else's by now
            with contextlib.suppress(OSError):
                proc.kill()


def test_large_results_come_down_in_parts_over_the_lanes_and_whole_when_a_lane_is_lost(pool):
    channel = opened_channel(pool, lanes=True)
    size = 3 * channel_head.STRIPE_MIN
    assert noise(size, 1) >> pool == random.Random(1).randbytes(size)

    def kill_lanes(lanes) -> None:  # the connection stays: the driver tells the head which lanes it lost
        for proc in lanes:
            proc.kill()

    first = _new_lanes(channel, [])
    assert _striped_while_lanes_stall(pool, channel, 2, first, kill_lanes) == random.Random(2).randbytes(size), \
        "the result arrived whole after its lanes were lost"
    second = _new_lanes(channel, first)  # lost lanes are replaced, and the next result is striped over them:

    def drop_connection(lanes) -> None:  # the lanes stay stalled; the connection drops and comes back
        os.kill(channel._proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(proc.poll() is None for proc in lanes):  # the reconnect lets the stalled lanes go
            assert time.monotonic() < deadline, "the lanes of the dropped connection were not ended"
            time.sleep(0.1)

    assert _striped_while_lanes_stall(pool, channel, 4, second, drop_connection) == random.Random(4).randbytes(size), \
        "a reconnect gets the outcome whole"
    _new_lanes(channel, first + second)
    assert channel.usable and noise(size, 5) >> pool == random.Random(5).randbytes(size)
    assert square(4) >> pool == 16


def test_cost_counts_every_machine_from_its_launch_at_the_offers_price(pool):
    assert pool.offer.price > 0
    upper = pool.offer.price * len(pool.nodes) * (time.time() - pool._cluster.started_at) / 3600
    assert 0 < pool.cost <= upper and pool.cost == pytest.approx(upper, rel=0.25)
    assert pool.cost_summary.startswith(f"{len(pool.nodes)} machines, ")
    assert f"× ${pool.offer.price:,.4f}/h ({pool.offer.market}, {pool.offer.price_source}" in pool.cost_summary


def test_leaving_the_pool_leaves_nothing(region, pool):
    name = pool.name
    tunnel = pool._cluster.driver.tunnel
    ssh_pid = tunnel.pid
    assert ssh_pid is not None and psutil.pid_exists(ssh_pid)
    pool.close()
    spent = pool.cost
    time.sleep(0.2)
    assert pool.cost == spent > 0, "after exit the cost stops growing and stays readable"
    assert not tunnel.alive
    assert not psutil.pid_exists(ssh_pid) or psutil.Process(ssh_pid).status() == psutil.STATUS_ZOMBIE, "ssh was ended"
    nothing_left(region, name)


def test_a_tampered_host_key_is_refused_and_leaves_nothing(region):
    _, hosts, _ = region
    hosts.tamper_host_keys = True
    try:
        with pytest.raises(sky.ProvisioningError, match="host key") as caught:
            with sky.Compute(provider=aws(region), accelerator="T4", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT):
                pass
    finally:
        hosts.tamper_host_keys = False
    assert type(caught.value).__name__ == "HostKeyMismatchError"
    assert ssh_children() == []
    nothing_left(region)


def test_a_node_that_cannot_install_its_image_ends_itself_and_the_error_shows_its_log(region,
                                                                                      package_index_unreachable):
    # The driver's package index out of reach: the Image cannot be checked here (a warning), so the
    # node is the one that finds the package missing (tests/test_image_resolve.py: the driver's check).
    with pytest.raises(sky.ProvisioningError, match="stopped while booting") as caught, \
            pytest.warns(UserWarning, match="could not be checked"):
        with sky.Compute(provider=aws(region), accelerator="T4", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT,
                         image=sky.Image(pip=["skyward-no-such-package==1.0"])):
            pass
    assert str(caught.value).startswith("failed at step: installing Image.pip")
    assert "installing Image.pip failed" in str(caught.value)  # from the instance's console output
    nothing_left(region)


@contextlib.contextmanager
def address_service(answer: str | None):
    """A stand-in for checkip.amazonaws.com on 127.0.0.1 (None: a port where nothing answers)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{answer}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    if answer is None:
        server.server_close()  # the port is free again: a connection is refused
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    saved = os.environ.get("SKYWARD_CHECKIP_URL")
    os.environ["SKYWARD_CHECKIP_URL"] = f"http://127.0.0.1:{port}/"
    try:
        yield
    finally:
        if answer is not None:
            server.shutdown()
            server.server_close()
        if saved is None:
            os.environ.pop("SKYWARD_CHECKIP_URL", None)
        else:
            os.environ["SKYWARD_CHECKIP_URL"] = saved


def test_by_default_ssh_is_open_only_to_the_address_the_address_service_reports(region):
    sim, hosts, keys = region
    default = sky.AWS(region=REGION, key_dir=keys, **SIM_SETTINGS)  # no ssh_cidr: the default a user gets
    with address_service(hosts.network.driver_ip):
        with sky.Compute(provider=default, accelerator="T4", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT) as pool:
            [group] = sim.security_groups(cluster=pool.name)
            ssh = [r for r in group["IpPermissions"] if r["IpProtocol"] == "tcp"]
            assert [(r["FromPort"], [x["CidrIp"] for x in r["IpRanges"]]) for r in ssh] == [(22, [hosts.ssh_cidr])]
            assert square(6) >> pool == 36
    nothing_left(region)
    with address_service(None):
        with pytest.raises(sky.SpecError, match=r"public address.*Fix: pass sky.AWS\(ssh_cidr="):
            with sky.Compute(provider=default, accelerator="T4", nodes=1):
                pass
    nothing_left(region)
