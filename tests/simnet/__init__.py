"""Simulated cloud hosts isolated by Linux network namespaces (see `network.py`)."""

from tests.simnet.network import (
    APT_LINE,
    SimHost,
    SimNetError,
    SimNetwork,
    check_available,
    cleanup_prefix,
    processes_in_netns,
    read_banner,
    tcp_connects,
)

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
