"""The SSH tunnel against the driver's co-tenants and a head that is not what it was (issue 21).

- its local ports are this process's own for the tunnel's whole life: while ssh restarts no other
  socket can bind them, and a connection made meanwhile is served once ssh is back;
- host and user names are checked whole (a trailing newline is refused), and a key directory with
  a space and a `%` in its path pins the host key it holds (ssh quotes and expands such values);
- a head whose host key changed on a reconnect cuts the pool off at once, raised in the user's code
  as `HostKeyChangedError` (a `PoolLostError`), through the same path as a lost head.

Real sshd and ssh in simulated hosts (tests/simnet); the latency test records the echo round trip
through the tunnel (printed with -s, merged into $SIMNET_TIMINGS).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from skyward_ray import errors
from skyward_ray.api import head_loss
from skyward_ray.api.pool_signals import PoolSignals
from skyward_ray.api.watch import PoolWatch
from skyward_ray.cluster import driver as driver_module
from skyward_ray.cluster.replacer import NodeReplacer
from skyward_ray.cluster.running import Cluster
from skyward_ray.cluster.ssh_keys import generate_keypair, write_known_hosts
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError, SSHTunnel
from skyward_ray.planning.nodes import NodeInfo
from tests.simnet import SimHost, SimNetwork, tcp_connects
from tests.simnet import testkit
from tests.simnet.testkit import Keys, add_host, echo_round_trip, needs_simnet, ssh_clients, tunnel_to
from tests.simnet.testkit import net, report_timings  # noqa: F401 (fixtures: pytest registers them where imported)

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")


def _host(net: SimNetwork) -> tuple[SimHost, Keys]:
    """A host with the cluster's sshd (its host key pinned) and an echo server on its loopback:7000."""
    a = add_host(net, "a")
    keys = Keys(net)
    testkit.start_sshd(a, keys)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    return a, keys


