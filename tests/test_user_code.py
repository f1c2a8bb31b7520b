"""The user's own code reaches every node without installing anything (issue 9).

The user's project lives in a temp directory that is on the *driver's* PYTHONPATH only; the driver
is a subprocess started from another directory, so nothing of the project is on a node's path
unless the pool ships it. First the pieces without Ray (discovery, excludes, the size limit, the
Image fields), then real pools: local (2 nodes; a Tune sweep on 3) and the simulated AWS region.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import ray

import skyward_ray as sky
from skyward_ray.api import user_code
from tests.conftest import REPO, run_python, wait_for_line
from tests.timeouts import SIM_BOOT_TIMEOUT
from tests.usercode_fixture import write_user_project


@pytest.fixture
def project(tmp_path):
    code = write_user_project(tmp_path)
    sys.path.insert(0, str(code))
    try:
        yield code
    finally:
        sys.path.remove(str(code))
        for name in [n for n in sys.modules if n in ("jobs", "textutil") or n.startswith("jobs.")]:
            del sys.modules[name]


# -- without Ray ----------------------------------------------------------------------------------
def test_discovery_finds_the_users_modules_and_nothing_installed(project):
    import jobs  # noqa: F401  (imports textutil and jobs.maths)

    found = user_code.discover()
    assert found["jobs"] == [Path(os.path.realpath(project / "jobs"))]
    assert found["textutil"] == [Path(os.path.realpath(project / "textutil.py"))]
    assert not {"skyward_ray", "node_providers", "catalog", "ray", "pydantic", "os", "json"} & set(found)


def test_default_excludes_leave_out_venvs_caches_and_build_output(project):
    import jobs  # noqa: F401

    code = user_code.collect(sky.Image())
    shipped = {f.arcname for f in code.files if f.arcname.split("/")[0] in ("jobs", "textutil.py")}
    assert shipped == {"jobs/__init__.py", "jobs/maths.py", "textutil.py"}


def test_user_excludes_globs_paths_and_whole_modules(project):
    import jobs  # noqa: F401

    (project / "jobs" / "data").mkdir()
    (project / "jobs" / "data" / "a.csv").write_text("1,2\n")
    (project / "jobs" / "notes.csv").write_text("x\n")
    names = lambda code: {f.arcname for f in code.files}  # noqa: E731
    assert "jobs/data/a.csv" in names(user_code.collect(sky.Image()))
    assert not {"jobs/data/a.csv", "jobs/notes.csv"} & names(user_code.collect(sky.Image(excludes=["*.csv"])))
    assert "jobs/notes.csv" in names(user_code.collect(sky.Image(excludes=["jobs/data/*"])))
    assert "jobs/data/a.csv" not in names(user_code.collect(sky.Image(excludes=["data/"])))
    code = user_code.collect(sky.Image(excludes=["textutil"]))
    assert "textutil" in code.excluded and "textutil" not in code.roots and "jobs" in code.roots


def test_includes_add_paths_and_module_names(tmp_path, project):
    extra = tmp_path / "extra"
    (extra / "shared").mkdir(parents=True)
    (extra / "shared" / "__init__.py").write_text("X = 1\n")
    (extra / "lone.py").write_text("Y = 2\n")
    code = user_code.collect(sky.Image(includes=[str(extra / "shared"), str(extra / "lone.py"), "jobs"]))
    assert {"shared", "lone", "jobs"} <= set(code.roots)
    assert {"shared/__init__.py", "lone.py", "jobs/maths.py"} <= {f.arcname for f in code.files}
    staged = code.stage(tmp_path / "stage")
    assert {os.path.basename(p) for p in staged} >= {"shared", "lone.py", "jobs"}
    assert (tmp_path / "stage" / "jobs" / "maths.py").read_text().startswith("def double")


def test_image_fields_are_validated_with_the_fix():
    with pytest.raises(sky.SpecError, match=r"Image\.includes.*no_such_module_xyz.*Fix"):
        sky.Image(includes=["no_such_module_xyz"])
    with pytest.raises(sky.SpecError, match=r"Image\.includes.*not a \.py module"):
        sky.Image(includes=[str(REPO / "pyproject.toml")])
    with pytest.raises(sky.SpecError, match=r"Image\.excludes.*not a glob pattern"):
        sky.Image(excludes=[""])
    with pytest.raises(sky.SpecError, match=r"Image\.max_code_mib.*greater than 0.*Fix"):
        sky.Image(max_code_mib=0)
    with pytest.raises(sky.SpecError, match=r"Image\.includs.*did you mean 'includes'"):
        sky.Image(includs=["x"])


def test_an_oversized_include_is_refused_before_anything_is_provisioned(tmp_path):
    big = tmp_path / "bulky"
    big.mkdir()
    (big / "__init__.py").write_text("")
    (big / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (big / "small.bin").write_bytes(os.urandom(1024 * 1024))

    pool = sky.Compute(nodes=1, image=sky.Image(includes=[str(big)], max_code_mib=2))
    staged_before = _staging_dirs()
    clusters_before = _pool_dirs()
    started = time.monotonic()
    with pytest.raises(sky.SpecError) as caught:
        pool.__enter__()
    message = str(caught.value)
    assert "max_code_mib=2" in message and str(big / "weights.bin") in message
    assert message.index("weights.bin") < message.index("small.bin"), "largest first"
    assert "excludes=['bulky/weights.bin']" in message and '"*.bin"' in message
    assert time.monotonic() - started < 5
    assert _staging_dirs() == staged_before, "nothing was staged"
    clusters_after = _pool_dirs()
    assert clusters_after == clusters_before and not ray.is_initialized(), "no cluster was prepared or joined"


def _pool_dirs() -> set[str]:
    """Local pools' directories and pool state files (under this user's runtime root)."""
    from skyward_ray.cluster.pool_state import runtime_root

    root = runtime_root()
    return {str(p) for p in root.iterdir() if (p / "cluster").exists()} | {str(p) for p in root.glob("pools/*")}


def _staging_dirs() -> set[str]:
    import tempfile

    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("skyward-code-")}


# -- real pools, driven by a subprocess that has the project on its PYTHONPATH ---------------------
LOCAL_DRIVER = r'''
import json, os, sys
import ray
import skyward_ray as sky
import jobs
from jobs import JobError, Result, Summary, Counter, apply, fail, remote_square, run, summary, where_is_my_code

@sky.function
def in_main(x: int) -> int:
    return jobs.helper(x) * 10

class MainThing:
    def __init__(self, v): self.v = v

@sky.function
def make_main_thing(v):
    return MainThing(v)

out = {}
with sky.Compute(PROVIDER_AND_NODES) as pool:
    r = run(3) >> pool
    out["result"] = [type(r) is Result, r.value]
    out["every_node"] = sorted(x.node for x in run(1) @ pool)
    s = summary([1, 2, 3]) >> pool
    out["summary"] = [type(s) is Summary, s.total, s.label]
    try:
        fail("boom") >> pool
    except JobError as error:
        out["error"] = [type(error) is JobError, str(error)]
    out["lambda"] = apply(lambda v: v + 100, 1) >> pool
    out["main"] = in_main(2) >> pool
    thing = make_main_thing(5) >> pool
    out["main_class"] = [type(thing) is MainThing, thing.v]
    out["ray_remote"] = ray.get(remote_square.remote(4))
    counter = Counter.remote()
    ray.get(counter.add.remote(2))
    added = ray.get(counter.add.remote(3))
    out["actor"] = [type(added) is Result, added.value]
    out["nodes_view"] = where_is_my_code() @ pool
print("RESULT " + json.dumps(out), flush=True)
'''


def _drive(tmp_path: Path, provider_and_nodes: str, env: dict[str, str] | None = None,
           timeout: float = SIM_BOOT_TIMEOUT + 120) -> dict:
    code = write_user_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = LOCAL_DRIVER.replace("PROVIDER_AND_NODES", provider_and_nodes)
    proc = run_python(script, env={"PYTHONPATH": f"{REPO}{os.pathsep}{code}", **(env or {})}, cwd=str(elsewhere))
    try:
        result = json.loads(wait_for_line(proc, "RESULT ", timeout=timeout))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result["code_dir"] = str(code)
    return result


def _check(result: dict, nodes: int) -> None:
    assert result["result"] == [True, 7]
    assert result["every_node"] == list(range(nodes))
    assert result["summary"] == [True, 6, "DONE!"]
    assert result["error"] == [True, "boom"]
    assert result["lambda"] == 101
    assert result["main"] == 50
    assert result["main_class"] == [True, 5]
    assert result["ray_remote"] == 16
    assert result["actor"] == [True, 5]
    code = result["code_dir"]
    for node in result["nodes_view"]:
        assert not node["jobs"].startswith(code), "the node imported the shipped copy, not the driver's files"
        assert code not in node["path"] and not node["cwd"].startswith(code)
        assert node["files"] == ["__init__.py", "__pycache__", "maths.py"] or \
            node["files"] == ["__init__.py", "maths.py"], node["files"]


def test_users_code_reaches_local_nodes_from_a_driver_elsewhere(tmp_path):
    _check(_drive(tmp_path, "nodes=2"), 2)


EXCLUDED_DRIVER = r'''
import json
import skyward_ray as sky
import jobs
from jobs import JobError, Result, fail, run

with sky.Compute(nodes=1, image=sky.Image(excludes=["jobs"])) as pool:
    shipped = sorted(pool._code_modules)
    r = run(3) >> pool
    try:
        fail("by value") >> pool
    except JobError as error:
        caught = str(error)
print("RESULT " + json.dumps({"shipped": [p.rsplit("/", 1)[-1] for p in shipped],
                             "result": [type(r) is Result, r.value], "caught": caught}), flush=True)
'''


def test_an_excluded_package_falls_back_to_pickling_by_value(tmp_path):
    code = write_user_project(tmp_path)
    proc = run_python(EXCLUDED_DRIVER, env={"PYTHONPATH": f"{REPO}{os.pathsep}{code}"}, cwd=str(tmp_path))
    try:
        result = json.loads(wait_for_line(proc, "RESULT "))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result["shipped"] == ["textutil.py"], "jobs stays home"
    assert result["result"] == [True, 7] and result["caught"] == "by value"


TUNE_DRIVER = r'''
import json, tempfile
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
import skyward_ray as sky
import jobs

with sky.Compute(nodes=3) as pool:
    tuner = tune.Tuner(
        tune.with_resources(jobs.trainable, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2, 3, 4, 5, 6])},
        tune_config=tune.TuneConfig(scheduler=ASHAScheduler(metric="score", mode="max", max_t=3, grace_period=1)),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), name="sweep", verbose=0),
    )
    grid = tuner.fit()
    rows = [(r.metrics.get("node"), r.metrics.get("score"), r.metrics.get("marker"), r.error is None) for r in grid]
    ray_nodes = {n.ray_node_id for n in pool.nodes}
print("RESULT " + json.dumps({"rows": rows, "nodes": sorted(ray_nodes)}), flush=True)
'''


def test_a_tune_sweep_from_the_users_package_spreads_over_the_pool(tmp_path):
    code = write_user_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    started = time.monotonic()
    proc = run_python(TUNE_DRIVER, env={"PYTHONPATH": f"{REPO}{os.pathsep}{code}"}, cwd=str(elsewhere))
    try:
        result = json.loads(wait_for_line(proc, "RESULT "))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = result["rows"]
    assert len(rows) == 6 and all(ok for *_, ok in rows)
    assert all(marker == "T!" for _, _, marker, _ in rows), "the trainable used the shipped single-file module"
    used = {node for node, *_ in rows}
    assert used <= set(result["nodes"]) and len(used) >= 2, used
    print(f"tune sweep: {time.monotonic() - started:.1f}s, trials on {len(used)} nodes")


def test_users_code_reaches_simulated_aws_nodes_that_have_none_of_the_drivers_files(tmp_path):
    from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws

    keys = tmp_path / "keys"
    with simulated_aws("us-east-1") as (sim, hosts), aws_environment(sim.client_env()):
        provider = (f"provider=sky.AWS(region='us-east-1', key_dir={str(keys)!r}, ssh_cidr={hosts.ssh_cidr!r}, "
                    f"**{SIM_SETTINGS!r}), accelerator='T4', nodes=2, boot_timeout={SIM_BOOT_TIMEOUT}")
        result = _drive(tmp_path, provider, env=sim.client_env(), timeout=SIM_BOOT_TIMEOUT + 180)
        assert sim.live_instances() == [] and hosts.wait_idle() == []
        assert hosts.stop() == []
    _check(result, 2)
    for node in result["nodes_view"]:
        assert "py_modules_files" in node["jobs"], node["jobs"]
