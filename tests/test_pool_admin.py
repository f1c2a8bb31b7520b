"""Private secrets on a real local pool, and `skyward-ray status / down / gc` against real pools.

Local: pools opened by driver subprocesses, one of them killed with SIGKILL (its driver is dead:
an orphan), the other alive. AWS: the simulated region's API (moto behind the fault front), where
skyward-tagged instances, groups and key pairs of a dead driver are ended and nothing else is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

import skyward_ray as sky
from skyward_ray import names
from skyward_ray.cli import app
from skyward_ray.cluster import pool_state
from tests.conftest import pool_processes, run_python, wait_for_line

runner = CliRunner()


@sky.function
def pid() -> int:
    return os.getpid()


@pytest.fixture
def key_root(tmp_path, monkeypatch):
    """Cluster key dirs of this test only (gc removes stray ones)."""
    root = tmp_path / "keys"
    monkeypatch.setenv("SKYWARD_KEY_DIR", str(root))
    return root


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def local_status() -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(cli("status", "-p", "local", "--json"))["pools"]}


# -- private secrets ---------------------------------------------------------------------------------
def _read(what, default):
    """A process's cmdline or environment; `default` for one that ended since it was listed (a
    pool's short-lived helper processes come and go)."""
    try:
        return what()
    except psutil.Error:
        return default


def test_a_local_pool_keeps_its_token_and_files_private():
    root = pool_state.runtime_root()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    with sky.Compute(nodes=2) as pool:
        pid() >> pool
        token = pool._cluster.provider.params.auth_token
        state_dir = Path(pool._cluster.provider.cloud.prepared["state_dir"])
        record = root / "pools" / f"{pool.name}.json"
        # the pool's directory: mkdtemp under the runtime root, 0700; what skyward writes there is 0600
        assert state_dir.parent == root and stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        written = [state_dir / "machines.json", state_dir / "machines.lock", state_dir / "cluster"]
        for machine in sorted(p for p in state_dir.iterdir() if p.is_dir()):
            assert stat.S_IMODE(machine.stat().st_mode) == 0o700, machine
            written += [machine / "startup.sh", machine / "node.log"]
            assert token not in (machine / "startup.sh").read_text()
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert token not in record.read_text()
        # never on a command line; the nodes' environment (readable by this user only) carries it
        processes = pool_processes(except_open=False)
        assert processes
        for proc in psutil.process_iter():
            try:
                assert token not in " ".join(proc.cmdline()), f"the token is on the command line of {proc.pid}"
            except psutil.Error:
                continue
        assert any(_read(p.environ, {}).get("RAY_AUTH_TOKEN") == token for p in processes)
        # Ray's metrics exporter (an unauthenticated HTTP port) is off: nothing listens on the port each node
        # names (each raylet's --metrics_export_port; a node's `ray start`, which names it with dashes, is a
        # shell watching Ray's processes once they are up)
        ports = {int(arg.split("=", 1)[1]) for p in processes for arg in _read(p.cmdline, [])
                 if arg.startswith(("--metrics-export-port=", "--metrics_export_port="))}
        assert ports
        listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
        assert listening == [], f"a metrics exporter listens: {listening}"
    assert os.environ.get("RAY_AUTH_TOKEN") != token, "the token stayed in the driver's environment"
    assert not state_dir.exists() and not record.exists()


# -- status / down / gc on local pools ------------------------------------------------------------------
OPEN_POOL = """
import time, skyward_ray as sky
pool = sky.Compute(nodes=2)
pool.__enter__()
print("POOL", pool.name, flush=True)
time.sleep(600)
"""


def _is_ray_daemon(proc: psutil.Process) -> bool:
    """A pool's long-lived process (a short-lived Ray helper that ended meanwhile is not)."""
    try:
        return any(daemon in " ".join(proc.cmdline()) for daemon in ("gcs_server", "raylet"))
    except psutil.Error:
        return False


