"""No secret in a launch payload the cloud keeps (issue 21): the pool's token and `Image.env` values
arrive after boot, the head's over the driver's pinned SSH session, a worker's from the head for a
one-time ticket bound to the worker's own address. No SSH host private key is there either: the head
makes its own at boot and the driver pins what the head prints on the log the cloud shows (AWS's
console output, RunPod's and Vast.ai's log APIs, Docker's container log).

Per cloud, the payload as the simulated API recorded it (moto's userData, the RunPod fake's create
call and pod env, the Vast fake's create body, `docker inspect` of a Container node) holds neither
the token nor an env value; the head's secret service answers a ticket once, and only from the
address it was registered for. The pools themselves boot in test_*_pool, test_conformance and
test_leaks.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.autoscaler.tags import NODE_KIND_WORKER

import skyward_ray as sky
from node_providers.runpod.cloud import ENV_TAGS
from skyward_ray.cluster import provisioning
from skyward_ray.node import enrollment
from tests.provider_helpers import TOKEN, cluster_name, cluster_params, create
from tests.simnet.probes import tcp_connects

SECRET_VALUE = "hf_" + "s3cr3t" * 6
IMAGE_ENV = {"HF_TOKEN": SECRET_VALUE}


def _holds_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text, "the pool's Ray token is in a payload the cloud keeps"
        assert SECRET_VALUE not in text, "an Image.env value is in a payload the cloud keeps"


# An OpenSSH private key as a payload may carry it: as text, or base64-encoded (the sshd snippet's
# `echo ... | base64 -d`; the key's first line starts the encoding, so its prefix is always this).
PRIVATE_KEY_BASE64 = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY").decode()


def _holds_no_private_key(*texts: str) -> None:
    for text in texts:
        assert "PRIVATE KEY" not in text and "ed25519_private" not in text and PRIVATE_KEY_BASE64 not in text, \
            "an SSH private key (the head's host key) is in a payload the cloud keeps"


# -- the payloads each cloud keeps ---------------------------------------------------------------------
def test_aws_user_data_holds_no_token_and_no_image_env(tmp_path):
    from tests.simaws import SIM_SETTINGS, SimAWS, aws_environment
    from tests.simaws.hosts import cloud_init_text, split_user_data
    from tests.simcloud import simulated_cloud

    with simulated_cloud("the simulated AWS region", SimAWS("us-east-1"), None, aws_environment) as (sim, _):
        offers = sky.AWS(region="us-east-1", live_offers_ttl=0).list_offers(sky.accelerators.T4())
        offer = next(o for o in offers if o.market == "on-demand" and o.instance_type == "g4dn.xlarge")
        config = sky.AWS(region="us-east-1", key_dir=str(tmp_path), ssh_cidr="198.18.0.1/32", **SIM_SETTINGS)
        name = cluster_name()
        provider = provisioning.load_node_provider(config, cluster_params(offer, nodes=2, env=IMAGE_ENV), name)
        try:
            [head] = create(provider, name, index=0)
            [worker] = create(provider, name, NODE_KIND_WORKER)
            texts = []
            for instance in (head, worker):
                value = sim.client().describe_instance_attribute(
                    InstanceId=instance, Attribute="userData")["UserData"]["Value"]
                texts.append(cloud_init_text(base64.b64decode(value)))
            _holds_no_secret(*texts)
            _holds_no_private_key(*texts)  # the head makes its own host key (cloud-init) and prints it
            head_config, head_script = split_user_data(texts[0])
            assert head_config.get("ssh_deletekeys") is True and head_config.get("ssh_genkeytypes") == ["ed25519"]
            _, worker_script = split_user_data(texts[1])
            assert "--head" in head_script and "serve" in head_script, "the head waits for its secrets"
            assert "SKYWARD_ENROLL_TICKET=" in worker_script and "redeem" in worker_script
        finally:
            provider.terminate_nodes(provider.non_terminated_nodes({}))
            provider.cleanup_cluster_resources()


def test_runpod_create_calls_and_pod_env_hold_no_token_and_no_image_env(tmp_path, monkeypatch):
    from tests.simrunpod import SIM_SETTINGS, USER_KEY, simulated_runpod
    from tests.test_runpod_provider import GPU, deploys, docker_payload

    with simulated_runpod(with_hosts=False) as (sim, _):
        monkeypatch.setenv("RUNPOD_API_KEY", USER_KEY)
        params = cluster_params(nodes=2, instance_type=GPU, market="on-demand", offer=f"{GPU}.any.on-demand",
                                accelerator="RTX4090", accelerator_count=1, env=IMAGE_ENV)
        name = cluster_name()
        provider = provisioning.load_node_provider(sky.RunPod(key_dir=str(tmp_path), **SIM_SETTINGS), params, name)
        since = len(sim.calls())
        try:
            create(provider, name, index=0)
            create(provider, name, NODE_KIND_WORKER)
            calls = deploys(sim, since)
            assert len(calls) == 2
            payloads = [docker_payload(call.query) for call in calls]
            _holds_no_secret(*(call.query for call in calls), *payloads,
                             *(json.dumps(pod.env) for pod in sim.live_pods()))
            # the head makes its own host key and prints it on the pod's log (RunPod's v2 log stream)
            _holds_no_private_key(*(call.query for call in calls), *payloads)
            assert "ssh-keygen" in payloads[0]
            assert all(set(pod.env) <= {ENV_TAGS} for pod in sim.live_pods())
            assert "redeem" in payloads[1] and "serve" in payloads[0]
        finally:
            provider.terminate_nodes(provider.non_terminated_nodes({}))
            provider.cleanup_cluster_resources()


def test_vast_create_bodies_hold_no_token_and_no_image_env(tmp_path, monkeypatch):
    from tests.simvast import SIM_SETTINGS, SimVast, ask_row
    from tests.simvast.server import decode_onstart

    monkeypatch.delenv("VAST_API_KEY", raising=False)
    server = SimVast([ask_row(101, dph_total=0.20, min_bid=0.08), ask_row(102, dph_total=0.21, min_bid=0.09)],
                     loading_delay=0.2).start()
    try:
        config = sky.VastAI(**{**SIM_SETTINGS, "api_key": server.user_key, "server_url": server.url,
                               "live_offers_ttl": 0, "key_dir": str(tmp_path)})
        offer = next(o for o in config.list_offers(sky.accelerators.T4())
                     if o.market == "on-demand" and o.instance_type == "101")
        name = cluster_name()
        provider = provisioning.load_node_provider(config, cluster_params(offer, env=IMAGE_ENV), name)
        create(provider, name, index=0)
        create(provider, name, NODE_KIND_WORKER)
        bodies = server.payloads()
        assert len(bodies) >= 2  # an ask rented by the head is replaced by the next
        _holds_no_secret(*(json.dumps(body) for body in bodies), *(decode_onstart(body) for body in bodies))
        # the head makes its own host key and prints it on the log the driver reads back
        _holds_no_private_key(*(json.dumps(body) for body in bodies), *(decode_onstart(body) for body in bodies))
        assert any("ssh-keygen" in decode_onstart(body) for body in bodies)
        provider.terminate_nodes(provider.non_terminated_nodes({}))
    finally:
        server.stop()


@pytest.mark.xdist_group("docker")
def test_container_env_labels_and_command_hold_no_token_and_no_image_env(tmp_path):
    from tests.conformance.harness_container import SETTINGS, container_engine

    with container_engine() as client:
        config = sky.Container(key_dir=str(tmp_path), **SETTINGS)
        name = cluster_name()
        provider = provisioning.load_node_provider(config, cluster_params(nodes=2, env=IMAGE_ENV), name)
        try:
            [head] = create(provider, name, index=0)
            [worker] = create(provider, name, NODE_KIND_WORKER)
            for box in (head, worker):
                kept = client.api.inspect_container(box)["Config"]
                kept_texts = [json.dumps(kept.get(field)) for field in ("Env", "Labels", "Cmd", "Entrypoint")]
                _holds_no_secret(*kept_texts)
                _holds_no_private_key(*kept_texts)  # the head makes its own host key; Docker's log shows it
        finally:
            provider.terminate_nodes(provider.non_terminated_nodes({}))
            provider.cleanup_cluster_resources()


# -- the head's secret service -------------------------------------------------------------------------
def _own_address() -> str | None:
    """An address of this machine that is not loopback (what a worker connects from), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask_from(source: str, host: str, port: int, message: dict) -> dict:
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as conn:
        conn.sendall(json.dumps(message).encode() + b"\n")
        return json.loads(conn.makefile("rb").readline() or b"{}")


