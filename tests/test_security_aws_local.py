"""Issue 21, the AWS and local-pool findings: what someone else in the cloud account or on the LAN could use.

- AWS: a cluster's security group and key pair get fresh random names; a taken name is a typed error,
  never reused; after creating, the key pair's fingerprint and the group's rules are read back and
  must be exactly ours (someone racing us between two calls is caught). Cleanup still finds them.
  (IMDS hop limit 1 is checked on the real RunInstances request in tests/test_aws_provider.py.)
- Local pools: no process of a pool listens on every interface, except where Ray has no knob
  (listed below with the reason).
(The `ray up` token file is tested in tests/test_ray_yaml.py.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

import skyward_ray as sky
from node_providers.aws import network
from node_providers.aws.ownership import ResourceConflictError, key_fingerprints
from node_providers.local.process_host import processes_with_marker
from skyward_ray import names
from skyward_ray.cluster import provisioning
from skyward_ray.cluster.contract import ClusterParams
from tests.provider_helpers import TOKEN, cluster_name
from tests.simaws import SIM_SETTINGS, Fault, aws_environment
from tests.simaws.server import SimAWS

REGION = "us-east-1"
SSH_CIDR = "198.18.0.1/32"
OPEN_SSH = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]


@pytest.fixture(scope="module")
def sim():
    """A simulated region (moto behind the fault front): no machine is booted in this module."""
    sim = SimAWS(REGION).start()
    try:
        with aws_environment(sim.client_env()):
            yield sim
    finally:
        sim.stop()


def _public_key(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "k")], check=True)
    return (directory / "k.pub").read_text().strip()


def _prepare(tmp_path: Path, name: str) -> Any:
    """Prepare a cluster as the launcher does (security group, key pair); returns its node provider."""
    config = sky.AWS(region=REGION, key_dir=str(tmp_path), ssh_cidr=SSH_CIDR, **SIM_SETTINGS)
    params = ClusterParams(auth_token=TOKEN, nodes=1, instance_type="g4dn.xlarge", market="on-demand", region=REGION)
    return provisioning.load_node_provider(config, params, name)


def _pairs(sim: SimAWS, name: str) -> list[str]:
    return [k["KeyName"] for k in sim.key_pairs() if k["KeyName"].startswith(f"skyward-{name}")]


# -- item 1: AWS names ---------------------------------------------------------------------------------
def test_aws_never_takes_a_group_or_key_pair_someone_made_under_the_pools_name(sim, tmp_path):
    """Someone in the account plants an open group and their own key pair under the names (and tag) a
    named pool would have used: the pool makes its own under fresh names, and cleanup finds those by tag."""
    name, ec2 = cluster_name(), sim.client()
    planted_group = ec2.create_security_group(
        GroupName=f"skyward-{name}", VpcId=sim.vpc_id, Description="planted",
        TagSpecifications=network.tag_spec("security-group", {names.CLUSTER: name}))["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=planted_group, IpPermissions=OPEN_SSH)
    ec2.import_key_pair(KeyName=f"skyward-{name}", PublicKeyMaterial=_public_key(tmp_path / "them").encode(),
                        TagSpecifications=network.tag_spec("key-pair", {names.CLUSTER: name}))

    provider = _prepare(tmp_path, name)
    prepared = provider.provider_config["prepared"]
    try:
        assert prepared["security_group_id"] != planted_group, "the planted (open) group was reused"
        assert prepared["key_name"] != f"skyward-{name}", "the planted key pair was reused"
        assert sim.imported_public_key(prepared["key_name"]) == (tmp_path / name / "id_ed25519.pub").read_text().strip()
        [group] = ec2.describe_security_groups(GroupIds=[prepared["security_group_id"]])["SecurityGroups"]
        assert group["GroupName"].startswith(f"skyward-{name}-") and group["GroupName"] != prepared["key_name"]
        assert not [r for rule in group["IpPermissions"] for r in rule["IpRanges"] if r["CidrIp"] == "0.0.0.0/0"]
    finally:
        provider.cleanup_cluster_resources()
    left = {g["GroupId"] for g in sim.security_groups(cluster=name)}
    assert prepared["security_group_id"] not in left and prepared["key_name"] not in _pairs(sim, name), \
        "cleanup finds the randomly named group and key pair by the cluster's tag"


@pytest.mark.parametrize("action, code", [("CreateSecurityGroup", "InvalidGroup.Duplicate"),
                                          ("ImportKeyPair", "InvalidKeyPair.Duplicate")])
def test_a_taken_name_is_a_typed_error_and_the_attempt_leaves_nothing(sim, tmp_path, action, code):
    name = cluster_name()
    with sim.fault(Fault(action, code=code, message="The resource already exists")) as taken:
        with pytest.raises(ResourceConflictError, match="already exists; skyward never reuses") as caught:
            _prepare(tmp_path, name)
    assert taken.hits == 1 and isinstance(caught.value, sky.ProvisioningError)
    assert sim.security_groups(cluster=name) == [] and _pairs(sim, name) == []


class _Racing:
    """The account's other user, acting right after one of our calls: a boto3 client in front of the real one."""

    def __init__(self, ec2: Any, method: str, then: Any) -> None:
        self._ec2, self._method, self._then = ec2, method, then

    def __getattr__(self, attribute: str) -> Any:
        real = getattr(self._ec2, attribute)
        if attribute != self._method:
            return real

        def call(**kwargs: Any) -> Any:
            answer = real(**kwargs)
            self._then(kwargs)
            return answer
        return call


