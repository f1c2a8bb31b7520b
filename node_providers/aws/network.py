"""What `prepare` makes on AWS for one cluster, and removes at cleanup: subnet choice, image,
security group (all traffic from its own members; SSH only from the driver's address when asked),
key pair (the driver's public key, imported). Both get fresh random names and are read back after
creating (`ownership`); everything is found again by the cluster's tag, so cleanup works from any process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from node_providers.aws import ownership
from node_providers.aws.ownership import ResourceConflictError
from skyward_ray import names
from skyward_ray.errors import CapacityError, ProvisioningError, SpecError

# The AWS Deep Learning Base AMIs (NVIDIA driver, Ubuntu 22.04, /usr/bin/python3.10), per architecture: the
# ARM64 one is for G5g and P6e-GB200 (AWS DLAMI release notes, "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI").
DEFAULT_AMI_NAMES = {
    "x86_64": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
    "arm64": "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
}
DEFAULT_AMI_NAME = DEFAULT_AMI_NAMES["x86_64"]


def tag_spec(resource: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource, "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()]}]


def cluster_filter(cluster_name: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{names.CLUSTER}", "Values": [cluster_name]}]


def choose_subnet(ec2: Any, region: str, zone: str | None, vpc_id: str | None, subnet_id: str | None) -> dict[str, Any]:
    """The subnet to launch into: `subnet_id` if given, else the VPC's (default VPC's) subnet in the zone
    (named, or given by its account-independent zone id)."""
    if subnet_id:
        return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
    if not vpc_id:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ProvisioningError(
                f"AWS: region {region} has no default VPC. Fix: pass sky.AWS(vpc_id=..., subnet_id=...)")
        vpc_id = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    if zone:  # a zone name (us-east-1a, from live offers) or a zone id (use1-az1, as price catalogs publish)
        subnets = [s for s in subnets if zone in (s.get("AvailabilityZone"), s.get("AvailabilityZoneId"))]
    if not subnets:
        where = f"zone {zone}" if zone else "any zone"
        raise CapacityError(f"AWS: VPC {vpc_id} has no subnet in {where}; this offer cannot be placed there")
    return max(subnets, key=lambda s: (s.get("DefaultForAz", False), s.get("AvailableIpAddressCount", 0)))


def default_ami(ec2: Any, architecture: str = "x86_64") -> str:
    """The newest AWS Deep Learning Base AMI (NVIDIA driver, Ubuntu 22.04) for this architecture."""
    name = DEFAULT_AMI_NAMES.get(architecture)
    if name is None:
        raise CapacityError(f"AWS: skyward has no default image for {architecture} machines. "
                            "Fix: pass sky.AWS(ami='ami-...') with an image for them")
    images = ec2.describe_images(Owners=["amazon"], Filters=[
        {"Name": "name", "Values": [name]},
        {"Name": "state", "Values": ["available"]},
        {"Name": "architecture", "Values": [architecture]},
    ])["Images"]
    if not images:
        raise CapacityError(
            f"AWS: no image named {name!r} ({architecture}) in this region, so this offer cannot boot here. "
            "Fix: pass sky.AWS(ami='ami-...') with an image that has the NVIDIA driver and python3")
    return max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"]


def architectures(ec2: Any, instance_type: str) -> list[str]:
    """What the instance type runs (DescribeInstanceTypes ProcessorInfo.SupportedArchitectures)."""
    info = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    return list(info[0].get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]) if info else ["x86_64"])


@dataclass(frozen=True)
class BootImage:
    """The image a machine boots: its id, its architecture, and its root device as the image itself
    maps it (DescribeImages RootDeviceName: `/dev/sda1` on Ubuntu AMIs, `/dev/xvda` on Amazon Linux)."""

    image_id: str
    architecture: str
    root_device: str | None


def boot_image(ec2: Any, instance_type: str, ami: str | None) -> BootImage:
    """The image for `instance_type`: `ami` if given (refused with the reason when the machine cannot
    run its architecture), else the default Deep Learning AMI for the machine's architecture (the
    ARM64 one for Graviton GPUs such as g5g). A refusal is a `CapacityError`: this offer cannot
    boot, and the plan moves on to the next, before anything was launched."""
    archs = architectures(ec2, instance_type)
    image_id = ami or default_ami(ec2, "x86_64" if "x86_64" in archs else archs[0])
    found = ec2.describe_images(ImageIds=[image_id])["Images"]
    if not found:
        raise ProvisioningError(f"AWS: image {image_id} does not exist in this region. Fix: pass an image id of "
                                "this region to sky.AWS(ami=...)")
    image = found[0]
    arch = image.get("Architecture") or "x86_64"
    if arch not in archs:
        raise CapacityError(
            f"AWS: {instance_type} runs {'/'.join(archs)} and image {image_id} is {arch}: it cannot boot there. "
            f"Fix: pass an {'/'.join(archs)} image to sky.AWS(ami=...), or leave ami unset for skyward's default")
    return BootImage(image_id, arch, image.get("RootDeviceName"))


_SUFFIX = re.compile(r"[0-9a-f]{8}")  # what `resource_name` appends


def resource_name(cluster_name: str) -> str:
    """A new name for one of the cluster's resources: `skyward-<cluster>-<8 random hex digits>`.

    Pool names are predictable (named pools); a name nobody can guess first means nobody can
    pre-create the resource for us to pick up."""
    return f"skyward-{cluster_name}-{secrets.token_hex(4)}"


def is_cluster_resource_name(cluster_name: str, resource: str) -> bool:
    """Is `resource` a name `resource_name(cluster_name)` makes (or the unsuffixed name of older versions)?"""
    base = f"skyward-{cluster_name}"
    return resource == base or (resource.startswith(base + "-") and _SUFFIX.fullmatch(resource[len(base) + 1:]) is not None)


@contextlib.contextmanager
def _fresh(kind: str, name: str, duplicate_code: str) -> Iterator[None]:
    """Creating `kind` `name`: a name that already exists is a `ResourceConflictError`, never reused."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != duplicate_code:
            raise
        raise ResourceConflictError(
            f"AWS: a {kind} named {name} already exists; skyward never reuses one it did not just make (its "
            "rules or key could be someone else's). Fix: try again (a new random name is drawn), and check who "
            "creates skyward-* resources in this account") from None


