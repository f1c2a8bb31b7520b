"""Simulated cloud hosts isolated by Linux network namespaces (see `network.py` for the topology)."""

from tests.simnet.cleanup import cleanup_prefix
from tests.simnet.host import SimHost
from tests.simnet.network import SimNetwork
from tests.simnet.probes import read_banner, tcp_connects
from tests.simnet.processes import processes_in_netns
from tests.simnet.system import APT_LINE, SimNetError, check_available

__all__ = [
    "APT_LINE",
    "SimHost",
    "SimNetError",
    "SimNetwork",
    "check_available",
    "cleanup_prefix",
    "processes_in_netns",
    "read_banner",
    "tcp_connects",
]