def test_status_gc_and_down_end_exactly_the_pools_whose_driver_is_gone(key_root):
    orphaned, kept = run_python(OPEN_POOL), run_python(OPEN_POOL)
    try:
        orphan_name, kept_name = wait_for_line(orphaned, "POOL "), wait_for_line(kept, "POOL ")
        rows = local_status()
        assert rows[orphan_name]["driver"] == rows[kept_name]["driver"] == "live"
        assert rows[orphan_name]["nodes"] == 2 and rows[orphan_name]["hourly_cost"] == 0.0
        (key_root / orphan_name).mkdir(parents=True)  # as a cloud pool's keys would be
        (key_root / "sky-00000000").mkdir()  # keys of a pool that no longer exists anywhere

        orphaned.send_signal(signal.SIGKILL)
        orphaned.wait(10)
        rows = local_status()
        assert rows[orphan_name]["driver"] == "dead" and rows[orphan_name]["orphan"]
        assert rows[kept_name]["driver"] == "live" and not rows[kept_name]["orphan"]
        table = cli("status", "-p", "local")
        assert orphan_name in table and "dead (orphan" in table and "$/h" in table and "age" in table

        # the pool's long-lived processes (a short-lived Ray helper may end by itself meanwhile)
        processes = {p.pid for p in pool_processes(of=orphan_name) if _is_ray_daemon(p)}
        assert processes
        dry = cli("gc", "--dry-run", "-p", "local")
        assert f"would end local {orphan_name}" in dry and kept_name not in dry
        assert all(psutil.pid_exists(p) for p in processes), "--dry-run ended something"

        started = time.monotonic()
        done = cli("gc", "-p", "local")
        took = time.monotonic() - started
        assert f"ending local {orphan_name}" in done and "gone" in done and kept_name not in done
        assert pool_processes(of=orphan_name) == []
        assert orphan_name not in local_status() and kept_name in local_status()
        assert not (key_root / orphan_name).exists() and not (key_root / "sky-00000000").exists()
        assert not (pool_state.runtime_root() / "pools" / f"{orphan_name}.json").exists()
        print(f"gc ended a 2-node local pool in {took:.1f}s")

        assert f"local {kept_name}: gone" in cli("down", kept_name, "-p", "local")
        assert local_status() == {}
        assert pool_processes(of=kept_name) == []
        missing = runner.invoke(app, ["down", "sky-nosuch00", "-p", "local"])
        assert missing.exit_code == 1 and "no skyward pool named 'sky-nosuch00'" in missing.output
    finally:
        for proc in (orphaned, kept):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


# -- gc on the simulated AWS region -------------------------------------------------------------------
def test_gc_on_aws_ends_every_skyward_resource_of_a_dead_driver_and_nothing_else(key_root, monkeypatch):
    from node_providers.aws import network
    from tests.simaws import aws_environment
    from tests.simaws.server import SimAWS

    sim = SimAWS("us-east-1").start()
    try:
        with aws_environment(sim.client_env()):
            ec2 = sim.client()
            ami = sim.ami_id
            dead = pool_state.Owner(socket.gethostname(), 4_000_000, 1.0).as_tag()  # no such process
            live = pool_state.Owner.current().as_tag()

            def launch(cluster: str | None, owner: str | None) -> str:
                tags = {"Name": "not-skyward"} if cluster is None else {names.CLUSTER: cluster, names.PRICE: "0.5260"}
                if owner:
                    tags[names.OWNER] = owner
                return ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                         TagSpecifications=network.tag_spec("instance", tags))["Instances"][0]["InstanceId"]

            orphan_ids = [launch("sky-deadbeef", dead), launch("sky-deadbeef", dead)]
            network.security_group(ec2, "sky-deadbeef", sim.vpc_id, None, None)
            network.import_key_pair(ec2, "sky-deadbeef", _public_key())
            network.security_group(ec2, "sky-0ffc0ffe", sim.vpc_id, None, None)  # a leftover group alone (no record)
            live_id = launch("sky-a11ve000", live)
            unowned_id = launch("sky-rayup000", None)  # e.g. a `ray up` cluster: no owner recorded
            foreign_id = launch(None, None)
            foreign_group = ec2.create_security_group(GroupName="someone-elses", Description="not skyward",
                                                      VpcId=sim.vpc_id)["GroupId"]
            # the dead driver's state file, as the launcher wrote it
            pool_state.write_record(pool_state.PoolRecord(
                name="sky-0ffc0ffe", provider="aws", provider_config={"region": "us-east-1"},
                owner=pool_state.Owner.from_tag(dead), region="us-east-1", price_per_node=0.5, nodes=1))

            rows = {r["name"]: r for r in json.loads(cli("status", "-p", "aws", "--json"))["pools"]}
            assert set(rows) == {"sky-deadbeef", "sky-0ffc0ffe", "sky-a11ve000", "sky-rayup000"}
            assert rows["sky-deadbeef"]["nodes"] == 2 and rows["sky-deadbeef"]["hourly_cost"] == pytest.approx(1.052)
            assert rows["sky-deadbeef"]["driver"] == "dead" and rows["sky-a11ve000"]["driver"] == "live"
            assert rows["sky-rayup000"]["driver"] == "unknown"

            dry = cli("gc", "--dry-run", "-p", "aws")
            assert "would end aws sky-deadbeef" in dry and "would end aws sky-0ffc0ffe" in dry
            assert len(sim.live_instances()) == 5

            done = cli("gc", "-p", "aws")
            assert "ending aws sky-deadbeef" in done and "left alone: aws sky-rayup000" in done
            live_now = {i["InstanceId"] for i in sim.live_instances()}
            assert live_now == {live_id, unowned_id, foreign_id}
            assert not set(orphan_ids) & live_now
            groups = {g["GroupName"] for g in sim.security_groups()}
            assert "someone-elses" in groups and not groups & {"skyward-sky-deadbeef", "skyward-sky-0ffc0ffe"}
            assert not [k for k in sim.key_pairs() if k["KeyName"] == "skyward-sky-deadbeef"]
            assert not (pool_state.runtime_root() / "pools" / "sky-0ffc0ffe.json").exists()

            assert "aws sky-a11ve000: gone" in cli("down", "sky-a11ve000", "-p", "aws")
            assert "aws sky-rayup000: gone" in cli("down", "sky-rayup000", "-p", "aws")
            assert {i["InstanceId"] for i in sim.live_instances()} == {foreign_id}
            ec2.terminate_instances(InstanceIds=[foreign_id])
            ec2.delete_security_group(GroupId=foreign_group)
    finally:
        sim.stop()