def security_group(ec2: Any, cluster_name: str, vpc_id: str, ssh_cidr: str | None,
                   driver_group: str | None) -> str:
    """A new group for the cluster: all traffic from its own members, SSH from the driver only.

    Never an existing one (found by name or tag): its random name is created fresh, and its rules
    are read back and must be exactly these (`ownership.check_group_rules`)."""
    name = resource_name(cluster_name)
    with _fresh("security group", name, "InvalidGroup.Duplicate"):
        group_id = ec2.create_security_group(
            GroupName=name, VpcId=vpc_id,
            Description=f"skyward_ray cluster {cluster_name}: nodes talk to each other; SSH from the driver only",
            TagSpecifications=tag_spec("security-group", {names.CLUSTER: cluster_name, "Name": name}),
        )["GroupId"]
    rules: list[dict[str, Any]] = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
    if driver_group:
        rules.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": driver_group}]})
    if ssh_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": ssh_cidr, "Description": "SSH from the skyward_ray driver"}]})
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules)
    ownership.check_group_rules(ec2, group_id, rules)
    return group_id


def import_key_pair(ec2: Any, cluster_name: str, public_key_line: str) -> str:
    """Import this cluster's public key (made on the driver) under a new random name; the private key
    never passes through AWS. An existing name fails; the imported pair's fingerprint is checked."""
    name = resource_name(cluster_name)
    with _fresh("key pair", name, "InvalidKeyPair.Duplicate"):
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key_line.encode(),
                            TagSpecifications=tag_spec("key-pair", {names.CLUSTER: cluster_name}))
    ownership.check_key_pair(ec2, name, public_key_line)
    return name


CHECKIP_URL = "https://checkip.amazonaws.com"


def driver_public_cidr(timeout: float = 5.0) -> str:
    """This machine's public address as a /32, as AWS sees it (checkip.amazonaws.com, or the service
    named by SKYWARD_CHECKIP_URL, e.g. behind a corporate proxy): the only source the SSH rule admits."""
    import os
    import urllib.request

    url = os.environ.get("SKYWARD_CHECKIP_URL", CHECKIP_URL)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310
            address = answer.read().decode().strip()
        ipaddress.IPv4Address(address)
    except (OSError, ValueError) as error:
        raise SpecError(
            f"AWS: could not find this machine's public address through {url} ({error}); the pool's "
            "SSH rule admits only the driver's address. Fix: pass sky.AWS(ssh_cidr='<your public ip>/32')"
        ) from None
    return f"{address}/32"


def delete_cluster_resources(ec2: Any, cluster_name: str, timeout: float = 180.0) -> None:
    """Delete the cluster's security groups and key pairs (found by its tag; key pairs by their name too),
    retrying while ENIs detach."""
    from botocore.exceptions import ClientError

    groups = ec2.describe_security_groups(Filters=cluster_filter(cluster_name))["SecurityGroups"]
    deadline = time.monotonic() + timeout
    for group in groups:
        while True:
            try:
                ec2.delete_security_group(GroupId=group["GroupId"])
                break
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code == "InvalidGroup.NotFound":
                    break
                if code != "DependencyViolation" or time.monotonic() > deadline:
                    raise
                time.sleep(3)
    for pair in ec2.describe_key_pairs(Filters=cluster_filter(cluster_name)).get("KeyPairs", []):
        if is_cluster_resource_name(cluster_name, pair.get("KeyName", "")):
            with contextlib.suppress(ClientError):
                ec2.delete_key_pair(KeyName=pair["KeyName"])
