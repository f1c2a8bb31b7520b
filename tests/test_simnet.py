"""Isolated simulated hosts, the per-cluster SSH keys and the supervised tunnel, and Ray across them.

Every "host" is a Linux network namespace (tests/simnet): a private VPC the driver's side cannot
route to, and a public address that answers only tcp/22 from the driver. These tests prove the
isolation is real, that `skyward_ray.cluster.ssh_tunnel.SSHTunnel` reaches a host's loopback through
its sshd with a pinned host key, and that a Ray Client driver outside the VPC runs tasks on two
nodes that only see each other privately, through the tunnel alone.

Real processes throughout; every test ends what it starts by pid (never `ray stop`, never by name)
and asserts that no namespace, link, sshd or ssh of its network is left. Without root, iproute2,
nftables or OpenSSH the tests skip with the one-line reason `check_available()` gives.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from skyward_ray.cluster.ssh_keys import (
    KeyPair,
    cluster_key_dir,
    generate_keypair,
    remove_key_dir,
    write_known_hosts,
)
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError, SSHTunnel, TunnelError
from tests.simnet import SimHost, SimNetwork, check_available, read_banner, tcp_connects
from tests.simnet.network import SYSTEM_PATH

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REASON = check_available()
needs_simnet = pytest.mark.skipif(REASON is not None, reason=REASON or "")
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                      reason="ssh-keygen is not installed: apt-get install -y openssh-client")

TIMINGS: dict[str, float] = {}
"""Seconds, by step; printed at the end of the module (`-s`) and written to $SIMNET_TIMINGS if set."""


@pytest.fixture(scope="module", autouse=True)
def report_timings():
    yield
    if TIMINGS:
        text = json.dumps({k: round(v, 4) for k, v in TIMINGS.items()}, indent=1)
        print(f"\nsimnet timings (s):\n{text}")
        if os.environ.get("SIMNET_TIMINGS"):
            Path(os.environ["SIMNET_TIMINGS"]).write_text(text + "\n")


@pytest.fixture
def net():
    """A fresh network per test; after it, nothing of it may be left on the machine."""
    started = time.monotonic()
    network = SimNetwork().open()
    TIMINGS.setdefault("network_open", time.monotonic() - started)
    try:
        yield network
    finally:
        network.close()
    left = network.leftovers()
    assert left == [], f"{network.prefix} left behind: {left}"


def _add_host(network: SimNetwork, name: str) -> SimHost:
    started = time.monotonic()
    host = network.add_host(name)
    TIMINGS.setdefault("add_host", time.monotonic() - started)
    return host


class Keys:
    """One cluster's keys, as the driver would generate them: a login key and the head's host key."""

    def __init__(self, network: SimNetwork) -> None:
        self.dir = cluster_key_dir(network.prefix, root=network.directory / "keys")
        self.client: KeyPair = generate_keypair(self.dir, "id_ed25519", f"skyward-{network.prefix}")
        self.host: KeyPair = generate_keypair(self.dir, "ssh_host_ed25519_key", f"host-{network.prefix}")
        self.known_hosts = self.dir / "known_hosts"


def _sshd(host: SimHost, keys: Keys) -> None:
    started = time.monotonic()
    host.start_sshd(keys.host.private_key, keys.client.public_line)
    TIMINGS.setdefault("sshd_start", time.monotonic() - started)
    write_known_hosts(keys.known_hosts, host.public_ip, 22, keys.host.public_line)


def _tunnel(host: SimHost, keys: Keys, remote_port: int, **kwargs: object) -> SSHTunnel:
    return SSHTunnel(host.public_ip, 22, "root", keys.client.private_key, keys.known_hosts,
                     [(0, "127.0.0.1", remote_port)], **kwargs)  # type: ignore[arg-type]


def _echo_round_trip(port: int, token: str, payload: bytes = b"ping through the tunnel\n") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        reader = sock.makefile("rb")
        greeting = reader.readline().decode().split()
        assert greeting[:1] == [token], f"reached the wrong server: {greeting}"
        assert greeting[1] == "127.0.0.1", "the forward should arrive on the host's own loopback"
        sock.sendall(payload)
        assert reader.read(len(payload)) == payload


def _ssh_clients(network: SimNetwork) -> list[int]:
    """Pids of ssh client processes using this network's files (tunnels); sshd is checked by `net`."""
    marker = str(network.directory) + "/"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or [""]
        if os.path.basename(argv[0]) == "ssh" and marker in " ".join(argv):
            found.append(proc.pid)
    return found


