"""Simulated cloud hosts that are really isolated: one Linux network namespace per host.

Topology of one `SimNetwork` (prefix `snXXXXX`, random per network):

    root namespace (the driver's laptop)            <prefix>-vpc namespace (the cloud's VPC)
      bridge <prefix>br  198.A.B.1/24  ("driver")      bridge br0 (no address: nothing routes in)
        |  veth <prefix>p0 <-> pub (198.A.B.10)          |  veth h0 <-> priv (10.231.X.10)
        |  veth <prefix>p1 <-> pub (198.A.B.11)          |  veth h1 <-> priv (10.231.X.11)
                               \\                      /
                                <prefix>-<name> namespace per host: lo, pub, priv, nftables

- The private network (10.231.X.0/24, X random) lives only in the VPC namespace's bridge. The root
  namespace has no interface or route on it, and hosts do not forward, so the driver's side cannot
  reach a private address: exactly a laptop facing a cloud VPC.
- The public network (198.18.0.0/15, the benchmarking range, so it never looks like a private 10.x
  address) is a bridge in the root namespace. Each host's nftables ruleset accepts on `pub` only
  tcp/22 from the driver's address to the host's public address (plus replies to connections the
  host opened: security groups are stateful); everything else arriving there is dropped.
- Hosts reach each other freely on the private network (a security group's self rule).


The pieces: `system` (the tools, `SimNetError`, `check_available`), `links` (namespaces, bridges,
veths), `firewall` (each host's nftables), `host` (`SimHost`: processes and sshd in a namespace),
`processes` (finding and ending them by pid), `cleanup` (removal by prefix, orphans, leftovers) and
`probes` (connecting from the driver's side). The names they export are importable from here too.

`SimNetwork.close` (also on `__exit__`, also when setup failed midway) removes every namespace, veth
and bridge this network made, found by its unique name prefix, and its files.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.simnet.cleanup import cleanup_orphans, cleanup_prefix, leftovers_of
from tests.simnet.firewall import Rule, driver_ssh_only, host_ruleset, load_ruleset
from tests.simnet.host import SimHost
from tests.simnet.links import add_bridges, add_namespace, attach_host, free_public_net
from tests.simnet.probes import read_banner, tcp_connects
from tests.simnet.processes import NamespacePins, end_pids, processes_in_netns, start_time
from tests.simnet.system import APT_LINE, IP, SETSID, SSHD, SYSTEM_PATH, SimNetError, check_available

__all__ = [  # what this module has always offered, wherever it is defined now
    "APT_LINE", "IP", "SETSID", "SSHD", "SYSTEM_PATH", "SimHost", "SimNetError", "SimNetwork",
    "check_available", "cleanup_orphans", "cleanup_prefix", "end_pids", "leftovers_of",
    "processes_in_netns", "read_banner", "tcp_connects",
]

_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class SimNetwork:
    """A private VPC plus a public network; `add_host` attaches simulated machines to both."""

    def __init__(self, private_net: str | None = None) -> None:
        """`private_net`: the VPC's range (e.g. a simulated cloud's VPC CIDR); default a random /24."""
        self._requested_private_net = private_net
        self._public_ips: set[str] = set()
        self.prefix = ""
        self.directory = Path()
        self.hosts: dict[str, SimHost] = {}
        self.private_net = ipaddress.IPv4Network("10.231.0.0/24")
        self.public_net = ipaddress.IPv4Network("198.18.0.0/24")
        self.driver_ip = ""
        self.vpc_namespace = ""
        self.public_bridge = ""
        self._pins = NamespacePins()  # every namespace this network made, held until close
        self._open = False

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> SimNetwork:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> SimNetwork:
        """Make the VPC and the public bridge under a fresh prefix (cleaning orphaned networks first)."""
        reason = check_available()
        if reason is not None:
            raise SimNetError(reason)
        for _ in range(20):  # a fresh prefix whose working directory does not exist yet
            self.prefix = f"sn{secrets.token_hex(3)[:5]}"
            self.directory = Path("/tmp") / self.prefix  # short: Ray's unix socket paths live below
            try:
                self.directory.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        else:
            raise SimNetError("could not find a free simnet prefix")
        (self.directory / "owner").write_text(f"{os.getpid()} {start_time(os.getpid())}\n")
        self._open = True
        try:
            cleanup_orphans()
            rng = random.SystemRandom()
            self.private_net = ipaddress.IPv4Network(
                self._requested_private_net or f"10.231.{rng.randrange(256)}.0/24")
            self.public_net = free_public_net(rng)
            self.driver_ip = str(self.public_net[1])
            self.vpc_namespace = f"{self.prefix}-vpc"
            self.public_bridge = f"{self.prefix}br"
            add_namespace(self.vpc_namespace, self._pins)
            add_bridges(self.vpc_namespace, self.public_bridge, self.driver_ip)
        except BaseException:
            self.close()
            raise
        return self

    def allocate_public_ip(self) -> str:
        """A public address no host has yet (a simulated cloud assigns it at launch, the host takes it at boot)."""
        for address in self.public_net.hosts():
            text = str(address)
            if address.packed[-1] >= 10 and text not in self._public_ips:
                self._public_ips.add(text)
                return text
        raise SimNetError(f"the public network {self.public_net} is full")

    def add_host(self, name: str, private_ip: str | None = None, public_ip: str | None = None,
                 allowed_tcp: Sequence[Rule] | None = None) -> SimHost:
        """Create a host: namespace, private and public veths, firewall. Name: [a-z][a-z0-9]{0,11}.

        Addresses default to the next free ones. `allowed_tcp` lists (source CIDR, first port, last
        port) that the public side admits, like a security group's rules; default: tcp/22 from the
        driver's address only.
        """
        if not self._open:
            raise SimNetError("the network is not open")
        if not _HOST_NAME.match(name) or name in self.hosts or name == "vpc":
            raise ValueError(f"bad or duplicate host name {name!r} (want [a-z][a-z0-9]{{0,11}})")
        index = len(self.hosts)
        if index >= 200:
            raise SimNetError("a simulated network holds at most 200 hosts")
        namespace = f"{self.prefix}-{name}"
        if public_ip is None:
            public_ip = self.allocate_public_ip()
        self._public_ips.add(public_ip)
        host = SimHost(self, name, index, namespace, private_ip or str(self.private_net[10 + index]),
                       public_ip, self.directory / name)
        host.allowed_tcp = list(allowed_tcp) if allowed_tcp is not None else driver_ssh_only(self.driver_ip)
        host.directory.mkdir(mode=0o700)
        self.hosts[name] = host
        add_namespace(namespace, self._pins)
        attach_host(namespace, vpc_namespace=self.vpc_namespace, vpc_port=f"h{index}",
                    private_cidr=f"{host.private_ip}/{self.private_net.prefixlen}",
                    public_bridge=self.public_bridge, root_end=f"{self.prefix}p{index}", public_ip=host.public_ip)
        load_ruleset(namespace, host_ruleset(host.public_ip, host.allowed_tcp))
        return host

    def close(self) -> None:
        """Stop every host's processes, then remove every namespace, link and file of this network.

        Found by this network's prefix (not only by what this object remembers), so a setup that
        failed halfway is cleaned too. Idempotent.
        """
        if not self.prefix:
            return
        errors: list[str] = []
        for host in list(self.hosts.values()):
            try:
                host.stop(grace=2.0)
            except Exception as exc:  # keep going: the namespaces must go regardless
                errors.append(str(exc))
        try:
            cleanup_prefix(self.prefix, self._pins.inodes())
        except Exception as exc:
            errors.append(str(exc))
        finally:
            # checked while pinned; a namespace let go now, with no process and no name, is destroyed
            self._pins.release()
        shutil.rmtree(self.directory, ignore_errors=True)
        self._open = False
        if errors:
            raise SimNetError("simnet teardown: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this network still exists (namespaces, root links, processes, files); [] when clean."""
        return leftovers_of(self.prefix, self._pins.inodes(), self.directory)

    def describe(self) -> str:
        """One line with this network's ranges and every host's addresses (for failure messages)."""
        return (f"simnet {self.prefix}: private {self.private_net}, public {self.public_net} (driver {self.driver_ip}), "
                + ", ".join(f"{h.name}={h.private_ip}/{h.public_ip}" for h in self.hosts.values()))

