"""The wiring of a simulated network: namespaces, bridges and the veth pairs that plug hosts in.

See `tests.simnet.network` for the topology. Everything here is named with the network's prefix
(or lives inside its namespaces), which is how `tests.simnet.cleanup` finds it again.
"""

from __future__ import annotations

import ipaddress
import random

from tests.simnet.processes import NamespacePins
from tests.simnet.system import IP, SimNetError, run_command


def add_namespace(name: str, pins: NamespacePins) -> None:
    """Create a network namespace with its loopback up, pinned in `pins` at once (its processes are
    found by its inode, even when a later step fails)."""
    run_command([IP, "netns", "add", name])
    pins.pin(name)
    run_command([IP, "-n", name, "link", "set", "lo", "up"])


def free_public_net(rng: random.SystemRandom) -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no route or address of this machine uses yet."""
    used = run_command([IP, "-4", "-o", "route", "show", "table", "all"], check=False).stdout
    used += run_command([IP, "-4", "-o", "addr", "show"], check=False).stdout
    for _ in range(100):
        candidate = f"198.{rng.choice((18, 19))}.{rng.randrange(256)}."
        if candidate not in used:
            return ipaddress.IPv4Network(candidate + "0/24")
    raise SimNetError("no free /24 in 198.18.0.0/15 for the public network")


def add_bridges(vpc_namespace: str, public_bridge: str, driver_ip: str) -> None:
    """The VPC's bridge (no address: nothing routes in) and the public bridge holding the driver's address."""
    run_command([IP, "-n", vpc_namespace, "link", "add", "br0", "type", "bridge"])
    run_command([IP, "-n", vpc_namespace, "link", "set", "br0", "up"])
    run_command([IP, "link", "add", public_bridge, "type", "bridge"])
    run_command([IP, "addr", "add", f"{driver_ip}/24", "dev", public_bridge])
    run_command([IP, "link", "set", public_bridge, "up"])


def attach_host(namespace: str, *, vpc_namespace: str, vpc_port: str, private_cidr: str,
                public_bridge: str, root_end: str, public_ip: str) -> None:
    """Plug a host's namespace in: `priv` on the VPC bridge (port `vpc_port`), `pub` on the public
    bridge (root end `root_end`), with their addresses; the host does not forward."""
    for argv in (
        [IP, "netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
        [IP, "-n", vpc_namespace, "link", "add", vpc_port, "type", "veth", "peer", "name", "priv", "netns", namespace],
        [IP, "-n", vpc_namespace, "link", "set", vpc_port, "master", "br0", "up"],
        [IP, "-n", namespace, "addr", "add", private_cidr, "dev", "priv"],
        [IP, "-n", namespace, "link", "set", "priv", "up"],
        [IP, "link", "add", root_end, "type", "veth", "peer", "name", "pub", "netns", namespace],
        [IP, "link", "set", root_end, "master", public_bridge, "up"],
        [IP, "-n", namespace, "addr", "add", f"{public_ip}/24", "dev", "pub"],
        [IP, "-n", namespace, "link", "set", "pub", "up"],
    ):
        run_command(argv)
