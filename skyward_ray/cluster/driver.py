"""This process as a Ray driver of one pool: auth token, connection, heartbeat, disconnection.

Two ways in, one interface:

- **direct** (the local provider): `ray.init("<head ip>:<port>")`. A Ray driver attaches to a
  raylet on its own machine, so this works only where this process shares the head's machine.
- **through an SSH tunnel** (every cloud): `ray.init("ray://127.0.0.1:<port>")`, Ray Client over a
  supervised OpenSSH tunnel to the head, plus a second forward to the head's GCS for watching
  nodes join and for the heartbeat. Only the head's port 22 is reachable from here.

The token is set in this process's environment only while the pool lives (Ray's clients, Ray
Client's gRPC channel included, read it from there), and Ray's cached authentication state is
reset on both sides of that window, so consecutive pools (each with its own fresh token) work in
one process and the user's `~/.ray` is never read or written.

The heartbeat that keeps the head's watchdog from ending the pool goes through a plain GCS client,
the same in both modes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from skyward_ray.cluster.node_output import route_raylet_messages
from skyward_ray.cluster.ssh_tunnel import SSHTunnel, TunnelError
from skyward_ray.errors import ProvisioningError
from skyward_ray.names import HEARTBEAT_KEY, HEARTBEAT_NAMESPACE

_GCS_PATIENCE = "RAY_gcs_rpc_server_reconnect_timeout_s"
# A driver's core worker flushes its task events to the head's GCS and its metrics to the head's
# agent when it shuts down, each waiting out its own deadline when the head is gone: `ray.shutdown`
# after a lost head took 13-14 s here (seen in py-spy: TaskEventBufferImpl::Stop, then
# OpenTelemetryMetricRecorder::Shutdown), far longer on a loaded CI box, where the user's process
# hung past 120 s before its `except PoolLostError` ran. The driver reports neither (0.08 s then).
# Its tasks' own events and metrics, reported by the nodes, are not affected.
_NO_DRIVER_TELEMETRY = {"RAY_task_events_report_interval_ms": "0", "RAY_enable_metrics_collection": "0"}
_POOL_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED", _GCS_PATIENCE,
                   *_NO_DRIVER_TELEMETRY)
# Ray's core worker ends a driver's whole process (exit 1, a C++ log line) when the head's GCS has
# not answered for this long (Ray's default: 60 s). The pool notices a lost head itself and raises
# `PoolLostError` in the user's code, which ends the pool; on a loaded machine that can take longer
# than 60 s, so Ray's own exit must come well after it.
DRIVER_GCS_PATIENCE_S = 300
# A direct driver's core worker puts in absl's failure-signal handler for SIGTERM (among others) at
# `ray.init` and takes it out early in `ray.shutdown`, leaving the OS default (kill) behind while the
# rest of the shutdown runs (about a second, longer under load). A second SIGTERM in that window
# killed the process mid-teardown instead of being held. Ray reads its switch for that handler,
# RAY_DISABLE_FAILURE_SIGNAL_HANDLER, once, at import, into this constant: so it is set there, and
# only while a pool's driver is connected. What is lost: absl's C++ stack dump on a driver crash.
_FAILURE_HANDLER_SWITCH = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
CLIENT_SERVER_PORT = 10001  # Ray Client's server on the head (Ray's default), reached through the tunnel
CLIENT_CONNECT_ATTEMPTS = 3  # Ray 2.60's per-client server sometimes fails its first start; a retry connects
CLIENT_CONNECT_PATIENCE_S = 120.0  # Ray Client gives up after ~35 s; a loaded head's client server may start later


def connection_dropped(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is Ray Client's connection going away (Ray Client
    says so with a ConnectionError), as opposed to an error of the call itself (a runtime env Ray
    refuses, a package too large, a token refused)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError):
            return True
        current = current.__cause__ or current.__context__
    return False


def _reset_ray_auth_cache() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class DriverConnection:
    """Connect to a pool's head, keep a heartbeat going, and disconnect cleanly.

    `gcs_address` is where this process reaches the head's GCS, `ray_address` what `ray.init` gets
    (a GCS address for a direct driver, `ray://...` for Ray Client). `tunnel`, if any, is owned by
    the connection and ended with it.
    """

    def __init__(self, gcs_address: str, ray_address: str, auth_token: str, runtime_env: dict[str, Any] | None,
                 node_ip: str | None = None, tunnel: SSHTunnel | None = None,
                 heartbeat_interval: float = 2.0) -> None:
        self.gcs_address = gcs_address
        self.address = ray_address
        self.tunnel = tunnel
        self._token = auth_token
        self._node_ip = node_ip
        self.runtime_env = runtime_env  # what `connect` joins with; may be set until then
        self._interval = heartbeat_interval
        self._saved_env: dict[str, str | None] = {}
        self._saved_failure_switch: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gcs: Any = None
        self._beats = 0
        self.head_answered_at: float | None = None
        self.connected = False

    @property
    def node_ip(self) -> str | None:
        """The head's raylet address a direct driver joins through (None through Ray Client)."""
        return self._node_ip

    @property
    def through_client(self) -> bool:
        return self.address.startswith("ray://")

    def on_connection_cut(self, callback: Callable[[TunnelError], None]) -> None:
        """Call `callback(error)` as soon as the tunnel gives up for good (e.g. the head's host key
        changed on a reconnect), from the tunnel's thread; never for a direct driver (no tunnel)."""
        if self.tunnel is not None:
            self.tunnel.when_failed(callback)

    def use_token(self) -> None:
        """Put this cluster's token where Ray's clients read it (this process's environment)."""
        if ray.is_initialized():
            raise RuntimeError(
                "Ray is already initialized in this process; call ray.shutdown() before opening a sky.Compute pool"
            )
        if not self._saved_env:
            self._saved_env = {name: os.environ.get(name) for name in _POOL_VARIABLES}
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self._token, "RAY_USAGE_STATS_ENABLED": "0",
                           _GCS_PATIENCE: str(DRIVER_GCS_PATIENCE_S), **_NO_DRIVER_TELEMETRY})
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        _reset_ray_auth_cache()

    def gcs_client(self) -> Any:
        """A plain GCS client (not a driver): lets the launcher watch nodes join without joining.

        Raises while the GCS does not answer yet (a forwarded port accepts before the head is up).
        """
        from ray._raylet import GcsClient

        if self._gcs is None:
            self.use_token()
            self._gcs = GcsClient(address=self.gcs_address)
        return self._gcs

    def connect(self, heartbeat: bool = True) -> None:
        """Join as a Ray driver. `heartbeat=False` for a client of a detached pool: its keeper beats."""
        self.use_token()
        # The tasks' own output streams here, as Ray users expect of their prints; Ray's "(raylet)"
        # messages only when asked for (`node_output`): a crashing worker otherwise floods stderr
        # with lines the raised error already sums up.
        kwargs: dict[str, Any] = {"address": self.address}
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env
        if not self.through_client:
            kwargs.update(log_to_driver=True, configure_logging=False)
            route_raylet_messages()
            if self._node_ip:
                kwargs["_node_ip_address"] = self._node_ip  # this machine's raylet is the head's own
            self._keep_signal_handlers()
        try:
            self._init(kwargs)
        except BaseException:
            self._restore_env()
            raise
        self.connected = True
        if heartbeat:
            self.start_heartbeat()

    def warm_up(self) -> None:
        """Join through Ray Client once and leave (a detached pool's keeper, before it says ready).

        Ray 2.60's per-client server on the head sometimes fails its first start ("Starting Ray client
        server failed"); `connect` retries that, but a user's plain `ray.init()` would not. After one
        session has started cleanly, later ones do."""
        if not self.through_client:
            return
        self.connect(heartbeat=False)
        with contextlib.suppress(Exception):
            ray.shutdown()
        self.connected = False

    def start_heartbeat(self) -> None:
        """Beat now and every interval from now on: called as soon as the head's GCS answers (before
        this process joins as a driver), so the head's watchdog hears from a live driver early and
        can end a pool whose driver died during boot within its heartbeat grace."""
        if self._thread is not None:
            return
        with contextlib.suppress(Exception):
            self.beat()
        self._thread = threading.Thread(target=self._beat_forever, name="skyward-heartbeat", daemon=True)
        self._thread.start()

    def _init(self, kwargs: dict[str, Any]) -> None:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                ray.init(**kwargs)
                return
            except Exception as error:  # noqa: BLE001 - what is retried is sorted out below; the rest is raised
                if not self.through_client or not connection_dropped(error):
                    raise
                if "connection timeout" in str(error):
                    # The launcher saw the head alive in its GCS: a client server that does not answer
                    # yet is starting (slow on a loaded head), so wait for it within a bound.
                    if time.monotonic() - started < CLIENT_CONNECT_PATIENCE_S:
                        time.sleep(1.0)
                        continue
                    raise ProvisioningError(
                        f"Ray Client could not connect to the head through the SSH tunnel ({self.address}): {error}. "
                        "The cluster's auth token may have been rejected, or the head's client server is down."
                        f"{self._tunnel_report()}") from None
                if attempt >= CLIENT_CONNECT_ATTEMPTS:
                    raise ProvisioningError(
                        f"Ray Client could not connect to the head through the SSH tunnel ({self.address}) after "
                        f"{attempt} attempts: {error}{self._tunnel_report()}") from None
                # "Starting Ray client server failed" (the head's per-client server crashed at start), or
                # the channel dropped mid-connect (CI: while uploading the runtime env's packages) and did
                # not come back within Ray Client's grace: a fresh connection
                time.sleep(1.0)

    def _tunnel_report(self) -> str:
        """What the tunnel's ssh said lately (restarts, a dead peer), for an error about the connection."""
        if self.tunnel is None:
            return ""
        return (f"\nThe SSH tunnel restarted ssh {self.tunnel.restarts} time(s); ssh said:\n"
                f"{self.tunnel.stderr_tail() or '(nothing)'}")

    def beat(self) -> None:
        """Tell the head's watchdog this driver is alive (a new value each time; no value makes it stand down)."""
        self._beats += 1
        self.gcs_client().internal_kv_put(
            HEARTBEAT_KEY.encode(), str(self._beats).encode(), True,
            HEARTBEAT_NAMESPACE.encode(), timeout=5,
        )
        self.head_answered_at = time.monotonic()

    def head_silent_for(self) -> float:
        """Seconds since the head's GCS last took a heartbeat (inf before the first): how a listing
        that shows the head stopped is told from a cloud's passing hiccup while Ray still answers."""
        return float("inf") if self.head_answered_at is None else time.monotonic() - self.head_answered_at

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
        self._gcs = None
        if self.tunnel is not None:
            self.tunnel.stop()
        self._restore_env()

    def _keep_signal_handlers(self) -> None:
        """No absl failure-signal handler in this process's core worker (see `_FAILURE_HANDLER_SWITCH`)."""
        from ray._private import ray_constants

        if self._saved_failure_switch is None:
            self._saved_failure_switch = getattr(ray_constants, _FAILURE_HANDLER_SWITCH)
        setattr(ray_constants, _FAILURE_HANDLER_SWITCH, True)

    def _restore_env(self) -> None:
        if self._saved_failure_switch is not None:
            from ray._private import ray_constants

            setattr(ray_constants, _FAILURE_HANDLER_SWITCH, self._saved_failure_switch)
            self._saved_failure_switch = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        with contextlib.suppress(Exception):
            _reset_ray_auth_cache()