# ---------------------------------------------------------------------------------------- keys, cleanup


@needs_ssh_keygen
def test_cluster_keys_are_private_and_the_host_key_is_pinned(tmp_path: Path) -> None:
    keys_dir = cluster_key_dir("sky-test-1", root=tmp_path / "keys")
    assert keys_dir.stat().st_mode & 0o777 == 0o700
    pair = generate_keypair(keys_dir, "id_ed25519", "skyward sky-test-1")
    assert pair.private_key.stat().st_mode & 0o777 == 0o600
    assert pair.public_line.startswith("ssh-ed25519 ") and pair.public_line.endswith(" skyward sky-test-1")
    known = write_known_hosts(keys_dir / "known_hosts", "203.0.113.7", 2222, pair.public_line)
    assert known.read_text() == f"[203.0.113.7]:2222 {' '.join(pair.public_line.split()[:2])}\n"
    write_known_hosts(known, "203.0.113.7", 22, pair.public_line)  # port 22 is looked up bare
    assert known.read_text().startswith("203.0.113.7 ssh-ed25519 ")
    with pytest.raises(ValueError):
        write_known_hosts(known, "evil host\n* ssh-ed25519", 22, pair.public_line)
    remove_key_dir(keys_dir)
    assert not keys_dir.exists()
    remove_key_dir(keys_dir)  # idempotent


@needs_simnet
def test_a_network_whose_owner_died_is_cleaned_by_the_next_one() -> None:
    orphan = SimNetwork().open()
    orphan.add_host("a").run(["sleep", "600"], env={"PATH": SYSTEM_PATH})
    (orphan.directory / "owner").write_text("999999999 0\n")  # as if its test process had been SIGKILLed
    with SimNetwork() as fresh:  # opening any network cleans orphans first
        assert orphan.leftovers() == [], "the orphan's namespaces, links, processes and files are gone"
        assert f"namespace {fresh.vpc_namespace}" in fresh.leftovers(), "a live network is never an orphan"
    orphan.close()
    assert orphan.leftovers() == [] and fresh.leftovers() == []


# ---------------------------------------------------------------------------------------- isolation


@needs_simnet
def test_isolation_private_network_only_between_hosts(net: SimNetwork) -> None:
    a, b = _add_host(net, "a"), _add_host(net, "b")
    keys = Keys(net)
    _sshd(a, keys)
    a.start_echo_server("0.0.0.0", 6379, "hello-from-a")
    b.start_echo_server("0.0.0.0", 6379, "hello-from-b")

    # hosts reach each other privately, both ways
    assert a.read_banner(b.private_ip, 6379, timeout=3) == f"hello-from-b {a.private_ip}"
    assert b.read_banner(a.private_ip, 6379, timeout=3) == f"hello-from-a {b.private_ip}"

    # the driver's side has no route into the VPC: no route via our links, and no connection ever
    # reaches a host's listener (this machine's gateway may accept any TCP connection, so "did the
    # connect succeed" proves nothing: the server's greeting and its accept log do)
    for ip in (a.private_ip, b.private_ip):
        route = subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True).stdout
        assert net.prefix not in route, f"the root namespace routes {ip} into the simulated VPC: {route}"
        assert read_banner(ip, 6379, timeout=1.0) is None
    # the public address answers ssh from the driver, and nothing else (even bound to 0.0.0.0)
    assert (read_banner(a.public_ip, 22, timeout=3) or "").startswith("SSH-2.0-OpenSSH")
    assert not tcp_connects(a.public_ip, 6379, timeout=1.0)
    assert not tcp_connects(b.public_ip, 22, timeout=0.5), "no sshd in b, and nothing else is open"
    assert a.echo_peers(6379) == [b.private_ip], "only b ever reached a's listener"
    assert b.echo_peers(6379) == [a.private_ip]


