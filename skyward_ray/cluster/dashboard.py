"""Ray's dashboard of a pool, reachable from this machine: where it is, and how to sign in.

Why a module of its own: a `with` pool (`sky.Compute(dashboard=True)`) and a detached pool's
keeper (`skyward-ray up --dashboard`) open it the same way. The head runs the dashboard on its
own loopback only (`node/startup_script.py`), so it is reached like the rest of the pool:

- a cloud pool (driven through an SSH tunnel): a second tunnel to the same head, with the same
  pinned host key (`SSHTunnel.sibling`), forwards a local port to the dashboard's;
- a local pool (`direct_driver`): the head is on this machine; its own address is the URL.

The dashboard's port is the one Ray itself records in the GCS (the dashboard starts after the
GCS, so this waits for it). Ray's token auth guards it: a browser asks for the pool's token, an
HTTP client sends `Authorization: Bearer <token>`. The token is never printed; a `with` pool
writes it to a 0600 file (`token_path`) that the sign-in hint names, removed when the pool ends.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyward_ray.cluster import pool_state, token_file
from skyward_ray.cluster.ssh_tunnel import SSHTunnel

WAIT_S = 60.0  # the dashboard starts after the GCS; its address appears in the GCS's KV
_KV_NAMESPACE, _KV_KEY = b"dashboard", b"dashboard"  # Ray's own record of the dashboard's address


@dataclass
class Dashboard:
    """The dashboard as this machine reaches it: `url`, and the tunnel that makes it reachable
    (None for a local pool). `stop()` ends the tunnel and removes the token file, if any."""

    url: str
    tunnel: SSHTunnel | None = None
    token_file: Path | None = None

    def stop(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        if self.token_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.token_file.unlink()

    def sign_in_hint(self, where_token_is: str | None = None) -> str:
        """How to open it, without the token: where the token is, and the header HTTP clients send."""
        where = where_token_is or (f"the token in {self.token_file}" if self.token_file else "the pool's Ray token")
        return (f"Ray's dashboard: {self.url} (it asks for {where}; HTTP clients send the header "
                "`Authorization: Bearer <token>`)")


def head_port(gcs: Any, wait_s: float = WAIT_S) -> int | None:
    """The port the head's dashboard listens on (its loopback), or None if it is not up within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        address = None
        with contextlib.suppress(Exception):
            address = gcs.internal_kv_get(_KV_KEY, _KV_NAMESPACE, timeout=5)
        if address:
            return int(address.decode().rsplit(":", 1)[1])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def open_dashboard(gcs: Any, tunnel: SSHTunnel | None, wait_s: float = WAIT_S) -> Dashboard | None:
    """Find the head's dashboard through `gcs` and make it reachable here: through a sibling of the
    driver's `tunnel` (clouds) or directly (a local pool, `tunnel` None). None when it did not come up."""
    port = head_port(gcs, wait_s)
    if port is None:
        return None
    if tunnel is None:  # the head is on this machine, its dashboard on 127.0.0.1
        return Dashboard(f"http://127.0.0.1:{port}")
    forward = tunnel.sibling([(0, "127.0.0.1", port)]).start(timeout=30)
    return Dashboard(f"http://127.0.0.1:{forward.local_port(0)}", forward)


def token_path(cluster_name: str) -> Path:
    """Where a `with` pool's token is kept for signing in to its dashboard: the private runtime root."""
    return pool_state.runtime_root() / f"{cluster_name}.dashboard-token"


def write_token(path: Path, token: str) -> Path:
    """Write `token` to `path`, 0600, never through a link or over another file's contents."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    token_file.write_new(path, token)
    return path
