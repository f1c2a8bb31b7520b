"""The host simulator: every instance the simulated region runs becomes a machine that boots itself,
as isolated as a real one (what a machine is, the same for every cloud, is `tests.simhost`'s).

A background thread watches the region's instance records (like a hypervisor watching its placement
queue; read in-process, not through the API: `SimAWS.instance_states`). For each new running
instance (described once through the API) it makes a host on the simulated network (`tests.simnet`):

- its own network namespace, with the instance's private address on the VPC network (which the
  driver's side cannot route to) and its public address on the public network, where only what
  the instance's security groups admit gets through (tcp rules with address ranges);
- for an instance whose user data carries cloud-init `ssh_keys`, an OpenSSH server presenting
  exactly that host key and accepting only the key pair the instance was launched with (what
  cloud-init does on a real instance);
- the instance metadata service, IMDSv2, at 169.254.169.254 inside the namespace (`imds.py`),
  answering this instance's own facts under its own `MetadataOptions` (token first, 401 without
  one, hop limit 1): the only way the machine learns its id and private address, as on EC2;
- the user data's shell script, run as cloud-init runs it (`scripts_user`, from the
  `cloud-final.service` systemd unit): as root, in the machine's root process group inside the
  namespace, with the environment systemd gives a system service and nothing else. systemd.exec(5):
  "Processes started by the system systemd instance are executed in a clean environment in which
  only the $PATH and $LANG variables are set by default", and `$HOME` is "set for the units which
  have User= set" (cloud-final.service has none). So `PATH` is systemd's default
  (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), `LANG` the image's locale
  (C.UTF-8 here), and **no `HOME`**. Nothing of the driver's environment.

The machine is bare by default (`tests.simhost`): its own root filesystem from the DLAMI-like
image (`tests.images.cloud_images.AWS`: python3 without pip, curl, no uv), the image's PATH, and
what the boot installs downloaded from the simulated internet; `shutdown`, `poweroff` and `halt`
are shims in its /usr/local/sbin that tell the simulated hypervisor the guest powered off (a file
in the machine's layer; EC2 then terminates or stops it, per its InstanceInitiatedShutdownBehavior);
the real `shutdown` never runs here. Its sshd and metadata service are this machine's OpenSSH and
`imds.py`, run in its network namespace (stand-ins for the image's own). With
SKYWARD_SIM_BARE_AWS=0 (quicker, for debugging) the image's contents are the driver's instead (PATH
holds the shims, the base interpreter as python3, and `uv`; the node installs offline from a
package cache warmed once, `node_package_cache`; `TMPDIR` / `SKYWARD_MACHINE_DIR` /
`SKYWARD_ENV_DIR` give it a /tmp, /var/lib and /opt of its own). When EC2 says an instance is
shutting down or terminated, its processes (its metadata service too) and namespace
are ended.
"""

from __future__ import annotations

import base64
import contextlib
import email
import gzip
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tests.images.cloud_images import AWS
from tests.simaws.server import VPC_CIDR
from tests.simhost import NETNS_ETC, NODE_PACKAGES, SHUTDOWN_NAMES, SYSTEM_PATH, UV_CACHE, SimulatedHosts, node_package_cache
from tests.simnet import SimHost
from tests.simnet.network import IP

__all__ = ["HostSimulator", "NODE_PACKAGES", "SHIM_NAMES", "SYSTEM_PATH", "UV_CACHE", "node_package_cache",
           "cloud_init_text", "split_user_data"]

# The shims live in <root>/bin; the simulator reads <root>/shutdown-requests/<network namespace>.
_SHUTDOWN_SHIM = """#!/bin/sh
# simulated host: an instance-initiated shutdown of the instance this runs on (never this machine's shutdown)
ns="$(ip netns identify $$)"
echo "simaws: $(basename "$0") $* in $ns"
: > "$(dirname "$(readlink -f "$0")")/../shutdown-requests/$ns"
exit 0
"""
# On a bare machine (its own root: `tests.simhost`), the same request as a file in the machine,
# which the simulator reads from the machine's layer (`RootfsMachine.written`).
BARE_SHUTDOWN_REQUEST = "/var/lib/simhost/shutdown-requested"
_BARE_SHUTDOWN_SHIM = f"""#!/bin/sh
# simulated host: an instance-initiated shutdown of this instance (the hypervisor sees the guest power off)
echo "simaws: $(basename "$0") $*"
mkdir -p {Path(BARE_SHUTDOWN_REQUEST).parent} && : > {BARE_SHUTDOWN_REQUEST}
exit 0
"""
SHIM_NAMES = SHUTDOWN_NAMES
IMDS_SCRIPT = Path(__file__).with_name("imds.py")
IMDS_ADDRESS = "169.254.169.254"
# cloud-init's user scripts run from a systemd system service: systemd's default PATH (`SYSTEM_PATH`,
# behind the image stand-ins of `SimulatedHosts.path`) and the image's locale
CLOUD_INIT_LANG = "C.UTF-8"


