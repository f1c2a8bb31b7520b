"""AWS's first contact: what EC2 documents and the simulated region now holds the provider to.

- user data is at most 16 KB raw (the fake refuses more, as EC2 does; the provider refuses before launch);
- the root volume is the AMI's own root device (DescribeImages RootDeviceName), not a hard-coded `/dev/sda1`;
- ARM instance types (g5g) boot the ARM64 Deep Learning AMI, and an image of the wrong architecture is
  refused with the reason before anything is launched;
- EC2's documented throttling (token buckets, `RequestLimitExceeded`): a pool still launches and ends.
"""

from __future__ import annotations

import secrets
import time

import boto3
import pytest
from botocore.exceptions import ClientError

import skyward_ray as sky
from node_providers.aws import AWSNodeProvider
from node_providers.aws.cloud import AWSCloud, user_data
from skyward_ray.cluster import provisioning
from skyward_ray.cluster.contract import MachineRequest
from skyward_ray.node import startup_script
from tests.provider_helpers import cluster_name, cluster_params, create
from tests.simaws import SIM_SETTINGS
from tests.simaws.server import USER_DATA_LIMIT
from tests.simaws.throttling import Throttling, request_bucket
from tests.test_aws_provider import region, sim  # noqa: F401  (the simulated region, shared fixtures)
from tests.timeouts import SIM_BOOT_TIMEOUT

REGION = "us-east-1"


def provider_for(tmp_path, instance_type: str, **config) -> tuple[AWSNodeProvider, str]:
    name = cluster_name()
    aws = sky.AWS(region=REGION, key_dir=str(tmp_path), ssh_cidr="198.18.0.1/32", **SIM_SETTINGS, **config)
    params = cluster_params(instance_type=instance_type, market="on-demand", region=REGION, nodes=1)
    return provisioning.load_node_provider(aws, params, name), name


def end(provider: AWSNodeProvider) -> None:
    provider.terminate_nodes(provider.non_terminated_nodes({}))
    provider.cleanup_cluster_resources()


# -- user data ---------------------------------------------------------------------------------------
def test_the_simulated_ec2_refuses_user_data_over_16_kb_as_ec2_does(sim):
    ec2 = boto3.client("ec2")  # through the environment, as the provider's clients
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=sim.ami_id, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1,
                          UserData="#!/bin/bash\n" + "#" * USER_DATA_LIMIT)
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "16384 bytes" in refused.value.response["Error"]["Message"]
    assert sim.live_instances() == []


def test_a_boot_payload_over_the_limit_is_refused_before_launch_and_a_real_head_fits_with_room():
    # the limit holds the gzip'd payload: a script that does not compress (random hex) is over it
    request = MachineRequest(index=0, role="head", tags={}, boot_script="#" + secrets.token_hex(USER_DATA_LIMIT))
    with pytest.raises(sky.SpecError, match="at most 16384 bytes of user data"):
        user_data(request)
    # a head as AWS renders it: its secrets come after boot (the secret service rides in its script)
    head = startup_script.render(startup_script.NodeBoot(
        role="head", cluster_name="sky-abcdef-123456", auth_token="ab" * 32, lifetime=3600, market_type="spot",
        instance_id_shell=AWSCloud.instance_id_shell, node_ip_shell=AWSCloud.node_ip_shell, secrets_after_boot=True,
        shutdown_command=AWSCloud.shutdown_command, pip=["numpy==2.1.0"], apt=["ffmpeg"], print_host_key=AWSCloud.head_host_key_file,
        labels={"skyward/provider": "aws", "skyward/offer": "p5.48xlarge.spot.us-east-1a", "skyward/node-index": "0"}))
    size = len(user_data(MachineRequest(index=0, role="head", tags={}, boot_script=head)))
    assert size < USER_DATA_LIMIT * 0.8, f"a head's user data is {size} bytes: near EC2's 16 KB"


