"""Probes from *this* process's network namespace (the driver's laptop): does a port answer, and who.

A connection that completes proves little (this machine's gateway may accept any TCP connection),
so tests that prove isolation read the server's greeting line instead (`read_banner`).
"""

from __future__ import annotations

import socket


def tcp_connects(ip: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from *this* process's namespace to ip:port completes within `timeout`."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_banner(ip: str, port: int, timeout: float = 1.0) -> str | None:
    """Connect from this process's namespace and return the first line the server sends, or None
    when the connection fails or nothing (or no full line) arrives within `timeout`."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(256)
                if not chunk:
                    return None
                data += chunk
            return data.split(b"\n", 1)[0].decode(errors="replace")
    except OSError:
        return None
