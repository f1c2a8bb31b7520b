"""Security of the last layer of teardown (issue 21): what `skyward-ray gc`/`down` may remove, where
pool records live, and how names are checked. Light: no Ray is started, no cloud is simulated.

A cloud's listing is played by the local provider, whose pools are directories under the runtime
root named by their `cluster` file: that file stands for a tag anyone in a shared cloud account
can write (the AWS `skyward/cluster` tag, a Vast.ai label, a RunPod pod name).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyward_ray import names
from skyward_ray.cli import app
from skyward_ray.cluster import pool_state, ssh_keys
from skyward_ray.errors import SpecError
from skyward_ray.planning.detached import DetachedSpec

runner = CliRunner()
DEAD = pool_state.Owner(socket.gethostname(), 4_000_000, 1.0)  # no such process on this host


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A runtime root and a key root of this test only, and no cloud credentials (every other
    provider answers "no credentials" at once, so an unfiltered survey stays on this machine)."""
    runtime, keys = tmp_path / "run", tmp_path / "keys"
    runtime.mkdir(mode=0o700)
    keys.mkdir(mode=0o700)
    monkeypatch.setenv(pool_state.ENV_RUNTIME_DIR, str(runtime))
    monkeypatch.setenv("SKYWARD_KEY_DIR", str(keys))
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                     "RUNPOD_API_KEY", "VAST_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return runtime, keys


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def victim(tmp_path: Path) -> Path:
    directory = tmp_path / "victim"
    directory.mkdir()
    (directory / "precious.txt").write_text("not skyward's")
    return directory


def plant_listing(runtime: Path, name: str, owner: pool_state.Owner) -> Path:
    """A local pool directory whose `cluster` file names the pool `name`; its one machine (already
    ended) carries the owner tag of a driver that no longer runs, so the pool is an orphan."""
    entry = runtime / "planted"
    entry.mkdir(mode=0o700)
    (entry / "cluster").write_text(name)
    machine = {"instance_id": "planted-0", "pid": owner.pid, "create_time": owner.create_time, "ip": "127.9.9.1",
               "directory": str(entry / "planted-0"), "log_path": str(entry / "planted-0" / "node.log"),
               "tags": {names.OWNER: owner.as_tag(), names.CLUSTER: name}, "terminated": True}
    (entry / "machines.json").write_text(json.dumps({"planted-0": machine}))
    return entry


def record(name: str, provider: str, owner: pool_state.Owner) -> pool_state.PoolRecord:
    return pool_state.PoolRecord(name=name, provider=provider, provider_config={}, owner=owner)


# -- 1. a name read back from a cloud never becomes a path to remove -------------------------------------
@pytest.mark.parametrize("relative", [True, False], ids=["dot-dot", "absolute"])
def test_gc_and_down_never_act_on_a_listed_name_that_is_not_a_pool_name(roots, tmp_path, relative):
    runtime, keys = roots
    target = victim(tmp_path)
    name = "../victim" if relative else str(target)
    planted = plant_listing(runtime, name, DEAD)

    for args in (("gc", "-p", "local"), ("gc",)):
        out = cli(*args)
        assert target.is_dir() and (target / "precious.txt").exists(), f"`{' '.join(args)}` removed {target}"
        assert planted.is_dir(), "a pool with a refused name was acted on"
        assert f"a pool listed as {name!r}" in out and "planted-0" in out and "never gives" in out, out
        assert "ending" not in out
    missing = runner.invoke(app, ["down", name, "-p", "local"])
    assert missing.exit_code == 1 and "no skyward pool named" in missing.output and "planted-0" in missing.output
    assert target.is_dir()
    rows = json.loads(cli("status", "-p", "local", "--json"))
    assert rows["pools"] == [] and any("never gives" in n for n in rows["notes"])


def test_a_state_file_naming_a_path_is_not_read_and_removes_nothing(roots, tmp_path):
    target = victim(tmp_path)
    forged = {**dataclasses.asdict(record("sky-00000001", "local", DEAD)), "name": "../victim"}
    (pool_state.records_dir() / "sky-00000001.json").write_text(json.dumps(forged))
    assert "nothing to collect" in cli("gc")
    assert (target / "precious.txt").exists()


