"""Simulated AWS in the conformance suite: moto behind the fault front, every instance booted as
an isolated machine by the host simulator. The driver carries recognisable fake credentials."""

from __future__ import annotations

import base64
import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import skyward_ray as sky
from skyward_ray.cluster.contract import ClusterParams
from tests.conformance import Harness
from tests.simaws import SIM_SETTINGS, Fault, aws_environment, simulated_aws
from tests.simaws.hosts import cloud_init_text
from tests.timeouts import SIM_BOOT_TIMEOUT

REGION = "us-east-1"
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIASKYWARDCONFORM042", "AWS_SECRET_ACCESS_KEY": "skywardConformSecretDoNotLeak0123456789",
           "AWS_SESSION_TOKEN": "skywardConformSessionTokenDoNotLeak"}


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    with simulated_aws(REGION) as (sim, hosts), aws_environment({**sim.client_env(), **SECRETS}), \
            tempfile.TemporaryDirectory(prefix="keys-") as keys:
        config = sky.AWS(region=REGION, key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
        offer = next(o for o in config.list_offers(sky.accelerators.T4()) if o.instance_type == "g4dn.xlarge"
                     and o.market == "on-demand")

        def params(nodes: int = 1, **kw: Any) -> ClusterParams:
            return ClusterParams(auth_token="t" * 64, nodes=nodes, instance_type=offer.instance_type,
                                 market=offer.market, region=REGION, offer=offer.label, accelerator="T4",
                                 accelerator_count=offer.count, **kw)

        foreign: list[str] = []

        def billable() -> dict[str, list[str]]:
            return {"instances": sorted(i["InstanceId"] for i in sim.live_instances()),
                    "security_groups": sorted(g["GroupName"] for g in sim.security_groups()),
                    "key_pairs": sorted(k["KeyName"] for k in sim.key_pairs()),
                    # simulated machines skyward started (a foreign instance's empty boot ends at once)
                    "machines": sorted(set(hosts.running()) - set(foreign))}

        def boot_payloads() -> list[str]:
            return [cloud_init_text(base64.b64decode(call.params["UserData"]))
                    for call in sim.calls("RunInstances") if "UserData" in call.params]

        @contextlib.contextmanager
        def fail_capacity(instance_type: str) -> Iterator[Fault]:
            with sim.fault(Fault("RunInstances", code="InsufficientInstanceCapacity",
                                 when=lambda p: p.get("InstanceType") == instance_type,
                                 message=f"We currently do not have sufficient {instance_type} capacity in the "
                                         "Availability Zone you requested")) as fault:
                yield fault

        def foreign_machine() -> str:
            image = sim.client().describe_images()["Images"][0]["ImageId"]
            created = sim.client().run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                                 TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                                     {"Key": "Name", "Value": "someone-elses-server"}]}])
            foreign.append(created["Instances"][0]["InstanceId"])
            return foreign[-1]

        try:
            yield Harness(
                name="aws",
                config=config,
                params=params,
                accelerator="T4",
                billable=billable,
                boot_payloads=boot_payloads,
                secrets=list(SECRETS.values()),
                interrupt=sim.terminate,
                fail_capacity=fail_capacity,
                foreign_machine=foreign_machine,
                explain=lambda machine: f"{machine}, as its machine printed it:\n{hosts.log(machine)}",
                bare_machines=hosts.bare,
                compute_settings={"boot_timeout": SIM_BOOT_TIMEOUT},
            )
        finally:
            if foreign:
                sim.client().terminate_instances(InstanceIds=foreign)
