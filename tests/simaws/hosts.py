"""The host simulator: every instance the simulated region runs becomes a machine that boots itself,
as isolated as a real one.

A background thread polls DescribeInstances (like a hypervisor watching its placement queue). For
each new running instance it makes a host on the simulated network (`tests.simnet`):

- its own network namespace, with the instance's private address on the VPC network (which the
  driver's side cannot route to) and its public address on the public network, where only what
  the instance's security groups admit gets through (tcp rules with address ranges);
- for an instance whose user data carries cloud-init `ssh_keys`, an OpenSSH server presenting
  exactly that host key and accepting only the key pair the instance was launched with (what
  cloud-init does on a real instance);
- the user data's shell script, run as the machine's root process group inside the namespace,
  with the machine's own HOME and nothing of the driver's environment: no virtualenv, no
  PYTHONPATH, not the driver's working directory. Its PATH holds the system's directories, the
  base Python interpreter (as an image's system Python) and `uv` (as an image with uv installed);
  the node makes its own Python environment with the driver's exact versions from a package cache
  that is warmed once (`node_package_cache`) and read offline, since a namespace reaches no index.

The machine's environment stands in for the instance metadata service: `SKYWARD_INSTANCE_ID` and
`SKYWARD_NODE_IP` are set, and a `curl` shim refuses 169.254.169.254. `shutdown`, `poweroff` and
`halt` are shims that ask the simulator to end *this instance* (terminate or stop, per its
InstanceInitiatedShutdownBehavior); the real `shutdown` never runs here. When EC2 says an instance
is shutting down or terminated, its processes and namespace are ended.
"""

from __future__ import annotations

import base64
import contextlib
import email
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import yaml

from node_providers.local.process_host import ProcessHost
from skyward_ray.node.startup_script import node_requirements
from tests.simaws.server import VPC_CIDR
from tests.simnet import SimHost, SimNetwork
from tests.simnet.network import IP

_SHUTDOWN_SHIM = """#!/bin/sh
# simulated host: an instance-initiated shutdown of $SKYWARD_INSTANCE_ID (never this machine's shutdown)
echo "simaws: $(basename "$0") $* on $SKYWARD_INSTANCE_ID"
: > "$SIMAWS_SHUTDOWN_DIR/$SKYWARD_INSTANCE_ID"
exit 0
"""
_CURL_SHIM = """#!/bin/sh
# simulated host: the instance metadata service does not exist here; refuse it loudly
for arg in "$@"; do
  case "$arg" in *169.254.*) echo "simaws: refused to contact the metadata service: $arg" >&2; exit 7;; esac
done
exec /usr/bin/curl "$@"
"""
SHIM_NAMES = ("shutdown", "poweroff", "halt", "reboot")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Packages a simulated node may install: the driver's Ray, and what the tests put in Image.pip.
NODE_PACKAGES = (f"ray[default]=={ray.__version__}", *node_requirements(), "tabulate==0.9.0")
UV_CACHE = Path(os.environ.get("SKYWARD_SIM_UV_CACHE", Path.home() / ".cache" / "skyward-simaws-uv"))
_warm_lock = threading.Lock()
_warmed = False


def _uv() -> str:
    return str(Path(sys.executable).with_name("uv"))


def node_package_cache() -> Path:
    """A uv cache holding the driver's Python's Ray and the tests' packages (filled once, from the
    package index, on the driver's side): the simulated machines install from it offline."""
    global _warmed
    with _warm_lock:
        if not _warmed:
            python = "%d.%d.%d" % sys.version_info[:3]
            env = {**os.environ, "UV_CACHE_DIR": str(UV_CACHE), "UV_PYTHON_DOWNLOADS": "never"}
            with tempfile.TemporaryDirectory(prefix="uvwarm-") as scratch:
                venv = Path(scratch) / "v"
                for argv in ([_uv(), "venv", "-q", "--python", python, str(venv)],
                             [_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *NODE_PACKAGES]):
                    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
                    if done.returncode != 0:
                        raise RuntimeError(f"could not fill the simulated nodes' package cache: {done.stderr}")
            _warmed = True
    return UV_CACHE