def test_keys_are_removed_only_from_a_direct_child_of_the_key_root(tmp_path):
    root, elsewhere = tmp_path / "keys", victim(tmp_path)
    mine = ssh_keys.cluster_key_dir("sky-00000002", root)
    (root / "sky-link0001").symlink_to(elsewhere, target_is_directory=True)
    for refused in ("../victim", str(elsewhere), "sky-link0001", "..", ".", "sky-abc\n", "Sky_Bad"):
        assert ssh_keys.remove_cluster_key_dir(refused, root) is None, refused
    assert (elsewhere / "precious.txt").exists() and (root / "sky-link0001").is_symlink()
    assert ssh_keys.remove_cluster_key_dir("sky-00000002", root) == mine.resolve() and not mine.exists()
    linked_root = tmp_path / "linked-keys"  # a key root that is itself a symlink still works
    linked_root.symlink_to(root, target_is_directory=True)
    ssh_keys.cluster_key_dir("sky-00000003", root)
    assert ssh_keys.remove_cluster_key_dir("sky-00000003", linked_root) and not (root / "sky-00000003").exists()


# -- 2. a key dir is stray only if no record of any provider and no listing names it ------------------------
def test_gc_with_a_provider_filter_keeps_other_providers_keys_and_only_a_full_survey_collects_named_ones(roots, tmp_path):
    runtime, keys = roots
    live_elsewhere = pool_state.Owner.current()
    pool_state.write_record(record("sky-r0000001", "runpod", live_elsewhere))  # a live RunPod pool's record
    pool_state.write_record(record("train-rp", "runpod", live_elsewhere))  # a named one too
    for directory in ("sky-r0000001", "train-rp", "sky-gone0001", "train-old", "Not_A_Pool"):
        (keys / directory).mkdir()
    target = victim(tmp_path)
    (keys / "sky-link0001").symlink_to(target, target_is_directory=True)

    out = cli("gc", "-p", "local")
    assert (keys / "sky-r0000001").is_dir() and (keys / "train-rp").is_dir(), f"a live pool's keys were removed:\n{out}"
    assert not (keys / "sky-gone0001").exists(), "a stray `sky-` key dir was left"
    assert (keys / "train-old").is_dir(), "a named key dir was collected by a filtered survey"

    out = cli("gc")
    assert not (keys / "train-old").exists(), f"a full survey left a named pool's stray keys:\n{out}"
    assert (keys / "sky-r0000001").is_dir() and (keys / "train-rp").is_dir() and (keys / "Not_A_Pool").is_dir()
    assert (keys / "sky-link0001").is_symlink() and (target / "precious.txt").exists()


# -- 3. pool records outlive the login session's runtime dir ------------------------------------------------
def test_a_pool_record_outlives_the_runtime_dir(tmp_path, monkeypatch):
    runtime = Path(tempfile.mkdtemp(prefix="x", dir="/tmp"))  # short: XDG_RUNTIME_DIR is used up to 16 characters
    try:
        monkeypatch.delenv(pool_state.ENV_RUNTIME_DIR)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        assert pool_state.runtime_root() == runtime / "sky"
        written = pool_state.write_record(record("train-1", "local", pool_state.Owner.current()))  # as `up` does
        assert written.parent.parent == pool_state.state_root() == tmp_path / "state" / "skyward"
        assert oct(pool_state.state_root().stat().st_mode & 0o777) == "0o700"
        assert oct(written.stat().st_mode & 0o777) == "0o600"
        shutil.rmtree(runtime)  # logout: systemd removes the user's runtime dir
        found = pool_state.read_record("train-1")
        assert found is not None and found.owner == pool_state.Owner.current()
        assert "train-1" in pool_state.read_records()
        monkeypatch.delenv("XDG_STATE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert pool_state.state_root() == tmp_path / "home" / ".local" / "state" / "skyward"
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


# -- 4. names are checked whole (a trailing newline is not a name) ------------------------------------------
def test_a_trailing_newline_never_passes_a_name_check(tmp_path):
    with pytest.raises(ValueError):
        ssh_keys.cluster_key_dir("sky-abc\n", tmp_path)
    with pytest.raises(ValueError):
        ssh_keys.generate_keypair(tmp_path, "id_ed25519\n")
    with pytest.raises(ValueError):
        ssh_keys.known_hosts_entry("10.0.0.1\n", 22, "ssh-ed25519 AAAA")
    with pytest.raises(SpecError):
        DetachedSpec(name="train-1\n")
    with pytest.raises(ValueError):
        pool_state.record_path("sky-abc\n")
    assert not os.listdir(tmp_path)
    assert ssh_keys.cluster_key_dir("sky-abc", tmp_path).is_dir()
