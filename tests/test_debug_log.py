"""The first-contact log (`SKYWARD_DEBUG=1`): every cloud API call with its duration and outcome,
and the nodes' boot logs when a launch fails, in one private file whose path a failure names;
never a secret in it.

The first tests are light (no pool). Then one simulated-AWS pool (its RunInstances and
TerminateInstances lines, none of the fake credentials nor the pool's Ray token in the file) and
one local pool that cannot boot in time (its path on the error, the node's boot lines in it).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

import skyward_ray as sky
from node_providers.runpod.transport import graphql_operation
from skyward_ray.cluster import api_log
from tests.timeouts import SIM_BOOT_TIMEOUT

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIASKYWARDFAKE00077", "AWS_SECRET_ACCESS_KEY": "skywardFakeSecretDoNotLeak0123456789wxyz",
           "AWS_SESSION_TOKEN": "skywardFakeSessionTokenDoNotLeak77"}


@sky.function
def one() -> int:
    return 1


def test_lines_are_masked_before_they_are_written(tmp_path):
    api_log.register_secret("registered-secret-value-123")
    text = api_log.mask("key AKIAABCDEFGHIJKLMNOP Authorization: Bearer abc.def api_key=zzz123&x=1 "
                        "RAY_AUTH_TOKEN=0123abcd and registered-secret-value-123 stays out; RunInstances ok")
    for secret in ("AKIAABCDEFGHIJKLMNOP", "abc.def", "zzz123", "0123abcd", "registered-secret-value-123"):
        assert secret not in text, text
    assert "RunInstances ok" in text and "x=1" in text
    log = api_log.PoolLog(tmp_path / "pool.log")
    log.write("token=supersecretvalue")
    log.close()
    assert stat.S_IMODE((tmp_path / "pool.log").stat().st_mode) == 0o600
    assert "supersecretvalue" not in (tmp_path / "pool.log").read_text()


def test_nothing_is_written_unless_asked_for(monkeypatch):
    monkeypatch.delenv(api_log.ENV_DEBUG, raising=False)
    assert api_log.open_pool_log("pool") is None
    api_log.record_call("aws", "ec2:RunInstances", 0.1)  # no file: a no-op
    monkeypatch.setenv(api_log.ENV_DEBUG, "1")
    log = api_log.open_pool_log("a pool/with odd name")
    assert log is not None and api_log.active_path() == log.path and "/" not in log.path.name
    api_log.record_call("aws", "ec2:RunInstances", 0.25, "HTTP 400 InsufficientInstanceCapacity: none left")
    api_log.close_pool_log(log)
    assert api_log.active_path() is None
    assert re.search(r"api aws ec2:RunInstances 250ms HTTP 400 InsufficientInstanceCapacity", log.path.read_text())


def test_runpod_operations_are_named_without_their_arguments():
    assert graphql_operation("query myPods { myself { pods { id } } }") == "query myPods"
    assert graphql_operation('mutation { podTerminate(input: {podId: "p1"}) }') == "mutation podTerminate"
    assert graphql_operation('mutation { podFindAndDeployOnDemand(input: {env: [{key: "K", value: "secret"}]}) '
                             "{ id } }") == "mutation podFindAndDeployOnDemand"


def test_a_simulated_aws_pool_logs_its_calls_with_durations_and_no_secret(tmp_path, monkeypatch):
    from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws

    monkeypatch.setenv(api_log.ENV_DEBUG, "1")
    with simulated_aws("us-east-1") as (sim, hosts), aws_environment({**sim.client_env(), **SECRETS}):
        config = sky.AWS(region="us-east-1", key_dir=str(tmp_path), ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
        with sky.Compute(provider=config, accelerator="T4", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT) as pool:
            path = api_log.active_path()
            token = os.environ["RAY_AUTH_TOKEN"]
            assert one() >> pool == 1
        assert hosts.wait_idle() == []
    assert path is not None
    text = Path(path).read_text()
    assert re.search(r"api aws ec2:RunInstances \d+ms ok", text), text[-3000:]
    assert re.search(r"api aws ec2:TerminateInstances \d+ms ok", text), text[-3000:]
    for secret in (*SECRETS.values(), token):
        assert secret not in text, "a secret in the first-contact log"


def test_a_failed_boot_names_the_log_and_the_log_holds_the_nodes_boot_lines(monkeypatch):
    monkeypatch.setenv(api_log.ENV_DEBUG, "1")
    with pytest.raises(sky.ProvisioningError) as raised:
        with sky.Compute(nodes=1, boot_timeout=3):
            pass
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    match = re.search(r"first-contact log \(.*\): (\S+\.log)", notes)
    assert match, notes
    text = Path(match.group(1)).read_text()
    assert "launch failed" in text and "boot log" in text, text[-3000:]
    assert re.search(r"--- node \S+ boot log", text) and "skyward" in text.split("boot log", 1)[1], text[-3000:]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