# -- the image: root device and architecture -----------------------------------------------------------
def test_the_root_volume_is_the_images_own_root_device(sim, tmp_path):
    """Before: `/dev/sda1` for every image; an Amazon Linux image's root is `/dev/xvda` (the volume
    size would have gone to a second, empty volume)."""
    ami = sim.register_image("my-amazon-linux-gpu", "x86_64", "/dev/xvda")
    provider, name = provider_for(tmp_path, "g4dn.xlarge", ami=ami, disk_gb=200)
    since = time.time()
    try:
        create(provider, name)
        [call] = sim.calls("RunInstances", since=since)
        assert call.params["ImageId"] == ami
        assert call.params["BlockDeviceMapping.1.DeviceName"] == "/dev/xvda"
        assert call.params["BlockDeviceMapping.1.Ebs.VolumeSize"] == "200"
    finally:
        end(provider)


def test_an_arm_instance_type_gets_the_arm64_deep_learning_ami(sim, tmp_path):
    """Before: the x86 AMI's name was searched with architecture arm64, and prepare failed."""
    provider, name = provider_for(tmp_path, "g5g.xlarge")
    try:
        assert provider.provider_config["prepared"]["ami"] == sim.arm_ami_id
        assert provider.provider_config["prepared"]["root_device"] == "/dev/sda1"
    finally:
        provider.cleanup_cluster_resources()


def test_an_image_the_instance_type_cannot_run_is_refused_with_the_reason_before_anything_is_made(sim, tmp_path):
    since = time.time()
    with pytest.raises(sky.CapacityError, match=r"g5g.xlarge runs arm64 and image ami-\w+ is x86_64"):
        provider_for(tmp_path, "g5g.xlarge", ami=sim.ami_id)
    assert not sim.calls("RunInstances", since=since) and not sim.calls("CreateSecurityGroup", since=since)
    assert sim.key_pairs() == []


# -- throttling --------------------------------------------------------------------------------------
def test_the_throttling_buckets_are_ec2s_documented_ones():
    now = [0.0]
    throttling = Throttling(clock=lambda: now[0])
    assert [throttling.admit("RunInstances", {"MaxCount": "1"}) for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.5  # RunInstances refills 2 tokens a second
    assert throttling.admit("RunInstances", {"MaxCount": "1"}) and not throttling.admit("RunInstances", {})
    assert throttling.throttled == {"RunInstances": 2}
    assert request_bucket("DescribeInstances", {})[1] == (50.0, 10.0)  # unfiltered, unpaginated: the small bucket
    assert request_bucket("DescribeInstances", {"Filter.1.Name": "tag:x"}) == ("DescribeInstances", (100.0, 20.0))
    assert request_bucket("AuthorizeSecurityGroupIngress", {})[1] == (50.0, 5.0)
    assert request_bucket("TerminateInstances", {})[1] == (100.0, 5.0)
    big = Throttling(clock=lambda: now[0])
    assert big.admit("RunInstances", {"MaxCount": "1000"}) and not big.admit("RunInstances", {"MaxCount": "1"})


@sky.function
def square(x: int) -> int:
    return x * x


def test_a_pool_launches_and_ends_with_ec2_throttling_on(region, tmp_path):
    """Buckets at a tenth of AWS's (RunInstances: 1 token, one more every 5 s): the head's and the
    worker's creates, the listings and the teardown meet RequestLimitExceeded and get through."""
    sim, hosts = region
    throttling = sim.throttle(scale=0.1)
    try:
        with sky.Compute(provider=sky.AWS(region=REGION, key_dir=str(tmp_path), ssh_cidr=hosts.ssh_cidr,
                                          **SIM_SETTINGS),
                         accelerator="T4", nodes=2, allocation="on-demand", boot_timeout=SIM_BOOT_TIMEOUT) as pool:
            assert [square(x) >> pool for x in (2, 3)] == [4, 9]
            name = pool.name
    finally:
        sim.throttle_off()
    assert throttling.throttled.get("RunInstances", 0) >= 1, throttling.throttled
    assert sim.live_instances(cluster=name) == [] and sim.security_groups(cluster=name) == []
    assert hosts.wait_idle() == []