# ---------------------------------------------------------------------------------------- ssh tunnel


@needs_simnet
def test_tunnel_forwards_to_the_hosts_loopback(net: SimNetwork) -> None:
    a = _add_host(net, "a")
    keys = Keys(net)
    _sshd(a, keys)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    assert read_banner(a.public_ip, 7000, timeout=0.5) is None

    started = time.monotonic()
    with _tunnel(a, keys, 7000).start(timeout=20) as tunnel:
        TIMINGS["tunnel_up"] = time.monotonic() - started
        assert tunnel.alive and tunnel.restarts == 0 and tunnel.pid is not None
        port = tunnel.local_port(0)
        _echo_round_trip(port, "loopback-of-a")
        pid = tunnel.pid
    assert not psutil.pid_exists(pid), "stop() ends ssh and reaps it"
    assert not tunnel.alive and tunnel.pid is None
    assert not tcp_connects("127.0.0.1", port, timeout=0.5), "the local listener went with ssh"
    assert _ssh_clients(net) == []
    remove_key_dir(keys.dir)
    assert not keys.dir.exists()


@needs_simnet
def test_tunnel_start_waits_for_sshd_to_come_up(net: SimNetwork) -> None:
    """A node's sshd starts some time after its address is known: refused connections are retried."""
    a = _add_host(net, "a")
    keys = Keys(net)
    write_known_hosts(keys.known_hosts, a.public_ip, 22, keys.host.public_line)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    tunnel = _tunnel(a, keys, 7000)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(tunnel.start, 20)
        time.sleep(0.6)
        assert not starting.done(), "start() returned before sshd existed"
        a.start_sshd(keys.host.private_key, keys.client.public_line)
        starting.result(timeout=20)
    try:
        assert "Connection refused" in tunnel.stderr_tail()
        _echo_round_trip(tunnel.local_port(0), "loopback-of-a")
    finally:
        tunnel.stop()
    assert _ssh_clients(net) == []


@needs_simnet
def test_tunnel_restarts_on_the_same_port_after_ssh_is_killed(net: SimNetwork) -> None:
    a = _add_host(net, "a")
    keys = Keys(net)
    _sshd(a, keys)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    with _tunnel(a, keys, 7000).start(timeout=20) as tunnel:
        port, first = tunnel.local_port(0), tunnel.pid
        assert first is not None
        _echo_round_trip(port, "loopback-of-a")
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        deadline = killed + 10
        while time.monotonic() < deadline and not (tunnel.restarts == 1 and tunnel.alive):
            time.sleep(0.05)
        TIMINGS["tunnel_restart_after_kill"] = time.monotonic() - killed
        assert tunnel.restarts == 1 and tunnel.alive, f"not restarted in 10 s; ssh said:\n{tunnel.stderr_tail()}"
        assert tunnel.pid != first and tunnel.local_port(0) == port
        _echo_round_trip(port, "loopback-of-a")
        second = tunnel.pid
    assert second is not None and not psutil.pid_exists(second)
    assert _ssh_clients(net) == []


@needs_simnet
def test_tampered_host_key_is_refused_and_not_retried(net: SimNetwork) -> None:
    a = _add_host(net, "a")
    keys = Keys(net)
    _sshd(a, keys)
    impostor = generate_keypair(keys.dir, "other_host_key", "not-this-cluster")
    write_known_hosts(keys.known_hosts, a.public_ip, 22, impostor.public_line)
    tunnel = _tunnel(a, keys, 7000)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatchError) as caught:
        tunnel.start(timeout=20)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert a.public_ip in message and "did not match the one generated for this cluster" in message
    assert "man-in-the-middle" in message and "REMOTE HOST IDENTIFICATION HAS CHANGED" in message
    assert elapsed < 5, f"a host-key mismatch must fail at once, not be retried ({elapsed:.1f} s)"
    assert tunnel.pid is None and not tunnel.alive
    assert _ssh_clients(net) == [], "no ssh client may be left"