def _bind_error(port: int, option: int | None = None) -> int | None:
    """Try to take 127.0.0.1:`port` as another local program would; the errno, or None if it got it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if option is not None:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError as error:
            return error.errno
    return None


# ---------------------------------------------------------------------------------------- names, paths


def test_names_are_checked_whole_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    ok = dict(identity_file=tmp_path / "id", known_hosts_file=tmp_path / "known_hosts",
              forwards=[(0, "127.0.0.1", 7000)])
    SSHTunnel("203.0.113.7", 22, "root", **ok)  # type: ignore[arg-type]
    for host, user, remote in [("203.0.113.7\n", "root", "127.0.0.1"), ("203.0.113.7", "root\n", "127.0.0.1"),
                               ("203.0.113.7", "root", "127.0.0.1\n")]:
        with pytest.raises(ValueError, match="not a plain"):
            SSHTunnel(host, 22, user, tmp_path / "id", tmp_path / "kh", [(0, remote, 7000)])
    for bad in ('a"b', "a\\b", "a\nb", "${HOME}/x"):  # what ssh_config cannot be given safely
        with pytest.raises(ValueError, match="cannot be given safely"):
            SSHTunnel("203.0.113.7", 22, "root", tmp_path / "id", tmp_path / bad, [(0, "127.0.0.1", 7000)])


@needs_ssh
def test_ssh_reads_a_known_hosts_path_with_a_space_and_a_percent_as_written(tmp_path: Path) -> None:
    keys = tmp_path / "Application Support" / "100%h pools"
    tunnel = SSHTunnel("203.0.113.7", 22, "root", keys / "id_ed25519", keys / "known_hosts", [(0, "127.0.0.1", 7000)])
    argv = tunnel.command()
    resolved = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True, timeout=10, check=True)
    options = dict(line.split(" ", 1) for line in resolved.stdout.splitlines() if " " in line)
    assert options["userknownhostsfile"] == str(keys / "known_hosts"), "one file, the one written, unexpanded"
    assert options["globalknownhostsfile"] == "/dev/null" and options["stricthostkeychecking"] == "true"


@needs_simnet
def test_a_key_dir_with_a_space_and_a_percent_pins_its_host_key(net: SimNetwork) -> None:
    a = add_host(net, "a")
    keys_dir = net.directory / "key dir 100%h"
    keys_dir.mkdir(mode=0o700)
    client = generate_keypair(keys_dir, "id_ed25519", "client")
    host = generate_keypair(keys_dir, "ssh_host_ed25519_key", "host")
    a.start_sshd(host.private_key, client.public_line)
    known_hosts = write_known_hosts(keys_dir / "known_hosts", a.public_ip, 22, host.public_line)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    with SSHTunnel(a.public_ip, 22, "root", client.private_key, known_hosts, [(0, "127.0.0.1", 7000)]) as tunnel:
        echo_round_trip(tunnel.local_port(0), "loopback-of-a")
    assert ssh_clients(net) == []


# ---------------------------------------------------------------------------------------- the local ports


@needs_simnet
def test_the_tunnels_port_is_never_free_while_ssh_restarts(net: SimNetwork, caplog) -> None:
    a, keys = _host(net)
    with tunnel_to(a, keys, 7000, backoff=(1.5, 3.0)).start(timeout=20) as tunnel:
        port, first = tunnel.local_port(0), tunnel.pid
        assert first is not None
        echo_round_trip(port, "loopback-of-a")
        os.kill(first, signal.SIGKILL)  # the ssh we started, by pid: the supervisor restarts it after 1.5 s
        waiting: list[BaseException | None] = []
        during = threading.Thread(target=lambda: waiting.append(_round_trip_or_error(port)))
        attempts = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (tunnel.restarts == 1 and tunnel.alive):
            for option in (None, socket.SO_REUSEADDR, socket.SO_REUSEPORT):
                assert _bind_error(port, option) == errno.EADDRINUSE, \
                    f"another local program bound the tunnel's port {port} while ssh restarted (option {option})"
                attempts += 1
            if attempts >= 3 and during.ident is None and _gone(first):
                # a client that connects while ssh is down: gone, not merely sent SIGKILL (a dying
                # ssh still accepts into its backlog, and that connection is cut, as in real life)
                during.start()
            time.sleep(0.02)
        assert tunnel.restarts == 1 and tunnel.alive, f"not restarted; ssh said:\n{tunnel.stderr_tail()}"
        assert "restarting it (restart 1)" in caplog.text, "a restart is told (a connection through the tunnel broke)"
        assert attempts > 30, "the window between the kill and the restart was not probed"
        assert during.ident is not None, "no client connected while ssh was down"
        assert tunnel.local_port(0) == port and tunnel.pid != first
        echo_round_trip(port, "loopback-of-a")
        during.join(20)
        assert waiting == [None], f"a connection made while ssh restarted was not served: {waiting}"
    assert not tcp_connects("127.0.0.1", port, timeout=0.5), "stop() closes the port"
    assert _bind_error(port) is None, "and frees it"
    assert ssh_clients(net) == []


def _gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by the supervisor counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _round_trip_or_error(port: int) -> BaseException | None:
    try:
        echo_round_trip(port, "loopback-of-a")
    except BaseException as error:  # noqa: BLE001 (reported by the test's assertion)
        return error
    return None


@needs_simnet
def test_round_trip_latency_through_the_tunnel(net: SimNetwork) -> None:
    """What the relay costs on every call's path: 1-byte echoes through the tunnel (milliseconds in TIMINGS)."""
    a, keys = _host(net)
    for mode, low_latency in (("ssh_N", False), ("low_latency", True)):
        with tunnel_to(a, keys, 7000, low_latency=low_latency).start(timeout=20) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.local_port(0)), timeout=5) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(5)
                reader = sock.makefile("rb")
                reader.readline()
                samples = []
                for _ in range(300):
                    started = time.perf_counter()
                    sock.sendall(b"x")
                    assert reader.read(1) == b"x"
                    samples.append(time.perf_counter() - started)
                big = b"y" * (4 << 20)
                started = time.perf_counter()
                sender = threading.Thread(target=sock.sendall, args=(big,))
                sender.start()
                assert reader.read(len(big)) == big
                sender.join()
                testkit.TIMINGS[f"tunnel_echo_4MiB_via_{mode}"] = time.perf_counter() - started
        testkit.TIMINGS[f"tunnel_echo_rtt_median_ms_via_{mode}"] = statistics.median(samples) * 1000
        testkit.TIMINGS[f"tunnel_echo_rtt_p90_ms_via_{mode}"] = sorted(samples)[int(len(samples) * 0.9)] * 1000
        assert statistics.median(samples) < 0.02, f"{mode}: median round trip {statistics.median(samples):.4f} s"
    assert ssh_clients(net) == []