def cloud_init_text(data: bytes | str) -> str:
    """User data as cloud-init reads it: gzip'd content decompressed first ("User-data formats: Gzip
    compressed content", cloud-init's documentation), then text."""
    if isinstance(data, str):
        return data
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode()


def split_user_data(data: bytes | str) -> tuple[dict[str, Any], str]:
    """(cloud-config, shell script) of a user data payload: MIME multi-part as cloud-init reads it, or a
    bare script; gzip'd or not."""
    data = cloud_init_text(data)
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
    shims: ClassVar[Mapping[str, str]] = {name: _SHUTDOWN_SHIM for name in SHIM_NAMES}
    thread_name = "simaws-hosts"
    unset = (*SimulatedHosts.unset, "HOME")  # systemd gives a service without User= no HOME
    image = AWS
    bare_switch = "SKYWARD_SIM_BARE_AWS"
    machine_files: ClassVar[Mapping[str, str]] = {f"/usr/local/sbin/{name}": _BARE_SHUTDOWN_SHIM
                                                  for name in SHIM_NAMES}

    def __init__(self, sim: Any, boot_delay: float = 0.0, poll_interval: float = 0.15,
                 bare: bool | None = None) -> None:
        super().__init__(sim, boot_delay=boot_delay, poll_interval=poll_interval, private_net=VPC_CIDR,
                         bare=bare)
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
        self.ignore = set(self.sim.instance_states())

    def detach(self) -> None:
        self.sim.front.console_output = None

    # -- the watch loop ------------------------------------------------------------------------------
    def listing(self) -> dict[str, str]:
        """Instance id -> state name, from the region's records (`SimAWS.instance_states`); the one
        to boot is described through the API once (`boot_listed`)."""
        return self.sim.instance_states()

    def is_running(self, record: str) -> bool:
        return record == "running"  # shutting-down, terminated, stopping, stopped: it ended

    def before_step(self) -> None:
        """An instance ran `shutdown`: EC2 terminates or stops it, as its shutdown behaviour says."""
        for request in list(self.shutdown_dir.iterdir()):
            with contextlib.suppress(OSError):
                request.unlink()
            with self.lock:
                found = [i for i, host in self.sim_hosts.items() if host.namespace == request.name]
            if not found:
                self.errors.append(f"a shutdown from {request.name!r}, which is no instance's namespace")
                continue
            self._shut_down(found[0])
        if self.bare:
            with self.lock:
                live = [i for i in self.booted if i not in self.ended]
            for instance_id in live:
                flag = self.rootfs(instance_id).written(BARE_SHUTDOWN_REQUEST)
                if flag.exists():
                    flag.unlink()
                    self._shut_down(instance_id)

    def _shut_down(self, instance_id: str) -> None:
        """The guest powered off: terminate or stop, per its InstanceInitiatedShutdownBehavior."""
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

    def boot_listed(self, instance_id: str, record: str, waited: float) -> None:
        instance = self.sim.described(instance_id)
        if instance is None or instance["State"]["Name"] != "running":
            return  # ended between the look and the describe: the next look sees it so
        data = self.sim.client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        cloud_config, script = split_user_data(base64.b64decode(data.get("UserData", {}).get("Value", "")))
        self.mark_booted(instance_id, waited)
        host = self.add_host(instance_id, "h", private_ip=instance["PrivateIpAddress"],
                             public_ip=instance.get("PublicIpAddress"), allowed_tcp=self._allowed_tcp(instance))
        key_path = self._host_keys(instance_id, host, cloud_config)
        if key_path is not None and instance.get("KeyName"):
            if self.tamper_host_keys:  # someone else's machine answers on this address
                key_path = host.directory / "someone_elses_host_key"
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True)
            host.start_sshd(key_path, self.sim.imported_public_key(instance["KeyName"]))
        start_metadata_service(host, instance)
        env = {"PATH": self.path, "LANG": CLOUD_INIT_LANG, **self.machine_env(instance_id)}  # bare: the image's PATH
        self.run_machine(instance_id, host, script, instance["PrivateIpAddress"], env)

    def _image_host_key(self) -> Path:
        """The host key baked into the image when it was built: every instance of it has this one
        until cloud-init deletes it (`ssh_deletekeys`)."""
        path = self.root / "image_host_key"
        with self.lock:
            if not path.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-build",
                                "-f", str(path)], check=True)
        return path

    def _host_keys(self, instance_id: str, host: SimHost, cloud_config: Mapping[str, Any]) -> Path | None:
        """cloud-init's `cc_ssh` at first boot: the image's host keys deleted (`ssh_deletekeys`,
        default true; false keeps the image's own), then the user data's `ssh_keys` installed, else
        fresh keys of `ssh_genkeytypes` (default rsa, ecdsa, ed25519; ed25519 is the one made
        here), in the machine's own /etc/ssh. Returns the ed25519 private key's path on the driver's side (for
        the simulated sshd), None when the machine has none."""
        given = (cloud_config.get("ssh_keys") or {}).get("ed25519_private")
        key_path = host.directory / "host_key"
        if given:
            key_path.write_text(given)
        elif not cloud_config.get("ssh_deletekeys", True):  # the image's own key, the same on every instance
            key_path.write_text(self._image_host_key().read_text())
        elif "ed25519" in cloud_config.get("ssh_genkeytypes", ["rsa", "ecdsa", "ed25519"]):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{instance_id}",
                            "-f", str(key_path)], check=True)
        else:
            return None
        key_path.chmod(0o600)
        public = subprocess.run(["ssh-keygen", "-y", "-f", str(key_path)], capture_output=True, text=True,
                                check=True).stdout.strip() + f" root@{instance_id}\n"
        # the machine's /etc/ssh: in its own root when bare, else the directory `ip netns exec` binds over /etc/ssh
        etc_ssh = self.rootfs(instance_id).written("/etc/ssh") if self.bare else NETNS_ETC / host.namespace / "ssh"
        etc_ssh.mkdir(parents=True, exist_ok=True)
        (etc_ssh / "ssh_host_ed25519_key").write_text(key_path.read_text())
        (etc_ssh / "ssh_host_ed25519_key").chmod(0o600)
        (etc_ssh / "ssh_host_ed25519_key.pub").write_text(public)
        return key_path