def test_a_ticket_is_answered_once_and_only_from_its_workers_address(tmp_path):
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    port, secrets_file = _free_port(), tmp_path / "secrets"
    log = tmp_path / "service.log"
    with open(log, "wb") as output:  # a file, not a pipe nobody reads: its output shows when it fails
        service = subprocess.Popen([sys.executable, "-I", enrollment.__file__, "serve", address, str(port),
                                    str(secrets_file)], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not tcp_connects(address, port):
            assert time.monotonic() < deadline and service.poll() is None, \
                f"the service never listened: {log.read_text(errors='replace')[-2000:]}"
            time.sleep(0.05)
        ticket, other = "t" * 43, "u" * 43
        # before the driver delivered: nothing is answered
        assert "retry" in _ask_from(address, address, port, {"ticket": ticket})
        # the driver's side is the loopback one only: a token sent to the workers' side is not taken
        assert "ok" not in _ask_from(address, address, port, {"token": "forged", "tickets": {}})
        answer = enrollment.ask("127.0.0.1", port, {"token": TOKEN, "env": IMAGE_ENV, "tickets": {
            enrollment.ticket_id(ticket): [address], enrollment.ticket_id(other): ["192.0.2.7"]}})
        assert answer == {"ok": True}
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        text = secrets_file.read_text()
        assert TOKEN in text and SECRET_VALUE in text and "forged" not in text
        # from another address than the worker's: refused, and the ticket is not spent by it
        assert "refused" in _ask_from("127.0.0.1", address, port, {"ticket": ticket})
        assert "refused" in _ask_from(address, address, port, {"ticket": other})
        # from the worker's own address: the token and env, once
        first = _ask_from(address, address, port, {"ticket": ticket})
        assert first == {"token": TOKEN, "env": IMAGE_ENV}
        second = _ask_from(address, address, port, {"ticket": ticket})
        assert "refused" in second and "token" not in second
        # a batch's workers share one ticket (one payload): registered with each address as the cloud
        # lists it, answered once from each, and to nobody else
        batch = "b" * 43
        enrollment.ask("127.0.0.1", port, {"tickets": {enrollment.ticket_id(batch): [address]}})
        assert _ask_from(address, address, port, {"ticket": batch}) == {"token": TOKEN, "env": IMAGE_ENV}
        assert "refused" in _ask_from(address, address, port, {"ticket": batch})
        assert "refused" in _ask_from("127.0.0.1", address, port, {"ticket": batch}), "not registered yet"
        enrollment.ask("127.0.0.1", port, {"tickets": {enrollment.ticket_id(batch): ["127.0.0.1"]}})
        assert _ask_from("127.0.0.1", address, port, {"ticket": batch}) == {"token": TOKEN, "env": IMAGE_ENV}
        assert "refused" in _ask_from("127.0.0.1", address, port, {"ticket": batch})
        assert "refused" in _ask_from(address, address, port, {"ticket": batch})
    finally:
        service.kill()
        service.wait(timeout=10)


def test_the_secrets_file_keeps_the_scripts_own_names_and_ray_auth():
    text = enrollment.env_file_text(TOKEN, {"HF_TOKEN": "a b'c", "RAY_AUTH_MODE": "off", "SKYWARD_NODE": "9",
                                            "NODE_IP": "1.2.3.4", "bad name": "x"})
    done = subprocess.run(["bash", "-c", text + 'printf "%s|%s|%s|%s" "$HF_TOKEN" "$RAY_AUTH_TOKEN" '
                           '"${RAY_AUTH_MODE:-unset}" "${NODE_IP:-unset}"'],
                          capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert done.stdout == f"a b'c|{TOKEN}|unset|unset", done.stderr


def test_a_script_whose_secrets_come_after_boot_holds_neither_and_keeps_its_own_exports(tmp_path):
    from skyward_ray.node import boot_secrets, startup_script

    head = startup_script.NodeBoot(role="head", cluster_name="c1", auth_token="", secrets_after_boot=True,
                                   env={"SKYWARD_NODE": "0"})
    worker = startup_script.NodeBoot(role="worker", cluster_name="c1", auth_token="", secrets_after_boot=True,
                                     head_ip="10.0.0.1", enrollment_ticket="abc")
    for boot in (head, worker):
        assert "RAY_AUTH_TOKEN=" not in startup_script.render(boot)
    with pytest.raises(sky.SpecError):
        startup_script.render(worker.model_copy(update={"enrollment_ticket": ""}))
    # the pool's env, sourced late, never overrides what the script exported itself
    lines = boot_secrets.secret_lines("head", head_ip="", ticket="", port=6390, boot_deadline=60, head_wait=60,
                                      own=["RAY_USAGE_STATS_ENABLED"])
    source = lines[lines.index('SKYWARD_OWN="$(export -p | grep -E \'^declare -x (RAY_USAGE_STATS_ENABLED)=\')"'):]
    secrets_file = tmp_path / "s"
    secrets_file.write_text(enrollment.env_file_text(TOKEN, {"RAY_USAGE_STATS_ENABLED": "1", "HF_TOKEN": "v"}))
    script = "\n".join(["export RAY_USAGE_STATS_ENABLED=0", f"export SKYWARD_SECRETS={secrets_file}", *source,
                        'echo "$RAY_USAGE_STATS_ENABLED $HF_TOKEN ${#RAY_AUTH_TOKEN}"'])
    done = subprocess.run(["bash", "-u", "-c", script], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"]})
    assert done.stdout.strip() == f"0 v {len(TOKEN)}", done.stderr
    assert not secrets_file.exists(), "the secrets file is removed once read"
    assert Path(enrollment.__file__).read_text().count("import skyward_ray") == 0


def test_the_driver_registers_each_workers_ticket_with_the_address_the_cloud_listed():
    from skyward_ray.cluster.contract import Machine
    from skyward_ray.cluster.secret_delivery import Courier, new_ticket

    listed = {"w1": Machine("w1", "running", private_ip="10.0.0.11")}
    sent: list[dict] = []
    courier = Courier(lambda: list(listed.values()))
    early, late, slow = new_ticket(), new_ticket(), new_ticket()
    courier.worker_launched("w1", early)  # before the head has its secrets: kept for the delivery
    assert sent == []
    courier.deliver(sent.append, TOKEN, IMAGE_ENV)
    assert sent == [{"token": TOKEN, "env": IMAGE_ENV, "tickets": {enrollment.ticket_id(early): ["10.0.0.11"]}}]
    assert early not in json.dumps(sent), "the head keeps a ticket's hash, never the ticket"
    listed["w2"] = Machine("w2", "running", private_ip="10.0.0.12")
    courier.worker_launched("w2", late)  # after: registered at once
    assert sent[-1] == {"tickets": {enrollment.ticket_id(late): ["10.0.0.12"]}}
    listed["w3"] = Machine("w3", "pending")
    courier.worker_launched("w3", slow)  # no address yet: registered once the listing has one
    assert len(sent) == 2
    listed["w3"] = Machine("w3", "running", private_ip="10.0.0.13")
    deadline = time.monotonic() + 10
    while len(sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sent[-1] == {"tickets": {enrollment.ticket_id(slow): ["10.0.0.13"]}}


def test_a_batchs_shared_ticket_is_registered_with_every_workers_address():
    from skyward_ray.cluster.contract import Machine
    from skyward_ray.cluster.secret_delivery import Courier, new_ticket

    listed = {"w1": Machine("w1", "running", private_ip="10.0.0.21"),
              "w2": Machine("w2", "running", private_ip="10.0.0.22")}
    sent: list[dict] = []
    courier = Courier(lambda: list(listed.values()))
    shared = new_ticket()
    courier.worker_launched("w1", shared)  # both came from one launch call, with one boot script
    courier.worker_launched("w2", shared)
    courier.deliver(sent.append, TOKEN, IMAGE_ENV)
    assert sent == [{"token": TOKEN, "env": IMAGE_ENV,
                     "tickets": {enrollment.ticket_id(shared): ["10.0.0.21", "10.0.0.22"]}}]
