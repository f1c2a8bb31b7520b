"""This process as a Ray driver of one pool: auth token, connection, heartbeat, disconnection.

The token is set in this process's environment only while the pool lives, and Ray's cached
authentication state is reset on both sides of that window, so consecutive pools (each with its
own fresh token) work in one process and the user's `~/.ray` is never read or written.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import ray
from ray.experimental import internal_kv

from skyward_ray.names import HEARTBEAT_KEY, HEARTBEAT_NAMESPACE

_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED")


def _reset_ray_auth_cache() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class DriverConnection:
    """Connect to a pool's head, keep a heartbeat going, and disconnect cleanly."""

    def __init__(self, address: str, auth_token: str, node_ip: str | None, runtime_env: dict[str, Any] | None,
                 heartbeat_interval: float = 2.0) -> None:
        self.address = address
        self._token = auth_token
        self._node_ip = node_ip
        self._runtime_env = runtime_env
        self._interval = heartbeat_interval
        self._saved_env: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0
        self.connected = False

    def use_token(self) -> None:
        """Put this cluster's token where Ray's clients read it (this process's environment)."""
        if ray.is_initialized():
            raise RuntimeError(
                "Ray is already initialized in this process; call ray.shutdown() before opening a sky.Compute pool"
            )
        if not self._saved_env:
            self._saved_env = {name: os.environ.get(name) for name in _AUTH_VARIABLES}
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self._token, "RAY_USAGE_STATS_ENABLED": "0"})
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        _reset_ray_auth_cache()

    def gcs_client(self) -> Any:
        """A plain GCS client (not a driver): lets the launcher watch nodes join without joining."""
        from ray._raylet import GcsClient

        self.use_token()
        return GcsClient(address=self.address)

    def connect(self) -> None:
        self.use_token()
        kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": True, "configure_logging": False}
        if self._node_ip:
            kwargs["_node_ip_address"] = self._node_ip
        if self._runtime_env:
            kwargs["runtime_env"] = self._runtime_env
        try:
            ray.init(**kwargs)
        except BaseException:
            self._restore_env()
            raise
        self.connected = True
        self.beat()
        self._thread = threading.Thread(target=self._beat_forever, name="skyward-heartbeat", daemon=True)
        self._thread.start()

    def beat(self, value: bytes | None = None) -> None:
        """Tell the head's watchdog this driver is alive (or, with b"detached", to stand down)."""
        self._beats += 1
        internal_kv._internal_kv_put(
            HEARTBEAT_KEY, value if value is not None else str(self._beats).encode(), overwrite=True,
            namespace=HEARTBEAT_NAMESPACE,
        )

    def _beat_forever(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):
                self.beat()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.connected:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self.connected = False
        self._restore_env()

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        with contextlib.suppress(Exception):
            _reset_ray_auth_cache()
