"""EC2 machines for the generic script-booted node provider: launch, describe, terminate, prepare, clean up.

Every fact about a machine lives in EC2 tags, so a provider made in another process finds the
same machines. Machines boot from user data: no SSH, no credential on the node, IMDSv2 only, and
when Ray exits the node runs `shutdown -h now`, which with `InstanceInitiatedShutdownBehavior=
terminate` ends (not stops) the instance. `prepare` makes a security group (all traffic from
itself; SSH from the driver's address only when `ssh_cidr` is given) and a key pair per cluster,
under fresh random names, checked after creating (`network`, `ownership`);
`cleanup` deletes them once the instances are terminated.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import yaml

from node_providers.aws import network
from node_providers.aws.admin import instance_machine, list_clusters
from node_providers.aws.config import AWS
from node_providers.aws.session import aws_errors, check_credentials, retry_config, session_for
from skyward_ray import names
from skyward_ray.cluster.contract import ClusterListing, Machine, MachineRequest, NotFoundError, SSHEndpoint
from skyward_ray.cluster.remote_cloud import RemoteCloud
from skyward_ray.errors import ProvisioningError, SpecError
from skyward_ray.node.sshd import SYSTEM_HOST_KEY

# IMDSv2 (token first): the only way an EC2 instance learns its own id and private address.
_IMDS = "http://169.254.169.254/latest"
_IMDS_TOKEN = f'$(curl -sf --retry 5 -X PUT {_IMDS}/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 600")'


def _imds(path: str) -> str:
    return f'$(curl -sf --retry 5 -H "X-aws-ec2-metadata-token: {_IMDS_TOKEN}" {_IMDS}/meta-data/{path})'


# "User data is limited to 16 KB, in raw form, before it is base64-encoded" (Amazon EC2 User Guide, "Run
# commands when you launch an EC2 instance with user data input"): more is refused before anything is launched.
USER_DATA_LIMIT = 16 * 1024

# EC2 answers InvalidInstanceID.NotFound for a few seconds after a create (eventual consistency):
# a call about a just-created instance is retried this many times before NotFound means gone.
NOT_FOUND_RETRIES = 5

# A reboot of an instance must end it: user data runs once, so a rebooted instance would come
# back with no Ray and no shutdown. cloud-init runs `bootcmd` on every boot; the first boot marks
# the instance, every later one powers it off.
_REBOOT_GUARD = ("if [ -e /var/lib/skyward-first-boot ]; then echo 'skyward: rebooted; ending this instance'; "
                 "shutdown -h now; else mkdir -p /var/lib && : > /var/lib/skyward-first-boot; fi")


class AWSCloud(RemoteCloud):
    """EC2 instances of one cluster, in the region of the offer bought."""

    config_class = AWS
    config: AWS
    instance_id_shell = _imds("instance-id")
    node_ip_shell = _imds("local-ipv4")
    # workers launch in batches (`launch_many`): an instance's place in its batch, 0 for the first
    launch_index_shell = _imds("ami-launch-index")
    shutdown_command = "shutdown -h now"  # with InstanceInitiatedShutdownBehavior=terminate: ends it
    log_name = "console output"
    # cloud-init makes the head's host keys at first boot and the boot script prints the public one on
    # the serial console, which GetConsoleOutput returns: no host private key in the user data
    # (readable with ec2:DescribeInstanceAttribute), and nothing trusted on first use.
    head_host_key_file = SYSTEM_HOST_KEY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.region = self.params.region or self.config.region
        if not self.region:
            raise SpecError("AWS: no region. Fix: pass sky.AWS(region='us-east-1') or set provider.cluster.region")
        # One EC2 client for every thread of this cluster: clients are thread-safe to use (not to
        # create, hence the lock), and a shared client shares botocore's adaptive rate limiter, so
        # 64 concurrent creates slow down together under RequestLimitExceeded instead of each
        # retrying on its own until one gives up (measured: bench/bench_launch.py).
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._images: dict[tuple[str, str | None], network.BootImage] = {}
        self._images_lock = threading.Lock()

    @property
    def ec2(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = session_for(self.config.profile, self.region).client("ec2", config=retry_config())
            return self._client

    # -- every cluster (skyward-ray status / down / gc) ------------------------------------------
    @classmethod
    def list_clusters(cls, config: AWS) -> list[ClusterListing]:  # type: ignore[override]
        """Every skyward cluster in the config's region(s), found by the `skyward/cluster` tag alone:
        instances in any state but terminated, security groups and key pairs left behind."""
        return list_clusters(config)

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Credentials, subnet, image, security group, key pair. All or nothing: a failure removes what it made."""
        if not self.params.instance_type:
            raise SpecError("AWS: no instance type; set provider.cluster.instance_type or node_config.InstanceType")
        check_credentials(session_for(self.config.profile, self.region))
        # SSH from the driver's own address only; a driver inside the VPC (driver_security_group) needs none
        ssh_cidr = self.config.ssh_cidr or (None if self.config.driver_security_group else network.driver_public_cidr())
        ec2, name = self.ec2, self.cluster_name
        try:
            with aws_errors("prepare the network, image and key pair", self.region):
                subnet = network.choose_subnet(ec2, self.region, self.params.zone, self.config.vpc_id,
                                               self.config.subnet_id)
                image = self._image(self.params.instance_type, self.config.ami)
                group = network.security_group(ec2, name, subnet["VpcId"], ssh_cidr,
                                               self.config.driver_security_group)
                key_name = network.import_key_pair(ec2, name, self.params.ssh_public_key)
        except BaseException:
            with contextlib.suppress(Exception):
                network.delete_cluster_resources(ec2, name, timeout=30)
            raise
        return {"subnet_id": subnet["SubnetId"], "vpc_id": subnet["VpcId"], "zone": subnet["AvailabilityZone"],
                "ami": image.image_id, "ami_architecture": image.architecture, "root_device": image.root_device,
                "security_group_id": group,
                "key_name": key_name}

    def cleanup(self) -> None:
        """Once every instance is terminated (waits for it), delete the security group and key pair."""
        with aws_errors("remove the cluster's security group and key pair", self.cluster_name):
            ids = [m.instance_id for m in self.describe()]
            if ids:
                self.ec2.get_waiter("instance_terminated").wait(
                    InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
            network.delete_cluster_resources(self.ec2, self.cluster_name)

    # -- machines -------------------------------------------------------------------------------
    def launch(self, request: MachineRequest) -> Machine:
        """One `run_instances` call (MinCount=MaxCount=1), booting from the request's user data."""
        [machine] = self._run_instances(request, 1)
        return machine

    def launch_many(self, request: MachineRequest, count: int) -> list[Machine]:
        """One `run_instances` call for `count` identical workers (MinCount=MaxCount=count: all or none,
        so a short zone refuses the whole batch with InsufficientInstanceCapacity and the next offer
        is tried). EC2's RunInstances request bucket refills at 2 a second, its instance bucket at
        1000; one call per node would take a 256-node pool two minutes of throttling."""
        return self._run_instances(request, count)

    def _run_instances(self, request: MachineRequest, count: int) -> list[Machine]:
        params, prepared, node_config = self.params, self.prepared, request.node_config
        instance_type = node_config.get("InstanceType") or params.instance_type
        market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType") or (
            params.head_market if request.role == "head" and params.head_market else params.market)
        tags = {**request.tags, names.CLUSTER: self.cluster_name}
        tags.setdefault("Name", f"{self.cluster_name}-{request.index}" if count == 1 else
                        f"{self.cluster_name}-{request.index}-to-{request.index + count - 1}")
        image = self._launch_image(instance_type, node_config.get("ImageId"))
        run: dict[str, Any] = {
            "ImageId": image.image_id,
            "InstanceType": instance_type,
            "MinCount": count,
            "MaxCount": count,
            "SubnetId": node_config.get("SubnetId") or prepared["subnet_id"],
            "SecurityGroupIds": [prepared["security_group_id"]],
            "KeyName": prepared["key_name"],
            "UserData": user_data(request),
            "InstanceInitiatedShutdownBehavior": "terminate",
            # One token per launch call and attempt: a retry after a lost response finds the same instances.
            **({"ClientToken": request.client_token} if request.client_token else {}),
            # IMDSv2 at hop limit 1: the node itself reads its metadata; a container on it (one hop more) cannot
            # read the user data (the boot payload) or the instance's role credentials.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "TagSpecifications": network.tag_spec("instance", tags) + network.tag_spec(
                "volume", {names.CLUSTER: self.cluster_name}),
        }
        if market == "spot":
            run["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        if self.config.disk_gb:
            if not image.root_device:
                raise ProvisioningError(f"AWS: image {image.image_id} maps no root device, so its size cannot be set. "
                                        "Fix: leave sky.AWS(disk_gb=...) unset, or use another image")
            run["BlockDeviceMappings"] = [{"DeviceName": image.root_device, "Ebs": {
                "VolumeSize": self.config.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}]
        where = f"{instance_type} {market} in {prepared.get('zone') or self.region}"
        with aws_errors("launch an instance" if count == 1 else f"launch {count} instances", where):
            instances = self.ec2.run_instances(**run)["Instances"]
        return sorted((instance_machine(i) for i in instances), key=lambda m: int(m.tags.get(names.NODE_INDEX, 0)))

    def _image(self, instance_type: str, ami: str | None) -> network.BootImage:
        """The image `instance_type` boots (`network.boot_image`), looked up once per type and image."""
        key = (instance_type, ami)
        with self._images_lock:
            if key not in self._images:
                with aws_errors("find the image", f"{ami or 'default'} for {instance_type}"):
                    self._images[key] = network.boot_image(self.ec2, instance_type, ami)
            return self._images[key]

    def _launch_image(self, instance_type: str, node_image: str | None) -> network.BootImage:
        """The prepared image, unless the node's config names another image or instance type (a
        `ray up` node type): then that pair is looked up and checked the same way."""
        prepared = self.prepared
        if not node_image and instance_type == self.params.instance_type and "root_device" in prepared:
            return network.BootImage(prepared["ami"], prepared.get("ami_architecture", ""), prepared["root_device"])
        return self._image(instance_type, node_image or self.config.ami or (
            prepared["ami"] if instance_type == self.params.instance_type else None))

    def describe(self) -> list[Machine]:
        found = []
        filters = [{"Name": f"tag:{names.CLUSTER}", "Values": [self.cluster_name]}]
        with aws_errors("describe instances", self.cluster_name):
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    found.extend(instance_machine(i) for i in reservation["Instances"])
        return found

    def end_machines(self, instance_ids: list[str]) -> None:
        """One TerminateInstances call (never stop: a stopped instance keeps its disk billing and its
        tags); one unknown id fails the whole call with `NotFoundError`."""
        with aws_errors("terminate instances", ", ".join(instance_ids)):
            self.ec2.terminate_instances(InstanceIds=instance_ids)

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        for attempt in range(NOT_FOUND_RETRIES + 1):
            try:
                with aws_errors("tag an instance", instance_id):
                    self.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
                return
            except NotFoundError:  # right after the create: still pending, not gone
                if attempt == NOT_FOUND_RETRIES:
                    raise
                time.sleep(1.0 + attempt)

    def ssh_endpoint(self, machine: Machine) -> SSHEndpoint:
        if not machine.public_ip:
            raise ProvisioningError(
                f"AWS: instance {machine.instance_id} has no public address, so this driver cannot reach it. Fix: use a "
                "subnet that assigns public addresses (sky.AWS(subnet_id=...)), or run the driver inside the VPC")
        return SSHEndpoint(host=machine.public_ip, port=22, user=self.config.ssh_user)

    def read_log(self, instance_id: str, lines: int) -> str:
        """The instance's console output (cloud-init prints the boot script's output there)."""
        with aws_errors("read the console output", instance_id):
            return self.ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""


def user_data(request: MachineRequest) -> bytes:
    """The boot script and a `bootcmd` that powers a rebooted instance off (MIME multi-part, as
    cloud-init reads it), gzip-compressed. cloud-init deletes the image's host keys (baked into the AMI, the same on
    every instance of it) and makes a fresh ed25519 one, which the head's script prints on the
    console (`Cloud.printed_host_key`: no host key is ever made on the driver).

    Why gzip: EC2 counts the raw user data against its 16 KB, and a head's script (its three packed
    node programs, the uv bootstrap, the Image's lists) is near that uncompressed. cloud-init
    decompresses gzip'd user data before anything else ("User-data formats: Gzip compressed
    content ... useful because user-data size may be limited based on cloud platform", cloud-init's
    documentation); the limit then holds what the compressed payload takes."""
    import gzip
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    cloud_config: dict[str, Any] = {"bootcmd": [["sh", "-c", _REBOOT_GUARD]],
                                    "ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519"]}
    config = "#cloud-config\n" + yaml.safe_dump(cloud_config)
    message = MIMEMultipart()
    message.attach(MIMEText(config, "cloud-config"))
    message.attach(MIMEText(request.boot_script, "x-shellscript"))
    data = gzip.compress(message.as_string().encode(), compresslevel=9, mtime=0)
    if len(data) > USER_DATA_LIMIT:
        raise SpecError(f"AWS: this node's boot payload is {len(data)} bytes gzipped; EC2 takes at most "
                        f"{USER_DATA_LIMIT} bytes of user data. Fix: make the Image smaller (env values, pip and apt "
                        "lists); nothing was launched")
    return data
