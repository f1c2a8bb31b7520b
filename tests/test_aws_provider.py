"""The AWS node provider against a simulated region (moto + fault front), real boto3: no Ray boot here.

Offers (live vs snapshot), prepare/teardown (security group, key pair, AMI, subnet), what each
RunInstances really sends, error mapping, missing credentials, and the provider under Ray's own
cluster launcher (`ray up`/`ray down` through `ray.autoscaler.sdk`).
"""

from __future__ import annotations

import glob
import os
import re
import stat
import tempfile
import time

import boto3
import pytest
import yaml
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND

import skyward_ray as sky
from node_providers.aws import AWSNodeProvider
from node_providers.aws import session as aws_session
from skyward_ray import names
from skyward_ray.cluster import provisioning
from skyward_ray.planning.accelerators import parse_accelerator
from tests.provider_helpers import cluster_name, cluster_params, create
from tests.simaws import SIM_SETTINGS, Fault, aws_environment, simulated_aws
from tests.simaws.hosts import cloud_init_text, split_user_data

REGION = "us-east-1"
NO_CREDENTIALS_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                      "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@pytest.fixture(scope="module")
def region():
    with simulated_aws(REGION) as (sim, hosts):
        yield sim, hosts
        assert hosts.stop() == [], "a simulated machine was still running when the module ended"


@pytest.fixture
def sim(region, tmp_path):
    sim, hosts = region
    yield sim
    sim.clear_faults()
    assert hosts.wait_idle() == [], "a simulated machine was left running"


def t4_offer(sim, market="spot", instance_type="g4dn.xlarge"):
    offers = sky.AWS(region=REGION, live_offers_ttl=0).list_offers(parse_accelerator("T4"))
    return next(o for o in offers if o.market == market and o.instance_type == instance_type)


def provider_for(sim, tmp_path, offer, name=None):
    """Prepare a cluster the way the launcher does; returns (provider, cluster name)."""
    name = name or cluster_name()
    config = sky.AWS(region=REGION, key_dir=str(tmp_path), ssh_cidr="198.18.0.1/32", **SIM_SETTINGS)
    return provisioning.load_node_provider(config, cluster_params(offer, nodes=2), name), name


# -- offers ------------------------------------------------------------------------------------------
def test_without_credentials_offers_come_from_the_snapshot_fast_and_without_a_request(sim):
    before = len(sim.calls())
    with aws_environment(NO_CREDENTIALS_ENV):
        started = time.monotonic()
        offers = sky.AWS(region=REGION, live_offers_ttl=0).list_offers(parse_accelerator("T4"))
        took = time.monotonic() - started
    assert offers and {o.price_source for o in offers} == {"snapshot:aws"}
    # no wait on the network: a request or a credential lookup that went out would take seconds (botocore's
    # timeouts); not a speed target (those live in bench/), and 1 s was missed by 10 ms on a loaded CI box
    assert took < 5.0
    assert len(sim.calls()) == before, "no request may be sent without credentials"