def split_user_data(data: str) -> tuple[dict[str, Any], str]:
    """(cloud-config, shell script) of a user data payload: MIME multi-part as cloud-init reads it, or a bare script."""
    if not data.startswith("Content-Type: multipart/"):
        return {}, data
    config: dict[str, Any] = {}
    script = ""
    for part in email.message_from_string(data).walk():
        kind = part.get_content_type()
        if kind == "text/cloud-config":
            config = yaml.safe_load(part.get_payload(decode=True).decode()) or {}
        elif kind == "text/x-shellscript":
            script = part.get_payload(decode=True).decode()
    return config, script


class HostSimulator:
    """Boots and ends simulated machines for the instances of one simulated region."""

    def __init__(self, sim: Any, boot_delay: float = 0.0, poll_interval: float = 0.15) -> None:
        self.sim = sim
        self.boot_delay = boot_delay
        self.poll_interval = poll_interval
        self.root = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))  # short: Ray's unix sockets live below
        self.shim_dir = self.root / "bin"
        self.shutdown_dir = self.root / "shutdown-requests"
        self.host = ProcessHost(self.root / "m")
        self.network = SimNetwork(private_net=VPC_CIDR)
        self.sim_hosts: dict[str, SimHost] = {}  # instance id → its host on the simulated network
        self.tamper_host_keys = False  # True: hosts present a key of their own, not the user data's
        self.booted: dict[str, float] = {}  # instance id → when its machine was started
        self.boot_seconds: dict[str, float] = {}  # instance id → seconds from first seen running to boot
        self.booted_at: dict[str, float] = {}  # instance id → wall-clock time its machine was started
        self.ended: set[str] = set()
        self.errors: list[str] = []
        self._first_seen: dict[str, float] = {}
        self._ignore: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._write_shims()

    def _write_shims(self) -> None:
        self.shim_dir.mkdir(parents=True)
        self.shutdown_dir.mkdir()
        for name in SHIM_NAMES:
            path = self.shim_dir / name
            path.write_text(_SHUTDOWN_SHIM)
            path.chmod(0o755)
        curl = self.shim_dir / "curl"
        curl.write_text(_CURL_SHIM)
        curl.chmod(0o755)
        (self.shim_dir / "uv").symlink_to(_uv())  # an image with uv installed

    @property
    def path(self) -> str:
        """A machine's PATH: shims, the base interpreter (the image's system Python), the system."""
        return os.pathsep.join([str(self.shim_dir), os.path.join(sys.base_prefix, "bin"), SYSTEM_PATH])

    @property
    def ssh_cidr(self) -> str:
        """The driver's address on the simulated public network, as a security group source."""
        return f"{self.network.driver_ip}/32"

    def start(self) -> "HostSimulator":
        """Start watching; instances that exist already are not this simulator's to boot."""
        self.uv_cache = node_package_cache()
        self.network.open()
        self.sim.use_public_ips(self.network.allocate_public_ip)
        self.sim.front.console_output = lambda instance_id: self.host.log_tail(instance_id, 200)
        self._ignore = {i["InstanceId"] for i in self.sim.instances()}
        self._thread = threading.Thread(target=self._run, name="simaws-hosts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        """Stop watching and end every machine still running; returns their ids (a test may assert none)."""
        if self._stop.is_set():
            return []
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        left = self.running()
        if left:
            self.host.terminate(left)
        self.sim.front.console_output = None
        self.network.close()
        shutil.rmtree(self.root, ignore_errors=True)
        return left

    def running(self) -> list[str]:
        return [i for i in self.host.machines() if self.host.is_running(i)]

    def wait_idle(self, timeout: float = 15.0, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Wait until no machine except `keep` runs; returns those still running after `timeout`."""
        deadline = time.monotonic() + timeout
        left = [i for i in self.running() if i not in keep]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [i for i in self.running() if i not in keep]
        return left

    # -- the watch loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._step()
            except Exception as error:  # the region may be shutting down; keep the loop alive
                self.errors.append(f"{type(error).__name__}: {error}")

    def _step(self) -> None:
        self._handle_shutdown_requests()
        now = time.monotonic()
        for instance in self.sim.instances():
            instance_id = instance["InstanceId"]
            state = instance["State"]["Name"]
            if instance_id in self._ignore:
                continue
            if state == "running" and instance_id not in self.booted:
                first = self._first_seen.setdefault(instance_id, now)
                if now - first >= self.boot_delay:
                    self._boot(instance, now - first)
            elif state in ("shutting-down", "terminated", "stopping", "stopped") and instance_id in self.booted \
                    and instance_id not in self.ended:
                self.ended.add(instance_id)
                self.host.terminate([instance_id], keep_directory=True)  # its console output stays readable
                self.sim_hosts[instance_id].stop(grace=1.0)  # sshd and anything else in its namespace

    def _allowed_tcp(self, instance: dict[str, Any]) -> list[tuple[str, int, int]]:
        """What the instance's security groups admit from outside: (source CIDR, first port, last port)."""
        groups = [g["GroupId"] for g in instance.get("SecurityGroups", [])]
        if not groups:
            return []
        allowed = []
        for group in self.sim.client().describe_security_groups(GroupIds=groups)["SecurityGroups"]:
            for rule in group["IpPermissions"]:
                if rule["IpProtocol"] not in ("tcp", "-1"):
                    continue
                first, last = (1, 65535) if rule["IpProtocol"] == "-1" else (rule["FromPort"], rule["ToPort"])
                allowed += [(r["CidrIp"], first, last) for r in rule.get("IpRanges", [])]
        return allowed

    def _boot(self, instance: dict[str, Any], waited: float) -> None:
        instance_id = instance["InstanceId"]
        ec2 = self.sim.client()
        data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        cloud_config, script = split_user_data(base64.b64decode(data.get("UserData", {}).get("Value", "")).decode())
        self.booted[instance_id] = time.monotonic()
        self.booted_at[instance_id] = time.time()
        self.boot_seconds[instance_id] = waited
        host = self.network.add_host(f"h{len(self.sim_hosts)}", private_ip=instance["PrivateIpAddress"],
                                     public_ip=instance.get("PublicIpAddress"), allowed_tcp=self._allowed_tcp(instance))
        self.sim_hosts[instance_id] = host
        host_key = (cloud_config.get("ssh_keys") or {}).get("ed25519_private")
        if host_key and instance.get("KeyName"):
            key_path = host.directory / "host_key"
            if self.tamper_host_keys:  # someone else's machine answers on this address
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True)
            else:
                key_path.write_text(host_key)
            key_path.chmod(0o600)
            host.start_sshd(key_path, self.sim.imported_public_key(instance["KeyName"]))
        machine_dir = self.host.state_dir / instance_id
        env = {
            "PATH": self.path,
            "SIMAWS_SHUTDOWN_DIR": str(self.shutdown_dir),
            "UV_CACHE_DIR": str(self.uv_cache),
            "UV_OFFLINE": "1",  # a namespace reaches no package index: the cache is this region's mirror
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": "hardlink",
            "SKYWARD_ENV_DIR": str(machine_dir / "env"),
        }
        self.host.boot(instance_id, script, instance["PrivateIpAddress"], env=env,
                       wrapper=[IP, "netns", "exec", host.namespace], inherit_path=False)

    def _handle_shutdown_requests(self) -> None:
        """An instance ran `shutdown`: EC2 terminates or stops it, as its shutdown behaviour says."""
        for request in list(self.shutdown_dir.iterdir()):
            instance_id = request.name
            with contextlib.suppress(OSError):
                request.unlink()
            ec2 = self.sim.client()
            behaviour = ec2.describe_instance_attribute(
                InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
            )["InstanceInitiatedShutdownBehavior"]["Value"]
            if behaviour == "terminate":
                ec2.terminate_instances(InstanceIds=[instance_id])
            else:
                ec2.stop_instances(InstanceIds=[instance_id])

    def log(self, instance_id: str, lines: int = 40) -> str:
        return self.host.log_tail(instance_id, lines)