@needs_simnet
def test_refused_login_is_a_tunnel_error_not_retried(net: SimNetwork) -> None:
    a = _add_host(net, "a")
    keys = Keys(net)
    _sshd(a, keys)
    stranger = generate_keypair(keys.dir, "id_stranger", "not-authorized")
    tunnel = SSHTunnel(a.public_ip, 22, "root", stranger.private_key, keys.known_hosts, [(0, "127.0.0.1", 7000)])
    started = time.monotonic()
    with pytest.raises(TunnelError) as caught:
        tunnel.start(timeout=20)
    assert not isinstance(caught.value, HostKeyMismatchError)
    assert "refused" in str(caught.value) and "Permission denied" in str(caught.value)
    assert time.monotonic() - started < 5
    assert _ssh_clients(net) == []


# ---------------------------------------------------------------------------------------- ray


_DRIVER = r"""
import json, os, statistics, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
def where():
    return ray.util.get_node_ip_address()

@ray.remote(num_cpus=0)
def nothing():
    return None

for address in os.environ["SIMNET_RAY_ADDRESSES"].split(","):
    started = time.monotonic()
    for attempt in range(4):
        try:
            ray.init(address, logging_level="ERROR", log_to_driver=False)
            break
        except Exception as exc:  # Ray 2.60: the head's per-client server may fail its first start
            starting = ("Starting Ray client server failed", "Initialization failure from server")
            if not any(s in str(exc) for s in starting) or attempt == 3:
                raise
            print("RETRY", type(exc).__name__, str(exc).splitlines()[0][:200], flush=True)
    connect = time.monotonic() - started

    deadline = time.monotonic() + 60
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ips = {}
    for node in alive:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ips[node["NodeManagerAddress"]] = ray.get(where.options(scheduling_strategy=strategy).remote(), timeout=60)

    ray.get(nothing.remote())
    samples = []
    for _ in range(30):
        t = time.perf_counter()
        ray.get(nothing.remote())
        samples.append(time.perf_counter() - t)
    print("RESULT " + json.dumps({"address": address, "connect": connect, "nodes": len(alive), "ips": ips,
                                  "rtt_median": statistics.median(samples)}), flush=True)
    sys.stdin.readline()  # hold the connection while the test inspects this process's sockets
    ray.shutdown()
print("DONE", flush=True)
"""


def _start_driver(code: str, env: dict[str, str]) -> subprocess.Popen:
    """A driver in its own interpreter in the root namespace: the laptop's side of the wire."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **env}
    return subprocess.Popen([sys.executable, "-c", code], env=full_env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, prefix: str, seen: list[str], timeout: float) -> str:
    """Like conftest's `wait_for_line`, but every line read is kept in `seen` (retries, warnings)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    proc.kill()
    raise AssertionError(f"driver gave no {prefix!r} line; its output:\n" + "\n".join(seen[-40:]))


def _node_env(host: SimHost, token: str) -> dict[str, str]:
    """What the machine would have: its own PATH (a Python with Ray on it), HOME and TMPDIR."""
    tmp = host.directory / "tmp"
    tmp.mkdir(exist_ok=True)
    return {
        "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}",
        "HOME": str(host.directory),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }


def _ray_start(host: SimHost, token: str, *args: str) -> tuple[int, Path]:
    log = host.directory / "ray-start.log"
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--node-ip-address={host.private_ip}",
            "--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats",
            f"--temp-dir={host.directory / 'ray'}", *args]
    return host.run(argv, _node_env(host, token), log_path=log), log


