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

Processes started with `SimHost.run` live in the host's namespace, in their own session, with only
the environment the caller passes. `SimHost.stop` ends every process in the namespace by pid.
`SimNetwork.close` (also on `__exit__`, also when setup failed midway) removes every namespace, veth
and bridge this network made, found by its unique name prefix, and its files.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
SSHD = "/usr/sbin/sshd"  # sshd must be started by absolute path (it re-executes itself)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_LINE = "apt-get install -y iproute2 nftables openssh-server openssh-client util-linux"
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class SimNetError(RuntimeError):
    """A simulated network operation failed; the message has the command and its stderr."""


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise SimNetError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done


def _which_sbin(name: str) -> str | None:
    return shutil.which(name, path=SYSTEM_PATH)


@functools.lru_cache(maxsize=1)
def check_available() -> str | None:
    """One line saying why this machine cannot run simulated hosts, or None when it can.

    Needs root, iproute2, nft, setsid, OpenSSH's sshd, ssh and ssh-keygen, and a kernel that lets us
    create network namespaces, veth pairs and nftables rules in them (probed for real, then removed).
    """
    if os.geteuid() != 0:
        return f"simnet needs root to create network namespaces (running as uid {os.geteuid()})"
    missing = [name for name in ("ip", "nft", "setsid", "ssh", "ssh-keygen") if _which_sbin(name) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append("sshd")
    if missing:
        return f"simnet needs {', '.join(missing)} on this machine: {APT_LINE}"
    probe = f"snprobe{secrets.token_hex(3)}"
    try:
        _run([IP, "netns", "add", probe])
        try:
            _run([IP, "-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])
            _run([IP, "netns", "exec", probe, "nft", "-f", "-"],
                 input="table inet probe {\n chain input {\n  type filter hook input priority 0; policy accept;\n }\n}\n")
        finally:
            _run([IP, "netns", "delete", probe], check=False)
    except (SimNetError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create network namespaces, veth pairs or nftables rules here: {str(exc).splitlines()[0]}"
    return None


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


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def processes_in_netns(inodes: set[int]) -> list[int]:
    """Pids of live processes whose network namespace is one of `inodes` (works after `netns delete`)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")  # "net:[4026532345]"; unreadable for zombies
        except OSError:
            continue
        if int(link[5:-1]) in inodes:
            found.append(int(entry))
    return found


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def end_pids(list_pids: Callable[[], list[int]], grace: float = 3.0, timeout: float = 15.0) -> None:
    """End every pid `list_pids()` returns: SIGTERM, then SIGKILL after `grace`, until none is left.

    Asked again each round, because dying daemons (Ray's) may still start helpers meanwhile.
    """
    deadline = time.monotonic() + timeout
    pids = list_pids()
    if not pids:
        return
    _signal_all(pids, signal.SIGTERM)
    kill_at = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = list_pids()
        if pids and time.monotonic() >= kill_at:
            _signal_all(pids, signal.SIGKILL)
    if pids:
        raise SimNetError(f"processes {pids} did not end within {timeout:.0f} s")


@dataclass
class SimHost:
    """One simulated machine: a network namespace with a private and a public address."""

    network: SimNetwork
    name: str
    index: int
    namespace: str
    private_ip: str
    public_ip: str
    directory: Path
    sshd_pid: int | None = None
    allowed_tcp: list[tuple[str, int, int]] = field(default_factory=list)
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
        done = _run([IP, "netns", "pids", self.namespace], check=False)
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
                                  f"{_tail(log_path)}")
            time.sleep(0.05)
        raise SimNetError(f"{self.name}: nothing listened on port {port} within {timeout} s{_tail(log_path)}")

    def _exited(self, pid: int | None) -> bool:
        for child in self._children:
            if child.pid == pid:
                return child.poll() is not None
        return False

    def stop(self, grace: float = 3.0) -> None:
        """End every process in the namespace by pid (SIGTERM, SIGKILL after `grace`) and reap ours."""
        inode = _netns_inode(self.namespace)
        end_pids(lambda: processes_in_netns({inode}) if inode is not None else self.pids(), grace=grace)
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
        """Run OpenSSH's sshd on port 22 in the namespace with exactly this host key and this login key.

        Root may log in with that key only (no passwords, no keyboard-interactive); TCP forwarding is
        allowed (that is what the tunnel uses). Its files live in a 0700 directory of this host.
        Returns the pid once sshd answers with its banner from the driver's side.
        """
        if not Path("/run/sshd").is_dir():  # sshd's privilege-separation directory (Debian's packaging)
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        home = self.directory / "sshd"
        home.mkdir(mode=0o700, exist_ok=True)
        home.chmod(0o700)
        host_key = home / "ssh_host_ed25519_key"
        host_key.write_bytes(Path(host_private_key_path).read_bytes())
        host_key.chmod(0o600)
        authorized = home / "authorized_keys"
        authorized.write_text(authorized_public_key.strip() + "\n")
        authorized.chmod(0o600)
        config = home / "sshd_config"
        config.write_text("\n".join([
            "Port 22",
            "ListenAddress 0.0.0.0",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            "PidFile none",
            "PermitRootLogin prohibit-password",
            "AllowUsers root",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "UsePAM no",
            # The files sit under /tmp (world-writable), which StrictModes rejects on its walk to "/";
            # they are in a root-owned 0700 directory instead.
            "StrictModes no",
            "AllowTcpForwarding yes",
            "PermitTunnel no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "PrintMotd no",
            "ClientAliveInterval 10",
            "LogLevel VERBOSE",
            "",
        ]))
        config.chmod(0o600)
        log = home / "sshd.log"
        pid = self.run([SSHD, "-D", "-e", "-f", str(config)], env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
                       log_path=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited(pid):
                raise SimNetError(f"sshd in {self.name} exited at start{_tail(log)}")
            try:
                with socket.create_connection((self.public_ip, 22), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0-"):
                        self.sshd_pid = pid
                        return pid
            except OSError:
                pass
            time.sleep(0.05)
        raise SimNetError(f"sshd in {self.name} did not answer on {self.public_ip}:22 within {timeout} s{_tail(log)}")


def _tail(log_path: str | Path | None, lines: int = 20) -> str:
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; log tail:\n" + "\n".join(text)


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
        self._inodes: set[int] = set()
        self._open = False

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> SimNetwork:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> SimNetwork:
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
        (self.directory / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        self._open = True
        try:
            cleanup_orphans()
            rng = random.SystemRandom()
            self.private_net = ipaddress.IPv4Network(
                self._requested_private_net or f"10.231.{rng.randrange(256)}.0/24")
            self.public_net = self._free_public_net(rng)
            self.driver_ip = str(self.public_net[1])
            self.vpc_namespace = f"{self.prefix}-vpc"
            self.public_bridge = f"{self.prefix}br"
            self._add_namespace(self.vpc_namespace)
            _run([IP, "-n", self.vpc_namespace, "link", "add", "br0", "type", "bridge"])
            _run([IP, "-n", self.vpc_namespace, "link", "set", "br0", "up"])
            _run([IP, "link", "add", self.public_bridge, "type", "bridge"])
            _run([IP, "addr", "add", f"{self.driver_ip}/24", "dev", self.public_bridge])
            _run([IP, "link", "set", self.public_bridge, "up"])
        except BaseException:
            self.close()
            raise
        return self

    def _free_public_net(self, rng: random.SystemRandom) -> ipaddress.IPv4Network:
        used = _run([IP, "-4", "-o", "route", "show", "table", "all"], check=False).stdout
        used += _run([IP, "-4", "-o", "addr", "show"], check=False).stdout
        for _ in range(100):
            candidate = f"198.{rng.choice((18, 19))}.{rng.randrange(256)}."
            if candidate not in used:
                return ipaddress.IPv4Network(candidate + "0/24")
        raise SimNetError("no free /24 in 198.18.0.0/15 for the public network")

    def _add_namespace(self, name: str) -> None:
        _run([IP, "netns", "add", name])
        inode = _netns_inode(name)
        if inode is not None:
            self._inodes.add(inode)
        _run([IP, "-n", name, "link", "set", "lo", "up"])

    def allocate_public_ip(self) -> str:
        """A public address no host has yet (a simulated cloud assigns it at launch, the host takes it at boot)."""
        for address in self.public_net.hosts():
            text = str(address)
            if address.packed[-1] >= 10 and text not in self._public_ips:
                self._public_ips.add(text)
                return text
        raise SimNetError(f"the public network {self.public_net} is full")

    def add_host(self, name: str, private_ip: str | None = None, public_ip: str | None = None,
                 allowed_tcp: Sequence[tuple[str, int, int]] | None = None) -> SimHost:
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
        host.allowed_tcp = list(allowed_tcp) if allowed_tcp is not None else [(f"{self.driver_ip}/32", 22, 22)]
        host.directory.mkdir(mode=0o700)
        self.hosts[name] = host
        self._add_namespace(namespace)
        vpc, ns = self.vpc_namespace, namespace
        port, root_end = f"h{index}", f"{self.prefix}p{index}"
        for argv in (
            [IP, "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
            [IP, "-n", vpc, "link", "add", port, "type", "veth", "peer", "name", "priv", "netns", ns],
            [IP, "-n", vpc, "link", "set", port, "master", "br0", "up"],
            [IP, "-n", ns, "addr", "add", f"{host.private_ip}/{self.private_net.prefixlen}", "dev", "priv"],
            [IP, "-n", ns, "link", "set", "priv", "up"],
            [IP, "link", "add", root_end, "type", "veth", "peer", "name", "pub", "netns", ns],
            [IP, "link", "set", root_end, "master", self.public_bridge, "up"],
            [IP, "-n", ns, "addr", "add", f"{host.public_ip}/24", "dev", "pub"],
            [IP, "-n", ns, "link", "set", "pub", "up"],
        ):
            _run(argv)
        _run([IP, "netns", "exec", ns, "nft", "-f", "-"], input=self._ruleset(host))
        return host

    def _ruleset(self, host: SimHost) -> str:
        rules = "\n".join(
            f'    iifname "pub" ip saddr {cidr} ip daddr {host.public_ip} tcp dport {first}-{last} accept'
            for cidr, first, last in host.allowed_tcp)
        return f"""\
table inet simnet {{
  chain input {{
    type filter hook input priority 0; policy drop;
    iifname "lo" accept
    iifname "priv" accept
{rules}
    iifname "pub" ct state established,related accept
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
  }}
}}
"""

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
            cleanup_prefix(self.prefix, self._inodes)
        except Exception as exc:
            errors.append(str(exc))
        shutil.rmtree(self.directory, ignore_errors=True)
        self._open = False
        if errors:
            raise SimNetError("simnet teardown: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this network still exists (namespaces, root links, processes, files); [] when clean."""
        return leftovers_of(self.prefix, self._inodes, self.directory)

    def describe(self) -> str:
        return (f"simnet {self.prefix}: private {self.private_net}, public {self.public_net} (driver {self.driver_ip}), "
                + ", ".join(f"{h.name}={h.private_ip}/{h.public_ip}" for h in self.hosts.values()))


def _prefixed_namespaces(prefix: str) -> list[str]:
    done = _run([IP, "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def _prefixed_links(prefix: str) -> list[str]:
    done = _run([IP, "-o", "link", "show"], check=False)
    names = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(prefix):
                names.append(name)
    return names


def cleanup_prefix(prefix: str, inodes: set[int] | None = None) -> None:
    """Remove everything named with `prefix`: end processes in its namespaces by pid, delete them,
    delete its root-namespace links. Touches nothing else on the machine."""
    if not re.match(r"^sn[0-9a-f]{5}$", prefix):
        raise ValueError(f"not a simnet prefix: {prefix!r}")
    inodes = set(inodes or ())
    namespaces = _prefixed_namespaces(prefix)
    for ns in namespaces:
        inode = _netns_inode(ns)
        if inode is not None:
            inodes.add(inode)
    if inodes:
        end_pids(lambda: processes_in_netns(inodes), grace=1.0)
    for ns in namespaces:
        _run([IP, "netns", "delete", ns], check=False)
    for link in _prefixed_links(prefix):
        _run([IP, "link", "delete", link], check=False)
    problems = leftovers_of(prefix, inodes, None)
    if problems:
        raise SimNetError(f"simnet {prefix} left: {problems}")


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): pid + this is unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def cleanup_orphans() -> list[str]:
    """Clean networks left by test processes that died without closing them (SIGKILL, power cut).

    A network is an orphan when its working directory `/tmp/<prefix>` is gone, or the process named
    in its `owner` file (pid and start time) no longer exists. A network being set up or used by a
    live process is never touched. Returns the prefixes cleaned.
    """
    prefixes = set()
    for line in _run([IP, "netns", "list"], check=False).stdout.splitlines():
        match = re.match(r"^(sn[0-9a-f]{5})-", line)
        if match:
            prefixes.add(match.group(1))
    for line in _run([IP, "-o", "link", "show"], check=False).stdout.splitlines():
        match = re.match(r"^\d+: (sn[0-9a-f]{5})(br|p\d+)[@:]", line)
        if match:
            prefixes.add(match.group(1))
    cleaned = []
    for prefix in sorted(prefixes):
        owner = Path("/tmp") / prefix / "owner"
        if owner.parent.exists():
            try:
                pid, started = owner.read_text().split()
            except (OSError, ValueError):
                continue  # being created right now: its owner file is written first thing
            if _start_time(int(pid)) == started:
                continue  # its owner is alive
        try:
            cleanup_prefix(prefix)
        except SimNetError:
            continue
        shutil.rmtree(owner.parent, ignore_errors=True)
        cleaned.append(prefix)
    return cleaned


def leftovers_of(prefix: str, inodes: set[int], directory: Path | None) -> list[str]:
    found = [f"namespace {n}" for n in _prefixed_namespaces(prefix)]
    found += [f"link {n}" for n in _prefixed_links(prefix)]
    found += [f"process {p} in a {prefix} namespace" for p in processes_in_netns(set(inodes))]
    if directory is not None:
        marker = str(directory) + "/"
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if marker in cmdline:
                    found.append(f"process {entry}: {cmdline[:100]}")
        if directory.exists():
            found.append(f"directory {directory}")
    return found