def test_with_credentials_spot_prices_are_live_and_on_demand_falls_back_to_the_snapshot(sim):
    offers = sky.AWS(region=REGION, live_offers_ttl=0).list_offers(parse_accelerator("T4"))
    spot = [o for o in offers if o.market == "spot"]
    on_demand = [o for o in offers if o.market == "on-demand"]
    assert spot and on_demand
    assert {o.price_source for o in spot} == {"live:aws"}
    assert {o.price_source for o in on_demand} == {"snapshot:aws"}  # the Pricing API answered 404
    assert sim.calls("GetProducts"), "the Pricing API is tried first"
    assert all(o.zone and o.price_as_of is not None and 0 < o.price < o.on_demand_price for o in spot)
    # availability comes from DescribeInstanceTypeOfferings: us-east-1e sells no g4dn.xlarge in the simulator
    zones = {o.zone for o in spot if o.instance_type == "g4dn.xlarge"}
    offered = {x["Location"] for x in sim.client().describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": ["g4dn.xlarge"]}])["InstanceTypeOfferings"]}
    assert zones == offered
    assert {o.accelerator for o in offers} == {"T4"} and all(o.count >= 1 for o in offers)


SPOT_HISTORY = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>r</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet><nextToken></nextToken>
</DescribeSpotPriceHistoryResponse>"""
SPOT_ITEM = ("<item><instanceType>g4dn.xlarge</instanceType><productDescription>Linux/UNIX</productDescription>"
             "<spotPrice>{price}</spotPrice><timestamp>2026-11-28T00:00:00.000Z</timestamp>"
             "<availabilityZone>{zone}</availabilityZone></item>")


def test_implausible_spot_prices_are_listed_and_the_plan_rejects_them_saying_why(sim):
    items = "".join(SPOT_ITEM.format(price=p, zone=z) for p, z in
                    [("0.0", "us-east-1a"), ("0.526", "us-east-1b"), ("9.99", "us-east-1c"), ("0.1803", "us-east-1d")])
    with sim.fault(Fault("DescribeSpotPriceHistory", body=SPOT_HISTORY.format(items=items))):
        config = sky.AWS(region=REGION, live_offers_ttl=0)
        offers = config.list_offers(parse_accelerator("T4"))
        plan = sky.plan(provider=config, accelerator="T4", allocation="spot")
    spot = sorted((o.zone, o.price) for o in offers if o.market == "spot" and o.instance_type == "g4dn.xlarge")
    assert spot == [("us-east-1a", 0.0), ("us-east-1b", 0.526), ("us-east-1c", 9.99), ("us-east-1d", 0.1803)]
    ranked = [(o.zone, o.price) for o in plan.offers if o.instance_type == "g4dn.xlarge"]
    assert ranked == [("us-east-1d", 0.1803)]  # 0, = on-demand (0.526) and above it are no discount
    reasons = {r.offer.zone: (r.filter, r.reason) for r in plan.rejected
               if r.offer.instance_type == "g4dn.xlarge" and r.offer.market == "spot"}
    assert reasons["us-east-1a"] == ("no_discount", "spot price $0.00 is not a real price (feed quirk); no spot entry")
    assert reasons["us-east-1b"] == ("no_discount", "spot $0.53/h is not below on-demand $0.53/h; no discount")
    assert reasons["us-east-1c"][0] == "no_discount" and "not below on-demand" in reasons["us-east-1c"][1]


# -- prepare / create / teardown ---------------------------------------------------------------------
def test_prepare_makes_exactly_the_specified_security_group_and_a_key_pair_and_teardown_removes_them(sim, tmp_path):
    offer = t4_offer(sim)
    provider, name = provider_for(sim, tmp_path, offer)
    cfg = provider.provider_config["prepared"]
    [group] = sim.security_groups(cluster=name)
    assert group["GroupId"] == cfg["security_group_id"] and group["VpcId"] == sim.vpc_id
    rules = sorted(group["IpPermissions"], key=lambda r: r["IpProtocol"])
    assert len(rules) == 2
    everything, ssh = rules
    assert everything["IpProtocol"] == "-1" and everything["IpRanges"] == []
    assert [p["GroupId"] for p in everything["UserIdGroupPairs"]] == [group["GroupId"]]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == ["198.18.0.1/32"] and ssh["UserIdGroupPairs"] == []
    assert not any(r.get("CidrIp") == "0.0.0.0/0" for rule in group["IpPermissions"] for r in rule["IpRanges"])
    # fresh random names (a predictable one could be pre-created by someone else), tagged with the cluster
    assert re.fullmatch(rf"skyward-{name}-[0-9a-f]{{8}}", group["GroupName"])
    assert [k["KeyName"] for k in sim.key_pairs()] == [cfg["key_name"]] and cfg["key_name"] != group["GroupName"]
    assert re.fullmatch(rf"skyward-{name}-[0-9a-f]{{8}}", cfg["key_name"])
    key_file = tmp_path / name / "id_ed25519"  # made here; only its public half went to AWS
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert not sim.calls("CreateKeyPair")
    assert sim.imported_public_key(cfg["key_name"]) == (tmp_path / name / "id_ed25519.pub").read_text().strip()
    assert cfg["ami"] == sim.ami_id, "the default AMI is the newest AWS Deep Learning Base AMI"
    assert cfg["subnet_id"] == sim.subnets[offer.zone], "a spot offer launches in its own zone"
    provider.cleanup_cluster_resources()
    assert sim.security_groups(cluster=name) == [] and sim.key_pairs() == [] and not key_file.exists()


def test_run_instances_sends_market_imdsv2_shutdown_and_tags_and_state_lives_in_tags(sim, tmp_path):
    provider, name = provider_for(sim, tmp_path, t4_offer(sim, "spot"))
    since = time.time()
    try:
        [head] = create(provider, name, index=0)
        [worker] = create(provider, name, NODE_KIND_WORKER,
                          node_config={"InstanceMarketOptions": {"MarketType": "on-demand"}})
        spot_call, od_call = sim.calls("RunInstances", since=since)
        for call in (spot_call, od_call):
            p = call.params
            assert p["MinCount"] == p["MaxCount"] == "1"
            assert p["MetadataOptions.HttpTokens"] == "required"
            # hop limit 1: a container on the node cannot reach IMDS (user data, role credentials)
            assert p["MetadataOptions.HttpPutResponseHopLimit"] == "1"
            assert p["InstanceInitiatedShutdownBehavior"] == "terminate"
            assert p["SecurityGroupId.1"] == provider.provider_config["prepared"]["security_group_id"]
        assert spot_call.params["InstanceMarketOptions.MarketType"] == "spot"
        assert spot_call.params["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
        assert not any(k.startswith("InstanceMarketOptions") for k in od_call.params)
        described = {i["InstanceId"]: i for i in sim.instances(cluster=name)}
        assert described[head].get("InstanceLifecycle") == "spot" and "InstanceLifecycle" not in described[worker]
        # all state is in EC2 tags: a fresh provider (as Ray's autoscaler makes) sees the same nodes
        again = AWSNodeProvider(provider.provider_config, name)
        assert again.non_terminated_nodes({}) == [head, worker]
        assert again.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
        tags = again.node_tags(worker)
        assert tags[names.CLUSTER] == name and tags[names.NODE_INDEX] == "1"
        assert tags[names.OFFER].startswith("g4dn.xlarge.") and tags["ray-launch-request"] == "r1"
        assert again.internal_ip(head).startswith("10.231.")  # the simulated VPC
        script = sim.client().describe_instance_attribute(InstanceId=worker, Attribute="userData")["UserData"]["Value"]
        import base64

        text = cloud_init_text(base64.b64decode(script))
        assert "shutdown -h now" in text and "X-aws-ec2-metadata-token" in text
        assert "${SKYWARD_INSTANCE_ID:-" not in text  # the id and address come from IMDSv2 only
        head_data = sim.client().describe_instance_attribute(InstanceId=head, Attribute="userData")["UserData"]["Value"]
        config, head_script = split_user_data(base64.b64decode(head_data))
        # no host key made here: the head's cloud-init makes a fresh one, which its script prints for the driver
        assert not (tmp_path / name / "ssh_host_ed25519_key").exists() and "ssh_keys" not in config
        assert "--head" in head_script and "BEGIN SSH HOST KEY KEYS" in head_script
        assert "BEGIN SSH HOST KEY KEYS" not in text, "only the head prints the host key the driver pins"
        assert f"--address={again.internal_ip(head)}:6379" in text
    finally:
        provider.terminate_nodes(provider.non_terminated_nodes({}))
        provider.cleanup_cluster_resources()
    assert sim.live_instances(cluster=name) == [] and sim.security_groups(cluster=name) == []


@pytest.mark.parametrize("code, error", [
    ("InsufficientInstanceCapacity", sky.CapacityError), ("SpotMaxPriceTooLow", sky.CapacityError),
    ("MaxSpotInstanceCountExceeded", sky.SpotQuotaError), ("Unsupported", sky.CapacityError),
    ("UnauthorizedOperation", sky.AuthError), ("AuthFailure", sky.AuthError),
    ("VcpuLimitExceeded", sky.QuotaError), ("InstanceLimitExceeded", sky.QuotaError),
])
def test_aws_errors_become_typed_errors(region, code, error):
    sim, _ = region
    sim.inject(Fault("DescribeRegions", code=code))
    try:
        with pytest.raises(error, match=code), aws_session.aws_errors("launch", "here"):
            boto3.client("ec2").describe_regions()  # through the environment, as the provider's clients
    finally:
        sim.clear_faults()


def test_capacity_error_on_run_instances_creates_nothing_and_throttling_is_retried(sim, tmp_path):
    provider, name = provider_for(sim, tmp_path, t4_offer(sim, "on-demand"))
    try:
        with sim.fault(Fault("RunInstances", code="InsufficientInstanceCapacity",
                             message="We currently do not have sufficient g4dn.xlarge capacity")):
            with pytest.raises(sky.CapacityError, match="sufficient g4dn.xlarge capacity"):
                create(provider, name)
        assert sim.live_instances(cluster=name) == []
        with sim.fault(Fault("RunInstances", code="RequestLimitExceeded", status=503, times=2)) as throttle:
            created = create(provider, name)
        assert throttle.hits == 2 and len(created) == 1, "botocore retried the throttled call with backoff"
    finally:
        provider.terminate_nodes(provider.non_terminated_nodes({}))
        provider.cleanup_cluster_resources()


EMPTY_LISTING = ('<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse '
                 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><reservationSet/>'
                 '</DescribeInstancesResponse>')


def test_a_just_created_instance_missing_from_the_listing_is_pending_not_gone(sim, tmp_path):
    provider, name = provider_for(sim, tmp_path, t4_offer(sim, "on-demand"))
    try:
        [head] = create(provider, name, index=0)
        with sim.fault(Fault("DescribeInstances", body=EMPTY_LISTING)):  # EC2's eventual consistency
            assert provider.non_terminated_nodes({}) == []
            assert not provider.is_terminated(head), "NotFound right after a create means still pending"
            assert provider.is_terminated("i-0123456789abcdef0"), "an id this provider never created is gone"
        with sim.fault(Fault("CreateTags", code="InvalidInstanceID.NotFound", times=2,
                             message=f"The instance ID '{head}' does not exist")) as not_yet:
            provider.set_node_tags(head, {"extra": "yes"})
        assert not_yet.hits == 2 and provider.node_tags(head)["extra"] == "yes"
    finally:
        provider.terminate_nodes(provider.non_terminated_nodes({}))
        provider.cleanup_cluster_resources()


def test_a_retried_create_carries_the_same_idempotency_token_so_it_starts_no_second_instance(sim, tmp_path):
    provider, name = provider_for(sim, tmp_path, t4_offer(sim, "on-demand"))
    since = time.time()
    try:
        with sim.fault(Fault("RunInstances", code="InternalError", status=500, times=1,
                             when=lambda params: "ClientToken" in params)):
            create(provider, name, index=0)
        calls = sim.calls("RunInstances", since=since)
        assert len(calls) == 2 and calls[0].params["ClientToken"] == calls[1].params["ClientToken"]
        assert calls[0].params["ClientToken"].startswith(f"{name}-0-")
        assert len(sim.live_instances(cluster=name)) == 1
    finally:
        provider.terminate_nodes(provider.non_terminated_nodes({}))
        provider.cleanup_cluster_resources()


def test_missing_credentials_give_one_clear_auth_error_before_anything_is_created(sim, tmp_path):
    before = len(sim.calls())
    with aws_environment({**NO_CREDENTIALS_ENV, "AWS_ENDPOINT_URL": sim.endpoint, "AWS_DEFAULT_REGION": REGION}):
        with pytest.raises(sky.AuthError) as caught:
            with sky.Compute(provider=sky.AWS(region=REGION, key_dir=str(tmp_path), ssh_cidr="198.18.0.1/32",
                                              **SIM_SETTINGS),
                             accelerator="T4", nodes=2):
                pass
    message = str(caught.value)
    assert "AuthError" in message and "no usable credentials" in message and "aws configure" in message
    assert message.count("AuthError") == 1, "an auth error blocks the provider: no second offer is tried"
    assert len(sim.calls()) == before and sim.security_groups() == [] and sim.key_pairs() == []


# -- Ray's own tooling -------------------------------------------------------------------------------
def test_ray_up_and_down_through_the_autoscaler_sdk(sim, tmp_path, region):
    """`type: external` YAML → Ray's validation, bootstrap, head creation (booted by the simulator), teardown."""
    from ray.autoscaler import sdk

    _, hosts = region
    name = f"skyyaml{time.monotonic_ns() % 10**6}"
    lists = ["cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
             "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    config = {
        "cluster_name": name, "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "external", "module": "node_providers.aws.AWSNodeProvider",
                     "cloud": {"region": REGION, "key_dir": str(tmp_path), "ssh_cidr": hosts.ssh_cidr,
                               **{k: v for k, v in SIM_SETTINGS.items() if k != "simulate_accelerators"}},
                     "cluster": {"market": "spot"}},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {"node_config": {"InstanceType": "g4dn.xlarge"}, "resources": {}, "min_workers": 0, "max_workers": 0},
            "worker": {"node_config": {"InstanceType": "g4dn.xlarge"}, "resources": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "head", "file_mounts": {}, "file_mounts_sync_continuously": False,
        **{key: [] for key in lists},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.time()
    try:
        sdk.create_or_update_cluster(str(path), no_config_cache=True)
        [head] = sim.live_instances(cluster=name)
        assert head.get("InstanceLifecycle") == "spot"
        assert {"Key": "ray-node-type", "Value": "head"} in head["Tags"]
        deadline = time.monotonic() + 60
        while head["InstanceId"] not in hosts.sim_hosts and time.monotonic() < deadline:
            time.sleep(0.2)  # the simulator boots what it sees running
        machine = hosts.sim_hosts[head["InstanceId"]]  # the head's address is private: look from inside the VPC
        while not machine.tcp_connects(head["PrivateIpAddress"], 6379) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert machine.tcp_connects(head["PrivateIpAddress"], 6379), hosts.log(head["InstanceId"])
    finally:
        sdk.teardown_cluster(str(path))
        for cache in glob.glob(os.path.join(tempfile.gettempdir(), "ray-config-*")):
            if os.path.getmtime(cache) >= started and name in open(cache).read():
                os.unlink(cache)
    assert sim.live_instances(cluster=name) == []
    assert sim.security_groups(cluster=name) == [] and sim.key_pairs() == []
