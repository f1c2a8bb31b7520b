"""Isolated simulated hosts, the per-cluster SSH keys and the supervised tunnel.

Every "host" is a Linux network namespace (tests/simnet): a private VPC the driver's side cannot
route to, and a public address that answers only tcp/22 from the driver. These tests prove the
isolation is real, and that `skyward_ray.cluster.ssh_tunnel.SSHTunnel` reaches a host's loopback
through its sshd with a pinned host key. Ray across such hosts: tests/test_simnet_ray.py.

Real processes throughout; every test ends what it starts by pid (never `ray stop`, never by name)
and asserts that no namespace, link, sshd or ssh of its network is left. Without root, iproute2,
nftables or OpenSSH the tests skip with the one-line reason `check_available()` gives.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from skyward_ray.cluster.ssh_keys import cluster_key_dir, generate_keypair, remove_key_dir, write_known_hosts
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError, SSHTunnel, TunnelError
from tests.simnet import SimNetwork, read_banner, tcp_connects
from tests.simnet.network import IP, SYSTEM_PATH
from tests.simnet.testkit import (
    TIMINGS,
    Keys,
    add_host,
    echo_round_trip,
    needs_simnet,
    net,  # noqa: F401 (a fixture: pytest registers it where it is imported)
    report_timings,  # noqa: F401 (an autouse fixture, likewise)
    ssh_clients,
    start_sshd,
    tunnel_to,
)

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                      reason="ssh-keygen is not installed: apt-get install -y openssh-client")


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


@needs_simnet
def test_a_closed_network_never_claims_the_namespace_that_reuses_its_inode() -> None:
    """The kernel gives a destroyed namespace's inode number to the next namespace made on the
    machine (the lowest free number): someone else's namespace then looks like ours by inode. A
    closed network's check must not report that namespace's process, and closing again must not
    end it (in CI: another test worker's machine)."""
    with SimNetwork() as first:
        first.add_host("a")
        theirs = {os.stat(f"/run/netns/{ns}").st_ino for ns in (first.vpc_namespace, f"{first.prefix}-a")}
    held: list[str] = []  # namespaces made to take the free numbers up to one of `theirs`
    sleeper = None
    try:
        reused = None
        for attempt in range(3):  # the numbers are free once the kernel has destroyed the namespaces (soon)
            time.sleep(0.5)
            for n in range(400):
                name = f"snreuse{os.getpid()}x{attempt}x{n}"  # not a simnet prefix: no network's cleanup takes it
                subprocess.run([IP, "netns", "add", name], check=True)
                held.append(name)
                number = os.stat(f"/run/netns/{name}").st_ino
                if number in theirs:
                    reused = name
                    break
                if number > max(theirs):
                    break  # ours were not free (yet, or taken by another process)
            if reused:
                break
        if reused is None:
            pytest.skip("another process took the freed inode numbers first (a busy machine)")
        sleeper = subprocess.Popen([IP, "netns", "exec", reused, "sleep", "600"], start_new_session=True)
        deadline = time.monotonic() + 10
        while psutil.Process(sleeper.pid).name() != "sleep":  # it is in the namespace once it runs sleep
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert first.leftovers() == [], "a process in another namespace is not ours"
        first.close()  # idempotent, and blind to the other namespace
        assert sleeper.poll() is None, "closing a closed network ended another namespace's process"
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait(10)
        for name in held:
            subprocess.run([IP, "netns", "delete", name], check=False)


# ---------------------------------------------------------------------------------------- isolation


@needs_simnet
def test_isolation_private_network_only_between_hosts(net: SimNetwork) -> None:
    a, b = add_host(net, "a"), add_host(net, "b")
    keys = Keys(net)
    start_sshd(a, keys)
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
    a = add_host(net, "a")
    keys = Keys(net)
    start_sshd(a, keys)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    assert read_banner(a.public_ip, 7000, timeout=0.5) is None

    started = time.monotonic()
    with tunnel_to(a, keys, 7000).start(timeout=20) as tunnel:
        TIMINGS["tunnel_up"] = time.monotonic() - started
        assert tunnel.alive and tunnel.restarts == 0 and tunnel.pid is not None
        port = tunnel.local_port(0)
        echo_round_trip(port, "loopback-of-a")
        pid = tunnel.pid
    assert not psutil.pid_exists(pid), "stop() ends ssh and reaps it"
    assert not tunnel.alive and tunnel.pid is None
    assert not tcp_connects("127.0.0.1", port, timeout=0.5), "the local listener went with ssh"
    assert ssh_clients(net) == []
    remove_key_dir(keys.dir)
    assert not keys.dir.exists()


@needs_simnet
def test_tunnel_start_waits_for_sshd_to_come_up(net: SimNetwork) -> None:
    """A node's sshd starts some time after its address is known: refused connections are retried."""
    a = add_host(net, "a")
    keys = Keys(net)
    write_known_hosts(keys.known_hosts, a.public_ip, 22, keys.host.public_line)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    tunnel = tunnel_to(a, keys, 7000)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(tunnel.start, 20)
        time.sleep(0.6)
        assert not starting.done(), "start() returned before sshd existed"
        a.start_sshd(keys.host.private_key, keys.client.public_line)
        starting.result(timeout=20)
    try:
        assert "Connection refused" in tunnel.stderr_tail()
        echo_round_trip(tunnel.local_port(0), "loopback-of-a")
    finally:
        tunnel.stop()
    assert ssh_clients(net) == []


@needs_simnet
def test_tunnel_restarts_on_the_same_port_after_ssh_is_killed(net: SimNetwork) -> None:
    a = add_host(net, "a")
    keys = Keys(net)
    start_sshd(a, keys)
    a.start_echo_server("127.0.0.1", 7000, "loopback-of-a")
    with tunnel_to(a, keys, 7000).start(timeout=20) as tunnel:
        port, first = tunnel.local_port(0), tunnel.pid
        assert first is not None
        echo_round_trip(port, "loopback-of-a")
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        deadline = killed + 10
        while time.monotonic() < deadline and not (tunnel.restarts == 1 and tunnel.alive):
            time.sleep(0.05)
        TIMINGS["tunnel_restart_after_kill"] = time.monotonic() - killed
        assert tunnel.restarts == 1 and tunnel.alive, f"not restarted in 10 s; ssh said:\n{tunnel.stderr_tail()}"
        assert tunnel.pid != first and tunnel.local_port(0) == port
        echo_round_trip(port, "loopback-of-a")
        second = tunnel.pid
    assert second is not None and not psutil.pid_exists(second)
    assert ssh_clients(net) == []


@needs_simnet
def test_tampered_host_key_is_refused_and_not_retried(net: SimNetwork) -> None:
    a = add_host(net, "a")
    keys = Keys(net)
    start_sshd(a, keys)
    impostor = generate_keypair(keys.dir, "other_host_key", "not-this-cluster")
    write_known_hosts(keys.known_hosts, a.public_ip, 22, impostor.public_line)
    tunnel = tunnel_to(a, keys, 7000)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatchError) as caught:
        tunnel.start(timeout=20)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert a.public_ip in message and "did not match the one generated for this cluster" in message
    assert "man-in-the-middle" in message and "REMOTE HOST IDENTIFICATION HAS CHANGED" in message
    assert elapsed < 5, f"a host-key mismatch must fail at once, not be retried ({elapsed:.1f} s)"
    assert tunnel.pid is None and not tunnel.alive
    assert ssh_clients(net) == [], "no ssh client may be left"


@needs_simnet
def test_refused_login_is_a_tunnel_error_not_retried(net: SimNetwork) -> None:
    a = add_host(net, "a")
    keys = Keys(net)
    start_sshd(a, keys)
    stranger = generate_keypair(keys.dir, "id_stranger", "not-authorized")
    tunnel = SSHTunnel(a.public_ip, 22, "root", stranger.private_key, keys.known_hosts, [(0, "127.0.0.1", 7000)])
    started = time.monotonic()
    with pytest.raises(TunnelError) as caught:
        tunnel.start(timeout=20)
    assert not isinstance(caught.value, HostKeyMismatchError)
    assert "refused" in str(caught.value) and "Permission denied" in str(caught.value)
    assert time.monotonic() - started < 5
    assert ssh_clients(net) == []
