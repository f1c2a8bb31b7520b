"""Every skyward cluster in an AWS account, by skyward's own tag (`skyward/cluster`) and nothing else:
what `skyward-ray status` lists and `down`/`gc` end (see `Cloud.list_clusters`); and how one EC2
instance reads as the contract's `Machine` (`instance_machine`, shared with `cloud.py`)."""

from __future__ import annotations

import contextlib
from typing import Any

from node_providers.aws import network
from node_providers.aws.config import AWS
from node_providers.aws.session import aws_errors, credentials_resolve_offline, retry_config, session_for
from skyward_ray import names
from skyward_ray.cluster.contract import ClusterListing, Machine, MachineState
from skyward_ray.errors import AuthError, SpecError

_LISTED_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

# EC2 state → the contract's. A stopped instance still bills its disk and can come back: active.
_STATES: dict[str, MachineState] = {
    "pending": "pending", "running": "running", "stopping": "stopping", "stopped": "stopping",
    "shutting-down": "terminated", "terminated": "terminated",
}


def instance_machine(instance: dict[str, Any]) -> Machine:
    """One EC2 instance (as DescribeInstances / RunInstances give it) as the contract's `Machine`.
    A worker of a batch (one RunInstances for many) carries the batch's first node index as a tag;
    its own is that plus the instance's `AmiLaunchIndex`, as the instance itself worked it out at boot."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    if names.NODE_INDEX not in tags and names.FIRST_INDEX in tags and instance.get("AmiLaunchIndex") is not None:
        with contextlib.suppress(ValueError):
            tags[names.NODE_INDEX] = str(int(tags[names.FIRST_INDEX]) + int(instance["AmiLaunchIndex"]))
    return Machine(
        instance_id=instance["InstanceId"],
        state=_STATES.get(instance["State"]["Name"], "terminated"),
        private_ip=instance.get("PrivateIpAddress"),
        public_ip=instance.get("PublicIpAddress"),
        tags=tags,
    )


def regions(config: AWS) -> list[str]:
    """The regions to look in: the config's, else the configured default region (as boto3 resolves it)."""
    regions = config.search_regions()
    if not regions:
        raise SpecError("AWS: no region to look in. Fix: pass --region (or sky.AWS(region=...)), or set AWS_DEFAULT_REGION")
    return list(regions)


def list_clusters(config: AWS) -> list[ClusterListing]:
    if not credentials_resolve_offline(config.profile):
        raise AuthError("AWS: no credentials configured; not looked at")
    found: list[ClusterListing] = []
    for region in regions(config):
        found.extend(_region_clusters(config, region))
    return found


def _region_clusters(config: AWS, region: str) -> list[ClusterListing]:
    ec2: Any = session_for(config.profile, region).client("ec2", config=retry_config())
    tagged = [{"Name": "tag-key", "Values": [names.CLUSTER]}]
    machines: dict[str, list[Machine]] = {}
    resources: dict[str, list[str]] = {}
    with aws_errors("list skyward's instances, security groups and key pairs", region):
        for page in ec2.get_paginator("describe_instances").paginate(
                Filters=tagged + [{"Name": "instance-state-name", "Values": _LISTED_STATES}]):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    machine = instance_machine(instance)
                    machines.setdefault(machine.tags[names.CLUSTER], []).append(machine)
        for group in ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]:
            name = _tag(group, names.CLUSTER)
            if name:
                resources.setdefault(name, []).append(f"security group {group['GroupId']}")
        for pair in ec2.describe_key_pairs(Filters=tagged).get("KeyPairs", []):
            name = _tag(pair, names.CLUSTER)
            if name and network.is_cluster_resource_name(name, pair.get("KeyName", "")):
                resources.setdefault(name, []).append(f"key pair {pair['KeyName']}")
    return [ClusterListing(name=name, machines=machines.get(name, []), region=region, resources=resources.get(name, []))
            for name in sorted(set(machines) | set(resources))]


def _tag(resource: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), None)
