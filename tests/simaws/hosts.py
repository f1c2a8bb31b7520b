"""The host simulator: every instance the simulated region runs becomes a machine that boots itself,
as isolated as a real one (what a machine is, the same for every cloud, is `tests.simhost`'s).

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
import subprocess
from collections.abc import Mapping
from typing import Any, ClassVar

import yaml

from tests.simaws.server import VPC_CIDR
from tests.simhost import NODE_PACKAGES, SHUTDOWN_NAMES, SYSTEM_PATH, UV_CACHE, SimulatedHosts, node_package_cache

__all__ = ["HostSimulator", "NODE_PACKAGES", "SHIM_NAMES", "SYSTEM_PATH", "UV_CACHE", "node_package_cache",
           "split_user_data"]

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
SHIM_NAMES = SHUTDOWN_NAMES


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


class HostSimulator(SimulatedHosts):
    """Boots and ends simulated machines for the instances of one simulated region (watching EC2)."""

    prefix = "sa-"
    shims: ClassVar[Mapping[str, str]] = {**{name: _SHUTDOWN_SHIM for name in SHIM_NAMES}, "curl": _CURL_SHIM}
    thread_name = "simaws-hosts"

    def __init__(self, sim: Any, boot_delay: float = 0.0, poll_interval: float = 0.15) -> None:
        super().__init__(sim, boot_delay=boot_delay, poll_interval=poll_interval, private_net=VPC_CIDR)
        self.shutdown_dir = self.root / "shutdown-requests"
        self.shutdown_dir.mkdir()
        self.tamper_host_keys = False  # True: hosts present a key of their own, not the user data's

    @property
    def ssh_cidr(self) -> str:
        """The driver's address on the simulated public network, as a security group source."""
        return f"{self.network.driver_ip}/32"

    def attach(self) -> None:
        """Instances that exist already are not this simulator's to boot."""
        self.sim.use_public_ips(self.network.allocate_public_ip)
        self.sim.front.console_output = lambda instance_id: self.host.log_tail(instance_id, 200)
        self.ignore = {i["InstanceId"] for i in self.sim.instances()}

    def detach(self) -> None:
        self.sim.front.console_output = None

    # -- the watch loop ------------------------------------------------------------------------------
    def listing(self) -> dict[str, dict[str, Any]]:
        return {i["InstanceId"]: i for i in self.sim.instances()}

    def is_running(self, record: dict[str, Any]) -> bool:
        return record["State"]["Name"] == "running"  # shutting-down, terminated, stopping, stopped: it ended

    def before_step(self) -> None:
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

    def boot_listed(self, instance: dict[str, Any], waited: float) -> None:
        instance_id = instance["InstanceId"]
        data = self.sim.client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        cloud_config, script = split_user_data(base64.b64decode(data.get("UserData", {}).get("Value", "")).decode())
        self.mark_booted(instance_id, waited)
        host = self.add_host(instance_id, "h", private_ip=instance["PrivateIpAddress"],
                             public_ip=instance.get("PublicIpAddress"), allowed_tcp=self._allowed_tcp(instance))
        host_key = (cloud_config.get("ssh_keys") or {}).get("ed25519_private")
        if host_key and instance.get("KeyName"):
            key_path = host.directory / "host_key"
            if self.tamper_host_keys:  # someone else's machine answers on this address
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True)
            else:
                key_path.write_text(host_key)
            key_path.chmod(0o600)
            host.start_sshd(key_path, self.sim.imported_public_key(instance["KeyName"]))
        env = {"PATH": self.path, "SIMAWS_SHUTDOWN_DIR": str(self.shutdown_dir), **self.machine_env(instance_id)}
        self.run_machine(instance_id, host, script, instance["PrivateIpAddress"], env)
