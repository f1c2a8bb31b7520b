"""A supervised OpenSSH tunnel from this machine to a cluster's head.

Why: a laptop driver cannot reach a cloud head's private address, and Ray's ports must never be
opened to the internet. Only the head's sshd (tcp/22) is exposed; Ray Client traffic goes through
`ssh -L /private/dir/1.sock:127.0.0.1:10001`, and the driver talks to `ray://127.0.0.1:P`, a port
this process holds (`tunnel_relay`) from the tunnel's start to its stop, so that no other local
user can take it while ssh restarts.

Why OpenSSH as a subprocess (not paramiko/asyncssh): it is what every machine has, it does the
crypto, keep-alives and port forwarding well, and it can be ended by process id.

Behaviour:

- strict host-key checking against a per-cluster known_hosts file (see `ssh_keys`): a key that does
  not match, or a refused login, is a configuration or security problem, never retried;
- `start()` returns once ssh is authenticated and its local listeners exist. A forwarded port
  accepts TCP even when the far end is down, so that is all "ready" can mean here: the caller
  checks its own protocol (e.g. Ray Client connects) on top;
- a supervisor thread restarts ssh when it exits unexpectedly (network blip, sshd restart, killed),
  with bounded exponential backoff; the local ports stay the same (and stay ours) throughout;
- when the supervisor gives up (a fatal error), `error` is set and the `when_failed` callback runs
  at once: a host key that changed on a reconnect is a security event for the pool to surface;
- `stop()` ends the ssh process by its pid (SIGTERM, then SIGKILL), closes the local ports and
  joins the thread.

Paths reach ssh as ssh_config values, quoted (`ssh_paths`).

Latency (measured with Ray Client through this tunnel, OpenSSH 9.2 both ends): with `ssh -N` a
trivial task's round trip has a median of ~48 ms against ~6 ms with `low_latency=True`. With no
session, sshd never marks the connection interactive, so its socket keeps Nagle's algorithm, and a
gRPC reply written in two pieces waits for the client's delayed ACK (40 ms). `low_latency=True`
replaces `-N` with a pty session running `sleep` on the far side (`-tt ... exec sleep ...`), which
makes sshd set TCP_NODELAY; the remote `sleep` gets SIGHUP and ends when the connection does.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from skyward_ray.cluster.ssh_paths import config_path, is_socket, private_socket_dir
from skyward_ray.cluster.tunnel_relay import TcpToUnixRelay
from skyward_ray.console import console, log
from skyward_ray.errors import ProvisioningError

__all__ = ["Forward", "HostKeyMismatchError", "SSHTunnel", "TunnelError"]

Forward = tuple[int, str, int]
"""(local_port, remote_host, remote_port); local_port 0 picks a free port on 127.0.0.1."""


class TunnelError(ProvisioningError):
    """The SSH tunnel to a cluster's head could not be set up or kept up; the message has ssh's stderr."""


class HostKeyMismatchError(TunnelError):
    """The head presented a host key other than the one generated for this cluster. Never retried.

    `endpoint` is the `host:port` whose key did not match."""

    def __init__(self, message: str, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint


_HOST_KEY_SIGNS = (
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Host key verification failed",
    "host key is known for",  # "No ED25519 host key is known for ... and you have requested strict checking"
    "Host key for",  # "Host key for [x]:22 has changed and you have requested strict checking"
)
_AUTH_SIGNS = ("Permission denied", "Too many authentication failures", "no mutual signature")
# Checked with `fullmatch`: `re.match` with `$` lets a trailing newline through.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")
_REMOTE_IDLE = "exec sleep 2147483647"
"""The far side of a `low_latency` session: idle forever, ended by SIGHUP when the connection goes."""


class SSHTunnel:
    """`ssh -N -L ...` to `user@host:port`, supervised. Use as a context manager or start()/stop().

    `forwards` are `(local_port, remote_host, remote_port)`; `remote_host` is resolved on the far
    side (e.g. `127.0.0.1` is the head's own loopback). Local listeners bind 127.0.0.1 only, and
    are this process's own from `start()` to `stop()` (see `tunnel_relay`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        identity_file: str | Path,
        known_hosts_file: str | Path,
        forwards: Sequence[Forward],
        *,
        ssh_binary: str = "ssh",
        max_restarts: int | None = None,
        backoff: tuple[float, float] = (0.25, 10.0),
        healthy_after: float = 30.0,
        extra_options: Sequence[str] = (),
        low_latency: bool = False,
    ) -> None:
        if not forwards:
            raise ValueError("an SSH tunnel needs at least one forward")
        for name, value in [("host", host), ("user", user), *(("remote host", rh) for _, rh, _ in forwards)]:
            if not _NAME.fullmatch(str(value)):  # they end up on ssh's command line: no options, no spaces
                raise ValueError(f"SSH tunnel {name} {value!r} is not a plain host name, IPv4 address or user name")
        self.host = host
        self.port = int(port)
        self.user = user
        self.identity_file = Path(identity_file)
        self.known_hosts_file = Path(known_hosts_file)
        config_path(self.identity_file), config_path(self.known_hosts_file)  # refused now, not at start
        self._requested = [(int(lp), str(rh), int(rp)) for lp, rh, rp in forwards]
        self._ports = [lp for lp, _, _ in self._requested]
        self.ssh_binary = ssh_binary
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.extra_options = list(extra_options)
        self.low_latency = low_latency
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._restarts = 0
        self._relay: TcpToUnixRelay | None = None
        self._socket_dir: Path | None = None
        self._on_failure: Callable[[TunnelError], None] | None = None
        self.error: TunnelError | None = None
        """Set when the supervisor gave up (fatal ssh error or `max_restarts` reached)."""

    # ----------------------------------------------------------------- public state

    @property
    def pid(self) -> int | None:
        """Process id of the current ssh process (None before start / after stop)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def local_port(self, i: int = 0) -> int:
        """The local port of forward `i` (the chosen one when 0 was asked for; stable across restarts)."""
        port = self._ports[i]
        if port == 0:
            raise RuntimeError("the tunnel has not picked its local ports yet: call start() first")
        return port

    def sibling(self, forwards: Sequence[Forward]) -> SSHTunnel:
        """A new (unstarted) tunnel to the same head, with the same pinned key and login, for other
        forwards: e.g. the dashboard's, opened once Ray says where it listens (its own ssh process,
        so ending it never touches the driver's tunnel)."""
        return SSHTunnel(self.host, self.port, self.user, self.identity_file, self.known_hosts_file, forwards,
                         ssh_binary=self.ssh_binary, max_restarts=self.max_restarts, backoff=self.backoff,
                         healthy_after=self.healthy_after, extra_options=self.extra_options,
                         low_latency=self.low_latency)

    @property
    def restarts(self) -> int:
        """How many times the supervisor has relaunched ssh after an unexpected exit."""
        return self._restarts

    @property
    def alive(self) -> bool:
        """ssh is running and forwarding (authenticated, its sockets listening), and our local
        ports are open."""
        proc, relay, directory = self._proc, self._relay, self._socket_dir
        if proc is None or proc.poll() is not None or relay is None or not relay.is_open or directory is None:
            return False
        return all(is_socket(directory / f"{i}.sock") for i in range(len(self._requested)))

    def when_failed(self, callback: Callable[[TunnelError], None]) -> None:
        """Call `callback(error)` when the supervisor gives up (from its thread), or now if it has."""
        with self._lock:
            self._on_failure = callback
            error = self.error
        if error is not None:
            callback(error)

    def stderr_tail(self, lines: int = 15) -> str:
        """The last lines ssh wrote to stderr (across restarts), for error messages and logs."""
        return "\n".join(list(self._stderr)[-lines:])

    # ----------------------------------------------------------------- lifecycle

    def command(self) -> list[str]:
        """The ssh command line, with the ports currently chosen."""
        # -N: no session. low_latency: a pty session whose only job is to make sshd set TCP_NODELAY
        argv = [self.ssh_binary, *(["-tt"] if self.low_latency else ["-N"]), *self._options()]
        for path, (_, remote_host, remote_port) in zip(self._socket_paths(), self._requested):
            argv += ["-L", f"{path}:{remote_host}:{remote_port}"]
        argv.append(f"{self.user}@{self.host}")
        if self.low_latency:
            argv.append(_REMOTE_IDLE)
        return argv

    def _options(self) -> list[str]:
        """Every option of this tunnel's connections: the port, the login key, the pinned host key."""
        return [
            "-F", "none",
            "-p", str(self.port),
            "-o", f"IdentityFile={config_path(self.identity_file)}",  # not -i: that one is not quoted
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={config_path(self.known_hosts_file)}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "ConnectTimeout=10",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-o", "StreamLocalBindUnlink=yes",
            *self.extra_options,
        ]

    def stdio_command(self, remote_host: str, remote_port: int) -> list[str]:
        """`ssh -W remote_host:remote_port` with this tunnel's options (pinned host key, login key): a
        one-shot channel on ssh's own stdin/stdout, with no local port (`secret_delivery`)."""
        if not _NAME.fullmatch(remote_host):
            raise ValueError(f"SSH: {remote_host!r} is not a plain host name or IPv4 address")
        return [self.ssh_binary, "-W", f"{remote_host}:{int(remote_port)}", *self._options(),
                f"{self.user}@{self.host}"]

    def start(self, timeout: float = 30.0) -> SSHTunnel:
        """Start ssh and wait until it is authenticated and listening; then start the supervisor.

        Connection refused / timed out (sshd not up yet) is retried until `timeout`; a host-key
        mismatch or refused login raises at once. Raises `TunnelError` on timeout, with no ssh left.
        """
        if self._thread is not None:
            raise RuntimeError("tunnel already started")
        if shutil.which(self.ssh_binary) is None:
            raise TunnelError(f"the ssh client ({self.ssh_binary}) was not found on PATH; install OpenSSH")
        self._stopping.clear()
        deadline = time.monotonic() + timeout
        delay = self.backoff[0]
        try:
            self._hold_local_ports()
            while True:
                self._launch()
                outcome = self._wait_ready(deadline)
                if outcome == "ready":
                    break
                self._raise_if_fatal()
                if time.monotonic() + delay >= deadline:
                    raise TunnelError(
                        f"SSH tunnel to {self.user}@{self.host}:{self.port} was not up within {timeout:.0f} s"
                        f" ({outcome}). ssh said:\n{self.stderr_tail() or '(nothing)'}"
                    )
                time.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
        except BaseException:
            self._end_process()
            self._release_local_ports()
            raise
        self._thread = threading.Thread(target=self._supervise, name=f"ssh-tunnel-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End ssh (SIGTERM, then SIGKILL after `timeout`), close the local ports and end the
        supervisor. Safe to call twice."""
        self._stopping.set()
        self._end_process(timeout)
        self._release_local_ports()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout + 5)

    def __enter__(self) -> SSHTunnel:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- internals

    def _socket_paths(self) -> list[Path]:
        """ssh's Unix sockets, one per forward, in a 0700 directory of this tunnel's (made on first
        use; removed by `stop()`, or when the tunnel is collected)."""
        if self._socket_dir is None:
            self._socket_dir = private_socket_dir(self)
        return [self._socket_dir / f"{i}.sock" for i in range(len(self._requested))]

    def _hold_local_ports(self) -> None:
        """Bind the local ports (0: the kernel picks) for the tunnel's whole life: a port ssh held
        would be free to anyone while ssh restarts."""
        relay = TcpToUnixRelay(self._socket_paths(), usable=lambda: self.error is None and not self._stopping.is_set())
        try:
            ports = relay.listen([lp for lp, _, _ in self._requested])
        except OSError as error:
            raise TunnelError(f"SSH tunnel to {self.user}@{self.host}:{self.port}: cannot listen on 127.0.0.1"
                              f" port(s) {[lp for lp, _, _ in self._requested]}: {error}") from None
        self._relay, self._ports = relay, ports

    def _release_local_ports(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
        directory, self._socket_dir = self._socket_dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _launch(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            for path in self._socket_paths():  # a killed ssh leaves its sockets: the next one binds afresh
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._stderr.append(f"--- ssh started at {time.strftime('%H:%M:%S')}")
            proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True,  # no terminal signals from the driver's tty
            )
            self._proc = proc
            self._started_at = time.monotonic()
        reader = threading.Thread(target=self._read_stderr, args=(proc,), name="ssh-tunnel-stderr", daemon=True)
        reader.start()
        self._readers = [r for r in self._readers if r.is_alive()] + [reader]

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
        proc.stderr.close()

    def _wait_ready(self, deadline: float) -> str:
        """'ready' once the listeners exist, else why not ('ssh exited' / 'timed out')."""
        proc = self._proc
        assert proc is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._drain(proc)
                return f"ssh exited with status {proc.returncode}"
            if self.alive:
                return "ready"
            time.sleep(0.05)
        return "timed out"

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        """Give the stderr reader a moment to collect ssh's last words before classifying them."""
        for reader in self._readers:
            reader.join(1.0)

    def _fatal_error(self) -> TunnelError | None:
        """The error for an ssh exit that must not be retried, judged from its stderr, or None."""
        tail = self.stderr_tail()
        last_run = tail.rsplit("--- ssh started at", 1)[-1]
        where = f"{self.user}@{self.host}:{self.port}"
        endpoint = f"{self.host}:{self.port}"
        if "host key is known for" in last_run:
            return HostKeyMismatchError(
                f"SSH host {self.host} (port {self.port}): no host key is pinned for it in {self.known_hosts_file},"
                f" so its key cannot match the one generated for this cluster; refusing to trust it on first use"
                f" (possible man-in-the-middle otherwise). Not retried. ssh said:\n{tail}", endpoint
            )
        if any(sign in last_run for sign in _HOST_KEY_SIGNS):
            return HostKeyMismatchError(
                f"SSH host {self.host} (port {self.port}): the host key did not match the one generated for"
                f" this cluster (pinned in {self.known_hosts_file}); possible man-in-the-middle, so nothing"
                f" was sent and the connection is not retried. ssh said:\n{tail}", endpoint
            )
        if any(sign in last_run for sign in _AUTH_SIGNS):
            return TunnelError(
                f"SSH login to {where} with key {self.identity_file} was refused (the node does not hold this"
                f" cluster's public key); not retried. ssh said:\n{tail}"
            )
        return None

    def _raise_if_fatal(self) -> None:
        error = self._fatal_error()
        if error is not None:
            raise error

    def _end_process(self, timeout: float = 5.0) -> None:
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # by pid: SIGTERM to this ssh only
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._drain(proc)
        with self._lock:
            if self._proc is proc:
                self._proc = None

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            while proc.poll() is None and not self._stopping.is_set():
                try:
                    proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            if self._stopping.is_set():
                return
            self._drain(proc)
            error = self._fatal_error()
            if error is None and self.max_restarts is not None and self._restarts >= self.max_restarts:
                error = TunnelError(
                    f"SSH tunnel to {self.user}@{self.host}:{self.port} exited {self._restarts + 1} times;"
                    f" giving up. ssh said:\n{self.stderr_tail()}"
                )
            if error is not None:
                with self._lock:
                    self.error = error
                    self._proc = None
                    callback = self._on_failure
                if callback is not None:
                    try:
                        callback(error)
                    except Exception as failure:  # the supervisor must end cleanly whatever the callback does
                        console.print(f"[red]the SSH tunnel's failure handler failed: {failure!r}[/]")
                return
            ran_for = time.monotonic() - self._started_at
            failures = 0 if ran_for >= self.healthy_after else failures + 1
            # a warning for the first exit of a streak (a connection through the tunnel broke: Ray Client's
            # channel reconnects or gives up; what ssh said is the first thing to read about why), the
            # quick re-exits after it (a peer that refuses) only in the debug log
            tail = " | ".join(self.stderr_tail(3).splitlines())
            log.log(logging.WARNING if failures <= 1 else logging.DEBUG,
                    "the SSH tunnel to %s@%s:%s exited after %.0f s; restarting it (restart %d)%s", self.user,
                    self.host, self.port, ran_for, self._restarts + 1, f". ssh said: {tail}" if tail else "")
            delay = min(self.backoff[0] * (2 ** max(failures - 1, 0)), self.backoff[1])
            if self._stopping.wait(delay):
                return
            self._restarts += 1
            self._launch()  # the local ports stay ours meanwhile; ssh binds fresh sockets behind them