def metadata_facts(instance: dict[str, Any]) -> dict[str, str]:
    """What an instance's metadata service says about it (a subset of /latest/meta-data/)."""
    zone = (instance.get("Placement") or {}).get("AvailabilityZone", "")
    facts = {"instance-id": instance["InstanceId"], "local-ipv4": instance["PrivateIpAddress"],
             "ami-id": instance.get("ImageId", ""), "instance-type": instance.get("InstanceType", ""),
             "placement/availability-zone": zone, "placement/region": zone[:-1] if zone else "",
             "local-hostname": instance.get("PrivateDnsName", ""),
             # "If you started more than one instance at the same time, this value indicates the order in which
             # the instance was launched. The value of the first instance launched is 0." (EC2 User Guide,
             # "Instance metadata categories", ami-launch-index)
             "ami-launch-index": str(instance.get("AmiLaunchIndex", 0))}
    if instance.get("PublicIpAddress"):
        facts["public-ipv4"] = instance["PublicIpAddress"]
    return facts


def start_metadata_service(host: SimHost, instance: dict[str, Any]) -> None:
    """Serve the instance's IMDS at 169.254.169.254:80 inside its namespace, as its `MetadataOptions`
    say (none at all with `HttpEndpoint=disabled`); returns once it listens."""
    options = instance.get("MetadataOptions") or {}
    if options.get("HttpEndpoint", "enabled") == "disabled":
        return
    subprocess.run([IP, "-n", host.namespace, "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"], check=True,
                   capture_output=True, timeout=20)
    mode = {"tokens_required": options.get("HttpTokens", "optional") == "required",
            "hop_limit": int(options.get("HttpPutResponseHopLimit") or 1)}
    log = host.directory / "imds.log"
    pid = host.run([sys.executable, "-I", str(IMDS_SCRIPT), json.dumps(metadata_facts(instance)), json.dumps(mode)],
                   env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, log_path=log)
    host.wait_listening(80, timeout=15, pid=pid, log_path=log)
