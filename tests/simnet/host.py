"""One simulated machine: a network namespace with a private and a public address, and what runs in it.

Processes started with `SimHost.run` live in the host's namespace, in their own session, with only
the environment the caller passes. `SimHost.stop` ends every process in the namespace by pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.simnet.firewall import Rule
from tests.simnet.processes import NamespacePins, end_pids, log_tail, processes_in_netns
from tests.simnet.sshd import write_sshd_files
from tests.simnet.system import IP, SETSID, SSHD, SYSTEM_PATH, SimNetError, run_command



class HostNetwork(Protocol):
    """What a host knows of the network that made it (a `SimNetwork`, which imports this module)."""

    prefix: str
    directory: Path
    driver_ip: str


@dataclass
class SimHost:
    """One simulated machine: a network namespace with a private and a public address."""

    network: HostNetwork
    name: str
    index: int
    namespace: str
    private_ip: str
    public_ip: str
    directory: Path
    sshd_pid: int | None = None
    allowed_tcp: list[Rule] = field(default_factory=list)
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    # ----------------------------------------------------------------- processes

    def run(self, command: Sequence[str] | str, env: Mapping[str, str], log_path: str | Path | None = None,
            cwd: str | Path | None = None) -> int:
        """Start `command` (argv, or a /bin/sh script) inside the namespace in its own session.

        The process gets exactly `env` (nothing of this driver's PATH/PYTHONPATH/VIRTUAL_ENV leaks
        in): pass what the machine would have. Output goes to `log_path` (appended) or nowhere.
        Returns the pid, which is also the process group id (setsid, which does not fork here).
        """
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                [IP, "netns", "exec", self.namespace, SETSID, *argv], env=dict(env), cwd=str(cwd or self.directory),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        self._children.append(proc)
        return proc.pid

    def call(self, command: Sequence[str] | str, env: Mapping[str, str] | None = None,
             timeout: float = 15) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace and wait for it (output captured)."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        return subprocess.run([IP, "netns", "exec", self.namespace, *argv], env=dict(env or {"PATH": SYSTEM_PATH}),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def tcp_connects(self, ip: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from inside this host to ip:port completes within `timeout`."""
        done = self.call(["timeout", str(timeout), "bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"],
                         timeout=timeout + 10)
        return done.returncode == 0

    def read_banner(self, ip: str, port: int, timeout: float = 1.0) -> str | None:
        """Like `read_banner`, from inside this host (bash's /dev/tcp; no Python needed there)."""
        script = f"exec 3<>/dev/tcp/{ip}/{port} && head -n1 <&3"
        done = self.call(["timeout", str(timeout), "bash", "-c", script], timeout=timeout + 10)
        line = done.stdout.strip()
        return line if done.returncode == 0 and line else None

    def start_echo_server(self, bind: str, port: int, token: str, python: str = sys.executable) -> int:
        """Run `echo_server.py` in this host on bind:port (it greets with `token`); returns its pid
        once it listens. Its log (`accepted <peer>` lines) is `self.directory / f"echo-{port}.log"`."""
        log = self.directory / f"echo-{port}.log"
        pid = self.run([python, "-I", str(Path(__file__).with_name("echo_server.py")), bind, str(port), token],
                       env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, log_path=log)
        self.wait_listening(port, timeout=15, pid=pid, log_path=log)
        return pid

    def echo_peers(self, port: int) -> list[str]:
        """Peer addresses the echo server on `port` accepted so far."""
        log = self.directory / f"echo-{port}.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split()[1] for line in lines if line.startswith("accepted ")]

    def pids(self) -> list[int]:
        """Every process in this host's namespace (`ip netns pids`)."""
        done = run_command([IP, "netns", "pids", self.namespace], check=False)
        if done.returncode != 0:
            return []
        return [int(p) for p in done.stdout.split()]

    def listening_ports(self) -> set[int]:
        """TCP ports something listens on inside the namespace (any address)."""
        done = self.call(["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        ports = set()
        for line in done.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":  # TCP_LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        return ports

    def wait_listening(self, port: int, timeout: float = 20, pid: int | None = None,
                       log_path: str | Path | None = None) -> float:
        """Wait until something listens on `port` in the namespace; returns seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if port in self.listening_ports():
                return time.monotonic() - started
            if pid is not None and self._exited(pid):
                raise SimNetError(f"{self.name}: process {pid} exited before listening on {port}"
                                  f"{log_tail(log_path)}")
            time.sleep(0.05)
        raise SimNetError(f"{self.name}: nothing listened on port {port} within {timeout} s{log_tail(log_path)}")

    def _exited(self, pid: int | None) -> bool:
        for child in self._children:
            if child.pid == pid:
                return child.poll() is not None
        return False

    def stop(self, grace: float = 3.0) -> None:
        """End every process in the namespace by pid (SIGTERM, SIGKILL after `grace`) and reap ours."""
        with NamespacePins() as pin:  # its inode stays ours while we look (see NamespacePins)
            inode = pin.pin(self.namespace)
            if inode is not None:  # else its name is gone: the network's teardown ends what is left by inode
                end_pids(lambda: processes_in_netns({inode}), grace=grace)
        for child in self._children:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self._children.clear()
        self.sshd_pid = None

    # ----------------------------------------------------------------- sshd

    def start_sshd(self, host_private_key_path: str | Path, authorized_public_key: str,
                   timeout: float = 15) -> int:
        """Run OpenSSH's sshd on port 22 in the namespace with exactly this host key and this login key
        (see `tests.simnet.sshd` for what it allows). Returns the pid once sshd answers with its
        banner from the driver's side.
        """
        if not Path("/run/sshd").is_dir():  # sshd's privilege-separation directory (Debian's packaging)
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        home = self.directory / "sshd"
        config = write_sshd_files(home, host_private_key_path, authorized_public_key)
        log = home / "sshd.log"
        pid = self.run([SSHD, "-D", "-e", "-f", str(config)], env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
                       log_path=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited(pid):
                raise SimNetError(f"sshd in {self.name} exited at start{log_tail(log)}")
            try:
                with socket.create_connection((self.public_ip, 22), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0-"):
                        self.sshd_pid = pid
                        return pid
            except OSError:
                pass
            time.sleep(0.05)
        raise SimNetError(f"sshd in {self.name} did not answer on {self.public_ip}:22 within {timeout} s{log_tail(log)}")

