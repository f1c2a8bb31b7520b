"""A Ray Client driver outside the simulated VPC runs tasks on two isolated hosts through the tunnel alone.

The hosts (tests/simnet) see each other only on their private network; the driver reaches the head's
Ray Client server only through `SSHTunnel` (plain `ssh -N`, and the low-latency mode), and never
talks to a private address. Real processes throughout; the hosts' processes are ended by pid and the
`net` fixture asserts nothing of the network is left. Isolation, keys and the tunnel on their own:
tests/test_simnet.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.simnet import SimHost, SimNetwork, tcp_connects
from tests.simnet.network import SYSTEM_PATH
from tests.simnet.testkit import TIMINGS, Keys, add_host, needs_simnet, start_sshd, tunnel_to
from tests.simnet.testkit import net, report_timings  # noqa: F401 (fixtures: pytest registers them where imported)

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


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
    a, b = add_host(net, "a"), add_host(net, "b")
    keys = Keys(net)
    start_sshd(a, keys)
    token = secrets.token_hex(32)
    head, head_log = _ray_start(a, token, "--head", "--port=6379", "--ray-client-server-port=10001",
                                "--include-dashboard=false")
    started = time.monotonic()
    tunnels = [tunnel_to(a, keys, 10001).start(timeout=20), tunnel_to(a, keys, 10001, low_latency=True).start(timeout=20)]
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