def test_a_key_pair_replaced_or_a_rule_added_as_they_are_made_is_caught(sim, tmp_path):
    name, ec2 = cluster_name(), sim.client()
    ours, theirs = _public_key(tmp_path / "us"), _public_key(tmp_path / "them")

    def swap_key(request: dict[str, Any]) -> None:
        ec2.delete_key_pair(KeyName=request["KeyName"])
        ec2.import_key_pair(KeyName=request["KeyName"], PublicKeyMaterial=theirs.encode(),
                            TagSpecifications=network.tag_spec("key-pair", {names.CLUSTER: name}))

    def open_group(request: dict[str, Any]) -> None:
        ec2.authorize_security_group_ingress(GroupId=request["GroupId"], IpPermissions=OPEN_SSH)

    try:
        with pytest.raises(ResourceConflictError, match="does not hold this pool's public key"):
            network.import_key_pair(_Racing(ec2, "import_key_pair", swap_key), name, ours)
        with pytest.raises(ResourceConflictError, match=r"extra \[\('tcp', 22, 22, 'cidr', '0.0.0.0/0'\)\]"):
            network.security_group(_Racing(ec2, "authorize_security_group_ingress", open_group), name, sim.vpc_id,
                                   SSH_CIDR, None)
        # untouched, the same calls pass their own checks
        assert network.import_key_pair(ec2, name, ours).startswith(f"skyward-{name}-")
        assert network.security_group(ec2, name, sim.vpc_id, SSH_CIDR, None).startswith("sg-")
    finally:
        network.delete_cluster_resources(ec2, name, timeout=10)
    assert sim.security_groups(cluster=name) == [] and _pairs(sim, name) == []


def test_the_expected_fingerprints_include_openssh_own(tmp_path):
    """AWS reports an imported ed25519 key's SHA-256 fingerprint as OpenSSH prints it."""
    line = _public_key(tmp_path)
    printed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")],
                             check=True, capture_output=True, text=True).stdout.split()[1]
    assert printed.removeprefix("SHA256:") in key_fingerprints(line)
    assert not key_fingerprints(line) & key_fingerprints(_public_key(tmp_path / "other"))


