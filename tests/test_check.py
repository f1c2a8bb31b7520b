"""`sky.check()` / `skyward-ray check` against the simulated clouds' APIs (no machines, no Ray).

Each case a first user meets gives its line and the exit code: valid keys, missing keys, refused
keys, a GPU quota of zero, a RunInstances DryRun denied, an empty balance, no Docker. Only reads
and a DryRun are sent: nothing is created in any simulated account.
"""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest
from typer.testing import CliRunner

import skyward_ray as sky
from skyward_ray.cli import app
from skyward_ray.planning.check import CheckReport, Finding, ProviderReport, check_provider
from tests.environment import scoped_environment
from tests.simaws import Fault, SimAWS, aws_environment
from tests.simaws.quotas import QUOTA_NAMES
from tests.simcloud import simulated_cloud
from tests.simrunpod import runpod_environment, simulated_runpod
from tests.simvast import SimVast

REGION = "us-east-1"
NO_AWS_CREDENTIALS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                      "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_DEFAULT_REGION": REGION}
GPU_CODES = ("L-DB2E81BA", "L-417A185B", "L-3819A6DF", "L-7212CCBC")


def finding(report: ProviderReport, what: str) -> Finding:
    return next(f for f in report.findings if f.what == what)


def cli(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["check", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


# -- AWS ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aws_api():
    with simulated_cloud("the simulated AWS API", SimAWS(REGION), None, aws_environment) as (sim, _):
        yield sim


@pytest.fixture
def aws(aws_api):
    yield aws_api
    aws_api.clear_faults()
    aws_api.quotas.reset()


def aws_config(**settings):
    return sky.AWS(region=REGION, ssh_cidr="198.18.0.1/32", live_offers_ttl=0, **settings)


def test_aws_valid_keys_can_launch_and_nothing_is_created(aws):
    report = sky.check([aws_config()])
    aws_report = report["aws"]
    assert report.ok and aws_report.can_launch, str(report)
    assert "environment" in finding(aws_report, "credentials").detail
    assert "123456789012" in finding(aws_report, "valid").detail
    assert finding(aws_report, "regions").detail == REGION
    assert finding(aws_report, f"quotas {REGION}").status == "ok"
    launch = finding(aws_report, f"launch {REGION}")
    assert launch.status == "ok" and "DryRun" in launch.detail
    assert [c.params.get("DryRun") for c in aws.calls("RunInstances")] == ["true"]
    assert aws.live_instances() == [] and aws.security_groups() == []


def test_aws_missing_keys_fail_with_the_fix_and_exit_non_zero(aws):
    with aws_environment({**NO_AWS_CREDENTIALS, "AWS_ENDPOINT_URL": aws.endpoint}):
        code, answer = cli("-p", "aws")
    assert code == 1 and answer["ok"] is False
    line = next(f for f in answer["providers"][0]["findings"] if f["what"] == "credentials")
    assert line["status"] == "fail" and "aws configure" in line["fix"]


def test_aws_refused_keys_fail_on_the_cheap_authenticated_read(aws):
    aws.inject(Fault("GetCallerIdentity", code="InvalidClientTokenId", status=403,
                     message="The security token included in the request is invalid."))
    report = sky.check([aws_config()])
    valid = finding(report["aws"], "valid")
    assert not report.ok and valid.status == "fail" and "InvalidClientTokenId" in valid.detail
    assert "aws configure" in valid.fix


def test_aws_gpu_quotas_of_zero_fail_and_one_zero_family_only_warns(aws):
    aws.quotas.set("L-417A185B", 0)
    partly = finding(sky.check([aws_config()])["aws"], f"quotas {REGION}")
    assert partly.status == "warn" and "L-417A185B" in partly.fix and "P on-demand 0 vCPUs" in partly.detail
    for code in GPU_CODES:
        aws.quotas.set(code, 0)
    report = sky.check([aws_config()])
    quotas = finding(report["aws"], f"quotas {REGION}")
    assert quotas.status == "fail" and not report.ok
    assert all(code in quotas.fix for code in GPU_CODES) and "Service Quotas" in quotas.fix
    assert set(GPU_CODES) <= set(QUOTA_NAMES)


def test_aws_a_denied_dry_run_fails_naming_the_permission(aws):
    aws.inject(Fault("RunInstances", code="UnauthorizedOperation", status=403,
                     message="You are not authorized to perform this operation.",
                     when=lambda params: params.get("DryRun") == "true"))
    report = sky.check([aws_config()])
    launch = finding(report["aws"], f"launch {REGION}")
    assert launch.status == "fail" and "denied" in launch.detail and "ec2:RunInstances" in launch.fix
    assert not report.ok and aws.live_instances() == []


def test_aws_the_drivers_public_address_is_found_as_the_security_group_will_see_it(aws):
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"203.0.113.7\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with scoped_environment({"SKYWARD_CHECKIP_URL": f"http://127.0.0.1:{server.server_port}/"}):
            source = finding(sky.check([sky.AWS(region=REGION, live_offers_ttl=0)])["aws"], "ssh source")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert source.status == "ok" and "203.0.113.7" in source.detail


# -- RunPod ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runpod_api():
    with simulated_runpod(with_hosts=False) as (sim, _):
        yield sim


def test_runpod_valid_key_balance_and_global_networking(runpod_api):
    report = sky.check("runpod")["runpod"]
    assert report.can_launch, report
    assert finding(report, "credentials").detail == "API key from RUNPOD_API_KEY"
    assert finding(report, "balance").detail.startswith("$25.00")
    assert finding(report, "multi-pod").status == "ok"


def test_runpod_missing_refused_key_and_empty_balance(runpod_api):
    with runpod_environment({"RUNPOD_API_BASE_URL": runpod_api.url}):
        code, answer = cli("-p", "runpod")
    assert code == 1 and answer["providers"][0]["findings"][-1]["what"] == "credentials"
    refused = sky.check([sky.RunPod(api_key="rpa_NOTAKEY")])["runpod"]
    assert finding(refused, "valid").status == "fail" and "RUNPOD_API_KEY" in finding(refused, "valid").fix
    runpod_api.balance = 0.0
    try:
        empty = sky.check("runpod")
    finally:
        runpod_api.balance = 25.0
    assert not empty.ok and finding(empty["runpod"], "balance").status == "fail"


# -- Vast.ai -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vast_api():
    with simulated_cloud("the simulated Vast.ai API", SimVast([]), None) as (sim, _):
        yield sim


def test_vast_valid_missing_refused_key_and_no_credit(vast_api):
    ok = sky.check([sky.VastAI(api_key=vast_api.user_key, server_url=vast_api.url)])["vastai"]
    assert ok.can_launch and finding(ok, "credit").detail == "$20.00", ok
    with scoped_environment({}, hide_prefixes=("VAST_API_KEY",)):
        missing = sky.check([sky.VastAI(server_url=vast_api.url)])["vastai"]
    assert finding(missing, "credentials").status == "fail" and "VAST_API_KEY" in finding(missing, "credentials").fix
    refused = sky.check([sky.VastAI(api_key="not-a-key", server_url=vast_api.url)])["vastai"]
    assert finding(refused, "valid").status == "fail"
    vast_api.credit = 0.0
    try:
        broke = sky.check([sky.VastAI(api_key=vast_api.user_key, server_url=vast_api.url)])
    finally:
        vast_api.credit = 20.0
    assert not broke.ok and finding(broke["vastai"], "credit").status == "fail"


# -- Container and this machine --------------------------------------------------------------------
def test_no_docker_fails_naming_the_fix_and_exits_non_zero():
    report = sky.check([sky.Container(docker_host="unix:///nonexistent/docker.sock")])
    daemon = finding(report["container"], "daemon")
    assert not report.ok and daemon.status == "fail" and "start Docker" in daemon.fix
    with scoped_environment({"DOCKER_HOST": "unix:///nonexistent/docker.sock"}):
        code, answer = cli("-p", "container")
    assert code == 1 and answer["providers"][0]["can_launch"] is False


def test_local_checks_ssh_runtime_dir_open_files_and_memory():
    code, answer = cli("-p", "local")
    findings = {f["what"]: f for f in answer["providers"][0]["findings"]}
    assert set(findings) == {"ssh", "runtime dir", "ulimit -n", "memory"}
    assert code == (0 if answer["providers"][0]["can_launch"] else 1)
    assert "0700" in findings["runtime dir"]["detail"]


# -- the generic part ---------------------------------------------------------------------------------
def test_the_exit_code_asks_every_named_provider_and_any_one_otherwise():
    good = ProviderReport("a", (Finding.ok("x", "fine"),))
    bad = ProviderReport("b", (Finding.warn("y", "meh"), Finding.fail("z", "broken", "do this")))
    assert not CheckReport((good, bad), requested=True).ok
    assert CheckReport((good, bad), requested=False).ok
    assert "fix: do this" in str(CheckReport((bad,)))
    assert CheckReport((good,)).as_dict()["providers"][0]["can_launch"] is True


def test_a_provider_without_its_extra_fails_on_that_line_only(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vastai", None)  # an import blocked: as if not installed
    report = check_provider(sky.VastAI())
    assert [(f.what, f.status) for f in report.findings] == [("extra", "fail")]
    assert "pip install 'skyward-ray[vastai]'" in report.findings[0].fix