def _raised(error: BaseException, cause: BaseException) -> BaseException:
    """`error` as Python leaves it after `raise error from cause`."""
    try:
        try:
            raise cause
        except BaseException as caught:
            raise error from caught
    except BaseException as final:  # noqa: BLE001 - the chain is the point
        return final


def test_a_connection_dropped_while_connecting_is_told_from_an_error_of_the_call() -> None:
    """Ray Client reports a channel that went away mid-connect (CI: while uploading the runtime env's
    packages) as Ray's runtime-env error raised from a ConnectionError: the driver connects afresh.
    A package Ray refuses keeps Ray's own error: connecting again would not change it."""
    from ray.exceptions import RuntimeEnvSetupError

    shutting_down = _raised(RuntimeError("Failed to store package in the GCS."),
                            ConnectionError("Client is shutting down."))
    dropped = _raised(RuntimeEnvSetupError("Failed to upload module /repo/node_providers to the Ray cluster"),
                      shutting_down)
    assert driver_module.connection_dropped(dropped)
    assert driver_module.connection_dropped(ConnectionError("ray client connection timeout"))
    too_large = _raised(RuntimeEnvSetupError("Failed to upload module /repo/data to the Ray cluster"),
                        ValueError("Package size (600.00MiB) exceeds the maximum size of 512.00MiB."))
    assert not driver_module.connection_dropped(too_large)
    assert not driver_module.connection_dropped(RuntimeEnvSetupError("pip install failed"))


# ---------------------------------------------------------------------------------------- a changed host key


@needs_simnet
def test_a_changed_host_key_on_reconnect_cuts_the_pool_off_at_once(net: SimNetwork) -> None:
    """The tunnel's supervisor → the driver → the replacer → the pool's head loss → the main thread."""
    a, keys = _host(net)
    tunnel = tunnel_to(a, keys, 7000).start(timeout=20)
    connection = driver_module.DriverConnection(f"127.0.0.1:{tunnel.local_port(0)}", "ray://127.0.0.1:1", "t" * 64,
                                                None, tunnel=tunnel)
    head = NodeInfo(index=0, instance_id="i-head", ray_node_id="0" * 56, ip="10.0.0.2", provider="aws",
                    accelerator=None)
    cluster = Cluster(name="sky-hostkey", provider=None, offer=None, instance_ids=["i-head"],  # type: ignore[arg-type]
                      driver=connection, nodes=[head])
    ended_with: list[BaseException] = []
    signals = PoolSignals(closing=lambda: False, lost=lambda: loss.error)
    loss = head_loss.HeadLoss(lambda: cluster, PoolWatch(), signals, end_pool=ended_with.append)
    replacer = NodeReplacer(cluster, interval=3600, on_head_lost=loss.on_head_lost).start()
    signals.install()
    try:
        assert a.sshd_pid is not None
        os.kill(a.sshd_pid, signal.SIGTERM)  # the head's sshd (ours, by pid) gives way to an impostor's
        impostor = generate_keypair(keys.dir, "impostor_host_key", "someone-else")
        a.start_sshd(impostor.private_key, keys.client.public_line)
        assert tunnel.pid is not None
        cut = time.monotonic()
        os.kill(tunnel.pid, signal.SIGKILL)  # a network blip: the supervisor reconnects
        with pytest.raises(errors.PoolLostError) as caught:
            while time.monotonic() < cut + 20:
                time.sleep(0.05)
        elapsed = time.monotonic() - cut
    finally:
        signals.restore()
        replacer.stop()
        tunnel.stop()
    error = caught.value
    assert isinstance(error, errors.HostKeyChangedError), f"{type(error).__name__}: {error}"
    assert elapsed < 5, f"a changed host key must be raised at once, not after Ray's grace ({elapsed:.1f} s)"
    message = str(error)
    assert f"{a.public_ip}:22" in message and "changed" in message and "cut for safety" in message
    assert "check" in message.lower() and "sky-hostkey" in message
    assert isinstance(tunnel.error, HostKeyMismatchError) and tunnel.error.endpoint == f"{a.public_ip}:22"
    assert loss.error is error and cluster.lost and ended_with == []
    assert ssh_clients(net) == []