def _public_key() -> str:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "k"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return (path.with_suffix(".pub")).read_text().strip()


# -- the cost guard in the plan walk (simulated AWS) ----------------------------------------------------
def test_a_fallback_offer_over_the_pool_ceiling_is_skipped_never_bought(key_root, tmp_path):
    from tests.simaws import aws_environment
    from tests.simaws.server import Fault, SimAWS

    records = pool_state.runtime_root() / "pools"
    earlier = set(records.glob("*.json"))  # other tests' drivers, SIGKILLed on purpose, may have left theirs
    sim = SimAWS("us-east-1").start()
    try:
        with aws_environment(sim.client_env()):
            # One zone and 64+ vCPUs: two spot offers to walk (each attempt makes and removes a security
            # group and a key), and their on-demand twins over the ceiling.
            aws = sky.AWS(region="us-east-1", key_dir=str(tmp_path), ssh_cidr="198.18.0.1/32")
            pool = sky.Compute(sky.Spec(provider=aws, accelerator="T4", allocation="spot-if-available",
                                        zone="us-east-1a", vcpus=64), nodes=1, max_pool_hourly_cost=0.45)
            with sim.fault(Fault("RunInstances", code="InsufficientInstanceCapacity")):
                with pytest.raises(sky.ProvisioningError) as caught:
                    with pool:
                        pass
            message = str(caught.value)
            assert pool.plan.chosen.market == "spot" and pool.plan.chosen.price <= 0.45
            assert "InsufficientInstanceCapacity" in message
            assert "over the cost guard's ceiling of $0.45/h per pool (set by max_pool_hourly_cost=)" in message
            dear = [o for o in pool.plan.offers if o.price > 0.45]
            assert dear, "the plan has offers over the ceiling"
            launched = sim.calls("RunInstances")
            assert launched and all(c.params.get("InstanceMarketOptions.MarketType") == "spot" for c in launched), \
                "an offer over the ceiling was asked for"
            assert not [i for i in sim.live_instances() if any(t["Key"] == names.CLUSTER for t in i.get("Tags", []))]
            assert not [g for g in sim.security_groups() if g["GroupName"].startswith("skyward-")]
            assert set(records.glob("*.json")) <= earlier, "a failed pool's state file was left"
    finally:
        sim.stop()
