"""Ports for nodes that share this machine (local pools): Ray's fixed defaults would collide.

Only the local provider runs several nodes on one host, so only it allocates ports; a cloud's
machine has the host to itself and keeps Ray's defaults.
"""

from __future__ import annotations

import secrets
import socket
import threading

# above Ray's worker ports (10002-19999), below Linux's ephemeral range (32768-60999)
PORT_RANGE = (20000, 32767)


class PortAllocator:
    """Hands out TCP ports free here now, never the same one twice.

    A port is only reserved by name: the node binds it seconds later. Two things could take it
    meanwhile, and both are ruled out. This process could hand it to another node (so a port
    is never handed out twice), and the kernel could hand it to someone else's bind(0) or
    outgoing connection (so ports come from below the kernel's ephemeral range, which Ray's own
    randomly placed ports and every client socket use). Ray's worker ports are avoided too (the
    client server must stay outside them). The oldest ports are forgotten past `remembered`
    (long since bound by their nodes, or given up), so a long-lived driver never runs out.
    """

    def __init__(self, port_range: tuple[int, int] = PORT_RANGE, remembered: int = 4096) -> None:
        self.port_range = port_range
        self.remembered = remembered
        self._handed_out: dict[int, None] = {}  # insertion-ordered: the oldest first
        self._lock = threading.Lock()

    def free_port(self, ip: str = "") -> int:
        low, high = self.port_range
        with self._lock:
            for _ in range(1000):
                port = low + secrets.randbelow(high - low + 1)
                if port in self._handed_out:
                    continue
                with socket.socket() as sock:
                    try:
                        sock.bind((ip, port))
                    except OSError:
                        continue
                self._handed_out[port] = None
                while len(self._handed_out) > self.remembered:
                    del self._handed_out[next(iter(self._handed_out))]
                return port
        raise RuntimeError(f"no free TCP port between {low} and {high} on {ip or 'this machine'}")

    def colocated_port_args(self, ip: str = "") -> list[str]:
        """`ray start` flags for a node sharing its host with other nodes.

        Ray gives these ports fixed defaults (52365, ...), which collide when several nodes
        run on one machine; each node gets free ones instead. (A local head runs no Ray Client
        server, whose default is 10001: `LocalCloud` turns it off.)"""
        flags = ["--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port"]
        return [f"{flag}={self.free_port(ip)}" for flag in flags]


# One per driver process: every local pool this process opens draws from it, so two pools'
# nodes never get the same port.
PORTS = PortAllocator()
