"""Each cloud's boot runner, as the cloud runs it, and the product's own way of learning who a machine is.

A simulated machine gets what its cloud's runner gives it and nothing of skyward's: no
`SKYWARD_INSTANCE_ID` / `SKYWARD_NODE_IP` (the local provider's own variables). So the provider's
shell snippets must find the machine's id and private address the way a real machine does:

- AWS: cloud-init runs user data as root with systemd's clean environment (PATH and LANG only, no
  HOME); the id and address come from IMDSv2 at 169.254.169.254 (a token first; a GET without
  one is refused with 401);
- RunPod: the container command (`dockerStartCmd` / `dockerArgs`) runs with `RUNPOD_POD_ID` and a
  pod-scoped `RUNPOD_API_KEY`;
- Vast.ai: `onstart` runs in the SSH launch mode with `CONTAINER_ID` and the instance-scoped
  `CONTAINER_API_KEY`.

Each probe also sets misleading `SKYWARD_*` values before it runs the provider's snippets: a
snippet that still preferred them (a simulator-only shortcut) reports the wrong machine.
"""

from __future__ import annotations

import time

import boto3
import requests

from node_providers.aws.cloud import AWSCloud
from node_providers.runpod.cloud import RunPodCloud
from node_providers.vastai.cloud import VastAICloud
from tests.simaws import simulated_aws
from tests.simrunpod import simulated_runpod
from tests.simvast import ask_row, simulated_vast
from tests.simvast.hosts import boot_command

DECOY_ID, DECOY_IP = "not-this-machine", "192.0.2.1"
IMDS = "http://169.254.169.254/latest"


def probe(id_shell: str, ip_shell: str, extra: list[str] | None = None) -> str:
    """A boot script that prints what the runner gave it, then what the provider's snippets find."""
    return "\n".join([
        "#!/bin/bash",
        'echo "probe-home=${HOME-<unset>}"',
        'echo "probe-lang=${LANG-<unset>}"',
        'echo "probe-path=${PATH-<unset>}"',
        'echo "probe-skyward-id=${SKYWARD_INSTANCE_ID-<unset>}"',
        'echo "probe-skyward-ip=${SKYWARD_NODE_IP-<unset>}"',
        *(extra or []),
        f"export SKYWARD_INSTANCE_ID={DECOY_ID} SKYWARD_NODE_IP={DECOY_IP}",
        f'echo "probe-id={id_shell}"',
        f'echo "probe-ip={ip_shell}"',
        "echo probe-done",
        "",
    ])


def probe_output(hosts, machine_id, timeout: float = 60) -> dict[str, str]:
    """The probe's `probe-<name>=<value>` lines from the machine's console, once it is done."""
    deadline = time.monotonic() + timeout
    while True:
        text = hosts.log(machine_id, 200)
        if "probe-done" in text.splitlines():
            break
        assert time.monotonic() < deadline, f"the probe did not finish: {text}\n{hosts.errors}"
        time.sleep(0.2)
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("probe-"):
            found[name[len("probe-"):]] = value
    return found


def test_aws_runs_user_data_as_cloud_init_does_and_the_node_learns_who_it_is_from_imdsv2():
    extra = [  # IMDSv2 is required: a GET without a token is refused; a token from PUT opens it
        f'echo "probe-v1={"$"}(curl -s -o /dev/null -w "%{{http_code}}" {IMDS}/meta-data/instance-id)"',
        f'echo "probe-no-ttl={"$"}(curl -s -o /dev/null -w "%{{http_code}}" -X PUT {IMDS}/api/token)"',
    ]
    script = probe(AWSCloud.instance_id_shell, AWSCloud.node_ip_shell, extra)
    with simulated_aws() as (sim, hosts):
        ec2 = boto3.client("ec2")
        [instance] = ec2.run_instances(
            ImageId=sim.ami_id, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1, UserData=script,
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        )["Instances"]
        try:
            seen = probe_output(hosts, instance["InstanceId"])
        finally:
            ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    assert seen["home"] == "<unset>", "cloud-init runs user data without HOME"
    assert seen["lang"] == "C.UTF-8"
    assert seen["path"].endswith("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")  # systemd's
    assert (seen["skyward-id"], seen["skyward-ip"]) == ("<unset>", "<unset>")
    assert (seen["v1"], seen["no-ttl"]) == ("401", "400")
    assert seen["id"] == instance["InstanceId"] and seen["ip"] == instance["PrivateIpAddress"]


