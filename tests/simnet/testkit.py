"""What the simnet test modules (tests/test_simnet*.py) share: a checked network per test, the
cluster's keys, an sshd and a tunnel to a host, and the step timings they report.

The fixtures `net` and `report_timings` are imported by each module (pytest registers a fixture
where its module imports it), so every module gets the same fresh-network-per-test guarantee.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from skyward_ray.cluster.ssh_keys import KeyPair, cluster_key_dir, generate_keypair, write_known_hosts
from skyward_ray.cluster.ssh_tunnel import SSHTunnel
from tests.simnet.host import SimHost
from tests.simnet.network import SimNetwork
from tests.simnet.system import check_available

REASON = check_available()
needs_simnet = pytest.mark.skipif(REASON is not None, reason=REASON or "")

TIMINGS: dict[str, float] = {}
"""Seconds, by step; printed at the end of each module (`-s`) and merged into $SIMNET_TIMINGS if set
(merged, so modules run on different pytest-xdist workers all land in the one file)."""


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    """At the end of a module, print the timings its tests recorded and merge them into $SIMNET_TIMINGS."""
    before = dict(TIMINGS)
    yield
    recorded = {k: round(v, 4) for k, v in TIMINGS.items() if before.get(k) != v}
    if recorded:
        text = json.dumps(recorded, indent=1)
        print(f"\nsimnet timings (s):\n{text}")
        if os.environ.get("SIMNET_TIMINGS"):
            path = Path(os.environ["SIMNET_TIMINGS"])
            try:
                merged = json.loads(path.read_text())
            except (OSError, ValueError):
                merged = {}
            merged.update(recorded)
            path.write_text(json.dumps(merged, indent=1) + "\n")


@pytest.fixture
def net() -> Iterator[SimNetwork]:
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


def add_host(network: SimNetwork, name: str) -> SimHost:
    """`network.add_host(name)`, timing the first one."""
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


def start_sshd(host: SimHost, keys: Keys) -> None:
    """Run the host's sshd with the cluster's keys and pin its host key in the driver's known_hosts."""
    started = time.monotonic()
    host.start_sshd(keys.host.private_key, keys.client.public_line)
    TIMINGS.setdefault("sshd_start", time.monotonic() - started)
    write_known_hosts(keys.known_hosts, host.public_ip, 22, keys.host.public_line)


def tunnel_to(host: SimHost, keys: Keys, remote_port: int, **kwargs: object) -> SSHTunnel:
    """A (not yet started) tunnel from a free local port to the host's 127.0.0.1:`remote_port`."""
    return SSHTunnel(host.public_ip, 22, "root", keys.client.private_key, keys.known_hosts,
                     [(0, "127.0.0.1", remote_port)], **kwargs)  # type: ignore[arg-type]


def echo_round_trip(port: int, token: str, payload: bytes = b"ping through the tunnel\n") -> None:
    """Through local `port`, reach the echo server greeting with `token` on the host's loopback."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        reader = sock.makefile("rb")
        greeting = reader.readline().decode().split()
        assert greeting[:1] == [token], f"reached the wrong server: {greeting}"
        assert greeting[1] == "127.0.0.1", "the forward should arrive on the host's own loopback"
        sock.sendall(payload)
        assert reader.read(len(payload)) == payload


def ssh_clients(network: SimNetwork) -> list[int]:
    """Pids of ssh client processes using this network's files (tunnels); sshd is checked by `net`."""
    marker = str(network.directory) + "/"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or [""]
        if os.path.basename(argv[0]) == "ssh" and marker in " ".join(argv):
            found.append(proc.pid)
    return found