def _peers(pid: int) -> list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(pid, remote address, remote port) of every inet connection of `pid` and its children;
    IPv4-mapped IPv6 addresses (gRPC's dual-stack sockets) are given as IPv4."""
    found = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.raddr:
                ip = ipaddress.ip_address(conn.raddr.ip.split("%", 1)[0])
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                found.append((proc.pid, ip, conn.raddr.port))
    return found


@needs_simnet
def test_ray_client_driver_reaches_isolated_nodes_only_through_the_tunnel(net: SimNetwork) -> None:
    a, b = _add_host(net, "a"), _add_host(net, "b")
    keys = Keys(net)
    _sshd(a, keys)
    token = secrets.token_hex(32)
    head, head_log = _ray_start(a, token, "--head", "--port=6379", "--ray-client-server-port=10001",
                                "--include-dashboard=false")
    started = time.monotonic()
    tunnels = [_tunnel(a, keys, 10001).start(timeout=20), _tunnel(a, keys, 10001, low_latency=True).start(timeout=20)]
    driver = None
    try:
        a.wait_listening(6379, timeout=60, pid=head, log_path=head_log)
        TIMINGS["ray_head_gcs_up"] = time.monotonic() - started
        worker, worker_log = _ray_start(b, token, f"--address={a.private_ip}:6379")
        a.wait_listening(10001, timeout=60, pid=head, log_path=head_log)
        assert not tcp_connects(a.public_ip, 10001, timeout=0.5), "Ray Client must not be public"

        addresses = [f"ray://127.0.0.1:{t.local_port(0)}" for t in tunnels]
        driver = _start_driver(_DRIVER, {"SIMNET_RAY_ADDRESSES": ",".join(addresses),
                                         "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert driver.stdin is not None
        seen: list[str] = []
        private = ipaddress.ip_network("10.0.0.0/8")
        for tunnel, mode in zip(tunnels, ("ssh_N", "ssh_low_latency")):
            result = json.loads(_read_until(driver, "RESULT ", seen, timeout=120))
            if mode == "ssh_N":
                TIMINGS["ray_cluster_up_to_tasks_done"] = time.monotonic() - started
            TIMINGS[f"ray_client_connect_via_{mode}"] = result["connect"]
            TIMINGS[f"ray_task_round_trip_median_via_{mode}"] = result["rtt_median"]
            assert result["nodes"] == 2, result
            assert result["ips"] == {a.private_ip: a.private_ip, b.private_ip: b.private_ip}, result

            peers = _peers(driver.pid)
            assert [p for p in peers if str(p[1]) == "127.0.0.1" and p[2] == tunnel.local_port(0)], \
                f"the driver should be connected through the tunnel's local port: {peers}"
            assert [p for p in peers if p[1] in private] == [], "the driver must never talk to a private address"
            driver.stdin.write("next\n")
            driver.stdin.flush()
        _read_until(driver, "DONE", seen, timeout=30)
        assert driver.wait(30) == 0
        TIMINGS["ray_client_connect_retries"] = sum(line.startswith("RETRY") for line in seen)
        print("\n".join(line for line in seen if line.startswith("RETRY")))
        assert [t.restarts for t in tunnels] == [0, 0]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(10)
        for tunnel in tunnels:
            tunnel.stop()
        # the low-latency tunnel's remote `sleep` ends with its connection (SIGHUP from the pty)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _remote_sleepers(a):
            time.sleep(0.05)
        sleepers = _remote_sleepers(a)
        stop_started = time.monotonic()
        b.stop(grace=2.0)  # workers before the head
        a.stop(grace=2.0)
        TIMINGS["ray_hosts_stop"] = time.monotonic() - stop_started
    assert sleepers == [], "a stopped low-latency tunnel must leave nothing running on the node"
    assert b.pids() == [] and a.pids() == []


def _remote_sleepers(host: SimHost) -> list[int]:
    found = []
    for pid in host.pids():
        try:
            if psutil.Process(pid).name() == "sleep":
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found