def test_the_metadata_service_answers_only_its_own_machine_and_not_when_disabled():
    with simulated_aws() as (sim, hosts):
        ec2 = boto3.client("ec2")
        script = probe(AWSCloud.instance_id_shell, AWSCloud.node_ip_shell)
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=sim.ami_id, InstanceType="g4dn.xlarge",
                                                           MinCount=2, MaxCount=2, UserData=script)["Instances"]]
        [off] = ec2.run_instances(ImageId=sim.ami_id, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1,
                                  UserData=script, MetadataOptions={"HttpEndpoint": "disabled"})["Instances"]
        try:
            seen = [probe_output(hosts, i)["id"] for i in ids]
            blind = probe_output(hosts, off["InstanceId"])
        finally:
            ec2.terminate_instances(InstanceIds=[*ids, off["InstanceId"]])
    assert seen == ids
    assert blind["id"] == "" and blind["ip"] == "", "no metadata service: the node cannot know its id"


def test_vastai_runs_onstart_in_ssh_mode_with_its_container_variables_and_no_skyward_shortcut():
    script = probe(VastAICloud.instance_id_shell, VastAICloud.node_ip_shell,
                   ['echo "probe-has-key=${CONTAINER_API_KEY:+yes}"'])
    with simulated_vast([ask_row(101)]) as (sim, hosts):
        auth = {"Authorization": f"Bearer {sim.user_key}"}
        body = {"image": "ubuntu:22.04", "disk": 10, "runtype": "ssh_direc ssh_proxy", "onstart": script,
                "label": "probe"}
        answer = requests.put(f"{sim.url}/api/v0/asks/101/", json=body, headers=auth, timeout=30)
        assert answer.status_code == 200, answer.text
        instance_id = answer.json()["new_contract"]
        try:
            seen = probe_output(hosts, instance_id)
            [instance] = sim.live()
        finally:
            requests.delete(f"{sim.url}/api/v0/instances/{instance_id}/", headers=auth, timeout=30)
    assert (seen["skyward-id"], seen["skyward-ip"]) == ("<unset>", "<unset>")
    assert seen["has-key"] == "yes"
    assert seen["id"] == str(instance_id) and seen["ip"] == instance.private_ip


def test_runpod_runs_the_container_command_with_the_pod_id_and_a_pod_scoped_key():
    script = probe(RunPodCloud.instance_id_shell, RunPodCloud.node_ip_shell,
                   ['echo "probe-key=${RUNPOD_API_KEY-<unset>}"'])
    with simulated_runpod() as (sim, hosts):
        body = {"name": "probe", "imageName": "runpod/base", "gpuTypeIds": ["NVIDIA GeForce RTX 4090"],
                "dockerStartCmd": ["bash", "-c", script]}
        answer = requests.post(f"{sim.url}/v1/pods", json=body, headers={"Authorization": f"Bearer {sim.user_key}"},
                               timeout=30)
        assert answer.status_code == 201, answer.text
        pod_id = answer.json()["id"]
        try:
            seen = probe_output(hosts, pod_id)
            pod = sim.pods[pod_id]
            addresses = (hosts.sim_hosts[pod_id].private_ip, hosts.sim_hosts[pod_id].public_ip)
        finally:
            sim.end_pod(pod_id)
    assert (seen["skyward-id"], seen["skyward-ip"]) == ("<unset>", "<unset>")
    assert seen["key"] == pod.pod_key and seen["key"] != sim.user_key
    assert seen["id"] == pod_id
    assert seen["ip"] in addresses, "the pod's address is one of its own"


def test_vast_payload_is_not_run_in_the_entrypoint_launch_mode():
    """onstart belongs to the SSH and Jupyter launch modes; the entrypoint (args) mode runs the image."""
    assert boot_command({"runtype": "ssh_direc ssh_proxy", "onstart": "echo hi"}) == "echo hi"
    assert "echo hi" not in boot_command({"runtype": "args", "onstart": "echo hi"})