# -- item 2: what a local pool listens on ------------------------------------------------------------
# Listeners Ray 2.60 puts on every interface and offers no setting to move. On a local pool the
# node's address is 127.X.Y.n, which Ray's `is_localhost` does not take for loopback (it means
# 127.0.0.1 alone), so these stay on 0.0.0.0 / ::. Every gRPC one checks the pool's token
# (RAY_AUTH_MODE=token); the last one serves read-only metrics without auth.
NO_KNOB = {
    "gcs_server": "the GCS's gRPC server (C++ GrpcServer: 0.0.0.0 unless the node's address is 127.0.0.1)",
    "raylet": "the raylet's node manager and object manager gRPC servers (the same C++ GrpcServer)",
    "ray::<worker>": "every worker's core-worker gRPC server (the same C++ GrpcServer)",
    "ray::DashboardAgent": "the dashboard agent's gRPC server (agent.py: 0.0.0.0 unless the node is 127.0.0.1; "
                           "its HTTP server is on the node's address and 127.0.0.1)",
    "dashboard/dashboard.py": "the head's API server's Prometheus metrics (started even with "
                              "--include-dashboard=false; port DASHBOARD_METRIC_PORT, 44227, host not settable)",
}
# What must stay off every interface: the runtime-env agent (Ray binds it to --node-ip-address), and
# the head's autoscaler monitor, whose metrics server had no auth and no host setting: local heads
# start with --no-monitor (skyward runs no autoscaler on a node). A local head runs no Ray Client
# server either (its drivers join the GCS directly), so it listens nowhere.
MONITORS = ("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")
_NAMED = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "dashboard/dashboard.py", "ray.util.client.server",
          "log_monitor.py", *MONITORS)


def _kind(process: psutil.Process) -> str:
    name, command = process.name(), " ".join(process.cmdline())
    if name in ("gcs_server", "raylet"):
        return name
    named = next((k for k in _NAMED if k in command), None)
    return named or ("ray::<worker>" if command.startswith("ray::") else name)


def _pool_processes(instance_ids: list[str]) -> dict[int, psutil.Process]:
    """Every process of the pool's machines: those carrying a machine's marker and their descendants
    (Ray starts its agents with an environment of its own, without the marker)."""
    found: dict[int, psutil.Process] = {}
    for instance_id in instance_ids:
        for process in processes_with_marker(instance_id):
            found[process.pid] = process
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update({child.pid: child for child in process.children(recursive=True)})
    return found


def _listeners(instance_ids: list[str]) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(process kind, address, port) of every TCP listener of the pool's processes; an IPv4-mapped
    IPv6 address is read as the IPv4 address it is."""
    found = []
    for process in _pool_processes(instance_ids).values():
        try:
            sockets, kind = process.net_connections(kind="tcp"), _kind(process)
        except psutil.NoSuchProcess:
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                address = ipaddress.ip_address(sock.laddr.ip)
                mapped = getattr(address, "ipv4_mapped", None)
                found.append((kind, mapped or address, sock.laddr.port))
    return found


@sky.function
def _head_ip() -> str:
    return sky.instance_info().head_ip


def test_a_local_pool_listens_on_its_own_addresses_except_where_ray_has_no_knob():
    with sky.Compute(nodes=2) as pool:
        assert _head_ip() >> pool  # a worker process runs: its listener is counted too
        nodes = {n.instance_id: n.ip for n in pool.nodes}
        listeners = _listeners(list(nodes))
        running = set()
        for process in _pool_processes(list(nodes)).values():
            with contextlib.suppress(psutil.NoSuchProcess):
                running.add(_kind(process))
    report = "\n".join(f"{kind:24} {ip}:{port}" for kind, ip, port in sorted(listeners, key=str))
    everywhere = [kind for kind, ip, _ in listeners if ip.is_unspecified]
    assert not [k for k in everywhere if k not in NO_KNOB], f"listening on every interface:\n{report}"
    own = {ipaddress.ip_address(ip) for ip in nodes.values()} | {ipaddress.ip_address("127.0.0.1")}
    assert all(ip in own for _, ip, _ in listeners if not ip.is_unspecified), report
    kinds = {kind for kind, _, _ in listeners}
    assert {"ray::RuntimeEnvAgent", "ray::DashboardAgent"} <= kinds, report
    assert "raylet" in running and "ray.util.client.server" not in running, \
        "a local head runs no Ray Client server (its drivers join the GCS directly)"
    assert not kinds & set(MONITORS), "a local head runs no autoscaler monitor (its metrics had no auth)"
    assert everywhere.count("ray::DashboardAgent") <= 2 and everywhere.count("dashboard/dashboard.py") <= 1, report
