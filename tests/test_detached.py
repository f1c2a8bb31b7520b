"""Detached pools (`skyward-ray up`, `sky.Compute(...).up()`, `sky.attach`), as a `ray up` user sees them.

Every pool here is real: a keeper process brings it up through `sky.Compute`'s own path and owns it;
the Ray code that uses it runs in separate processes that know only `RAY_ADDRESS` and the token (as
`eval "$(skyward-ray env NAME)"` sets them). Each test ends with nothing left: no keeper, no node
process, no state file.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

import skyward_ray as sky
from skyward_ray.cli import app
from skyward_ray.cluster import activity, pool_state
from skyward_ray.cluster.driver import DriverConnection
from tests.conftest import REPO, pool_processes
from tests.timeouts import SIM_BOOT_TIMEOUT

CLI = "from skyward_ray.cli import app; app()"


def cli(*args: str, check: bool = True) -> Any:
    """`skyward-ray ARGS`, in this process (typer's runner): the keepers `up` starts are processes of their own."""
    done = CliRunner().invoke(app, list(args))
    if check:
        assert done.exit_code == 0, f"skyward-ray {' '.join(args)} failed:\n{done.output}"
    return done


def cli_start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def pool_env(name: str) -> dict[str, str]:
    """What `eval "$(skyward-ray env NAME)"` puts in a shell's environment."""
    found = {}
    for line in cli("env", name).output.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        found[key] = value.strip("'")
    return found


# An unmodified Ray script: it knows nothing of skyward (plain `ray.init()` reads RAY_ADDRESS).
RAY_SCRIPT = """
import json, sys, ray
ray.init()

@ray.remote
def square(x):
    return x * x

mark = sys.argv[1]
if mark.startswith("put:"):  # leave a named actor behind (0 CPUs: it holds no resources)
    @ray.remote(num_cpus=0)
    class Marker:
        def ping(self): return "here"
    Marker.options(name=mark[4:], namespace="iso", lifetime="detached").remote().ping.remote()
    ray.get(ray.get_actor(mark[4:], namespace="iso").ping.remote())
try:
    ray.get_actor("marker-a", namespace="iso")
    sees = True
except ValueError:
    sees = False
print("RESULT " + json.dumps({"sum": sum(ray.get([square.remote(i) for i in range(10)])),
      "nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]), "sees_marker_a": sees}))
"""


def run_ray_script(env: dict[str, str], mark: str) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    full_env.update(env)
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", RAY_SCRIPT, mark], capture_output=True, text=True, timeout=120,
                              env=full_env)
        # Ray 2.60's Ray Client now and then fails to start a client's server on the head (README); the
        # user runs the script again. Only that Ray error is retried, once.
        if "Starting Ray client server failed" not in done.stderr:
            break
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"the Ray script failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def status() -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(cli("status", "-p", "local", "--json").output)["pools"]}


def keeper_pid(name: str) -> int:
    record = pool_state.read_record(name)
    assert record is not None and record.kind == "keeper", record
    return record.owner.pid


def nodes_of(name: str) -> list[psutil.Process]:
    return [p for p in pool_processes() if (p.environ().get("SKYWARD_INSTANCE_ID") or "").startswith(name + "-")]


def assert_nothing_left(name: str, keeper: int | None = None) -> None:
    deadline = time.monotonic() + 15
    while nodes_of(name) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert nodes_of(name) == [], f"processes of pool {name} are left"
    assert pool_state.read_record(name) is None, "the pool's state file is left"
    if keeper is not None:
        assert not psutil.pid_exists(keeper) or psutil.Process(keeper).status() == psutil.STATUS_ZOMBIE
    assert not any(entry.is_dir() and (entry / "cluster").is_file() and (entry / "cluster").read_text() == name
                   for entry in pool_state.runtime_root().iterdir()), "the local pool's directory is left"


@pytest.fixture
def names():
    """Unique pool names for one test; whatever they left is ended afterwards (by keeper pid, then gc)."""
    made = [f"sky-t{secrets.token_hex(3)}{i}" for i in range(3)]  # sky-*: what the leftover checks look for
    yield made
    for name in made:
        record = pool_state.read_record(name)
        if record is not None and record.owner.alive():
            os.kill(record.owner.pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while record.owner.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
    if any(pool_state.read_record(n) for n in made):
        cli("gc", "-p", "local", check=False)


@sky.function
def square(x: int) -> int:
    return x * x


@sky.function
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@sky.function
def node_index() -> int:
    return sky.instance_info().node


def test_up_then_plain_ray_code_and_ray_job_submit_then_down_leave_nothing_and_two_pools_are_isolated(names):
    a, b, _ = names
    t0 = time.monotonic()
    up_a = cli_start("up", a, "--dashboard", "--idle-timeout", "10m")  # both at once, as two shells would
    up_b = cli_start("up", b, "-n", "2", "--no-dashboard")
    out_a, out_b = up_a.communicate(timeout=240)[0], up_b.communicate(timeout=240)[0]
    assert up_a.returncode == 0 and up_b.returncode == 0, out_a + out_b
    print(f"two pools up (1 node with a dashboard, 2 nodes) in {time.monotonic() - t0:.1f}s")
    env_a, env_b = pool_env(a), pool_env(b)
    assert f"RAY_ADDRESS={env_a['RAY_ADDRESS']}" in out_a and f'eval "$(skyward-ray env {a})"' in out_a
    assert env_a["RAY_AUTH_TOKEN"] not in out_a, "`up` never prints the token"
    assert env_a["RAY_AUTH_TOKEN"] != env_b["RAY_AUTH_TOKEN"] and env_a["RAY_ADDRESS"] != env_b["RAY_ADDRESS"]
    assert "RAY_API_SERVER_ADDRESS" in env_a and "RAY_API_SERVER_ADDRESS" not in env_b
    record = pool_state.record_path(a)
    assert oct(record.stat().st_mode & 0o777) == "0o600" and env_a["RAY_AUTH_TOKEN"] in record.read_text()
    assert oct(pool_state.runtime_root().stat().st_mode & 0o777) == "0o700"
    log = pool_state.runtime_root() / "keepers" / f"{a}.log"
    assert oct(log.stat().st_mode & 0o777) == "0o600" and env_a["RAY_AUTH_TOKEN"] not in log.read_text()

    rows = status()
    assert rows[a]["kind"] == rows[b]["kind"] == "keeper" and rows[a]["driver"] == "live"
    assert rows[a]["nodes"] == 1 and rows[b]["nodes"] == 2 and rows[b]["hourly_cost"] == 0.0
    assert rows[a]["cost"] is not None and rows[a]["idle"] is not None
    table = cli("status", "-p", "local").output
    assert "idle" in table and "cost" in table and "keeper live" in table

    # the same name again, while that pool lives: refused before anything is started
    again = cli("up", a, check=False)
    assert again.exit_code == 2 and f"name={a!r} is already used by a live pool" in again.output

    t1 = time.monotonic()
    seen_a = run_ray_script(env_a, "put:marker-a")
    print(f"an unmodified Ray script on pool a: {time.monotonic() - t1:.1f}s")
    seen_b = run_ray_script(env_b, "look")
    assert seen_a["sum"] == seen_b["sum"] == 285
    assert len(seen_a["nodes"]) == 1 and len(seen_b["nodes"]) == 2
    assert not set(seen_a["nodes"]) & set(seen_b["nodes"]), "each pool sees only its own nodes"
    assert seen_a["sees_marker_a"] and not seen_b["sees_marker_a"], "an actor of pool a is not in pool b"

    # `ray job submit`, unchanged, with the environment `skyward-ray env` gives
    job_env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}, **env_a}
    t2 = time.monotonic()
    job = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--",
                          sys.executable, "-c", "import ray; ray.init(); print('JOB', ray.cluster_resources()['CPU'])"],
                         capture_output=True, text=True, timeout=120, env=job_env)
    assert job.returncode == 0 and "JOB " in job.stdout, job.stdout + job.stderr
    print(f"ray job submit round trip: {time.monotonic() - t2:.1f}s")

    # a notebook's way in: attach by name, use, leave (the pool stays)
    with sky.attach(b) as pool:
        assert square(7) >> pool == 49
        assert node_index() @ pool == [0, 1]
        assert [n.index for n in pool.nodes] == [0, 1] and all(n.provider == "local" for n in pool.nodes)
        assert sky.gather(square(2), square(3)) >> pool == [4, 9]
    assert os.environ.get("RAY_AUTH_TOKEN") is None and status()[b]["driver"] == "live"

    keepers = {a: keeper_pid(a), b: keeper_pid(b)}
    t3 = time.monotonic()
    assert f"local {a}: gone" in cli("down", a, "-p", "local").output
    assert f"local {b}: gone" in cli("down", b, "-p", "local").output
    print(f"two pools down in {time.monotonic() - t3:.1f}s")
    assert_nothing_left(a, keepers[a])
    assert_nothing_left(b, keepers[b])
    assert a not in status() and b not in status()


def test_a_pool_from_python_ends_on_its_own_once_idle(names):
    name = names[0]
    pool = sky.Compute(nodes=1).up(name, idle_timeout="5s", max_lifetime="10m").connect()  # joined at once
    keeper = keeper_pid(name)
    assert square(6) >> pool == 36
    time.sleep(6)  # longer than the idle timeout, but a client is attached: not idle
    assert pool_state.read_record(name) is not None, "ended while a client was attached"
    assert node_index() @ pool == [0]
    pool.close()  # leave: the idle clock starts
    left = time.monotonic()
    while psutil.pid_exists(keeper) and psutil.Process(keeper).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() - left < 40, "the idle pool did not end on its own"
        time.sleep(0.25)
    took = time.monotonic() - left
    print(f"an idle pool (idle timeout 5s) was gone {took:.1f}s after its last client left")
    assert_nothing_left(name, keeper)
    log = (pool_state.runtime_root() / "keepers" / f"{name}.log").read_text()
    assert "idle for 5s" in log and "gone" in log


def test_a_client_still_joining_keeps_an_idle_pool_up_and_one_that_gave_up_does_not(names):
    """A client counts from the moment it says it is joining, not only once `ray.init` has registered
    its job: on a loaded machine a join outlasts a short idle timeout, and a pool ended under a
    joining driver takes the driver's whole process with it (Ray's core worker exits it)."""
    name = names[0]
    sky.Compute(nodes=1).up(name, idle_timeout="5s", max_lifetime="10m")
    keeper = keeper_pid(name)
    state = pool_state.read_record(name).detached
    slow_client = DriverConnection(state["gcs_address"], state["ray_address"], state["auth_token"], None)
    try:
        gcs = slow_client.gcs_client()
        joining = activity.announce_joining(gcs)  # what `sky.attach(...)` says first; this client goes no further
        time.sleep(12)  # more than twice the idle timeout
        assert pool_state.read_record(name) is not None, "the pool ended while a client was joining"
        activity.withdraw_joining(gcs, joining)  # the client gave up
    finally:
        slow_client.disconnect()
    left = time.monotonic()
    while psutil.pid_exists(keeper) and psutil.Process(keeper).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() - left < 40, "the idle pool did not end once its only client gave up"
        time.sleep(0.25)
    assert_nothing_left(name, keeper)
    log = (pool_state.runtime_root() / "keepers" / f"{name}.log").read_text()
    assert "1 client joining" in log and "idle for 5s" in log, log


def test_a_call_on_an_attached_pool_that_is_ended_meanwhile_raises_instead_of_waiting(names):
    """`skyward-ray down` from another shell while this process waits on the pool: the wait raises
    within seconds (it had waited until Ray's core worker ended the process, minutes later)."""
    name = names[0]
    pool = sky.Compute(nodes=1).up(name, idle_timeout="none", max_lifetime="10m").connect()
    keeper = keeper_pid(name)
    assert square(6) >> pool == 36
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    down = subprocess.Popen(["bash", "-c", 'sleep 3; exec "$0" -c "$1" down "$2" -p local', sys.executable, CLI, name],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        started = time.monotonic()
        ended = f"pool '{name}' is ending|no detached pool named '{name}' is up \\(it has ended"
        with pytest.raises(sky.PoolClosedError, match=ended):
            nap(120) >> pool
        took = time.monotonic() - started
        assert took < 60, f"the wait raised only after {took:.0f}s"
        with pytest.raises(sky.PoolClosedError, match=ended):
            square(1) >> pool  # and so does the next call, at once
    finally:
        pool.close()
        said = down.communicate(timeout=120)[0]
    assert f"local {name}: gone" in said, said
    print(f"a wait on an attached pool raised {took:.1f}s after `down` was started (3 s of it a sleep)")
    assert_nothing_left(name, keeper)


def test_killing_the_keeper_ends_the_pool_within_the_heartbeat_grace_and_gc_tells_live_from_dead(names):
    name = names[0]
    up = cli("up", name, "--idle-timeout", "none", "--set", "heartbeat_grace=4")
    assert "it ends 8h after it came up" in up.output, "an explicit 'none' drops the idle clock, never the lifetime"
    gc = cli("gc", "-p", "local").output
    assert name not in gc and status()[name]["driver"] == "live", "gc leaves a pool whose keeper lives alone"

    keeper = keeper_pid(name)
    ray_nodes = nodes_of(name)
    assert ray_nodes
    os.kill(keeper, signal.SIGKILL)  # no teardown runs: the head's watchdog must notice
    killed = time.monotonic()
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ray_nodes):
        assert time.monotonic() - killed < 45, "the nodes outlived their keeper's heartbeat grace"
        time.sleep(0.25)
    took = time.monotonic() - killed
    print(f"the nodes ended themselves {took:.1f}s after their keeper was SIGKILLed (grace 4s)")
    row = status()[name]
    assert row["driver"] == "dead" and row["orphan"] and row["nodes"] == 0
    gc = cli("gc", "-p", "local").output
    assert f"ending local {name}" in gc and "gone" in gc
    assert_nothing_left(name, keeper)


def test_bad_input_is_refused_before_anything_starts(names):
    name = names[0]
    cases = [
        (["up", name, "-a", "H101"], "H101"),
        (["up", name, "--idle-timeout", "soon"], "idle_timeout='soon' is not a duration"),
        (["up", name, "--max-lifetime", "-1h"], "max_lifetime='-1h' is not a duration"),
        (["up", "Bad_Name"], "name='Bad_Name' cannot name a pool"),
        (["up", name, "--set", "no_such_field=1"], "no_such_field"),
        (["env", name], f"no detached pool named {name!r} is up"),
    ]
    for args, message in cases:
        done = cli(*args, check=False)
        assert done.exit_code != 0 and message in done.output, (args, done.output)
    assert not (pool_state.runtime_root() / "keepers" / f"{name}.log").exists(), "a keeper was started"
    assert pool_state.read_record(name) is None
    with pytest.raises(sky.SpecError, match="idle_timeout"):
        sky.Compute(nodes=1).up(name, idle_timeout="0s")
    with pytest.raises(sky.PoolClosedError, match="no detached pool"):
        sky.attach(name)


def test_a_cloud_pool_is_reached_through_the_keepers_ssh_tunnel(names, tmp_path):
    """Simulated AWS: the head is in its own network namespace; only its port 22 is reachable. The
    keeper holds the tunnel; an unmodified Ray script in another process uses `ray://127.0.0.1:P`."""
    from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws

    name = names[0]
    with simulated_aws("us-east-1") as (sim, hosts), aws_environment(sim.client_env()):
        config = sky.AWS(region="us-east-1", key_dir=str(tmp_path), ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
        t0 = time.monotonic()
        pool = sky.Compute(provider=config, accelerator="T4", nodes=1, boot_timeout=SIM_BOOT_TIMEOUT).up(name, idle_timeout="10m")
        print(f"a simulated-AWS pool up through its keeper in {time.monotonic() - t0:.1f}s")
        keeper = keeper_pid(name)
        env = pool.env
        assert env["RAY_ADDRESS"].startswith("ray://127.0.0.1:")
        tunnels = [p for p in psutil.Process(keeper).children(recursive=True) if p.name() == "ssh"]
        assert len(tunnels) == 1, "the keeper holds the SSH tunnel"
        record_text = pool_state.record_path(name).read_text()
        for secret in ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"):
            value = os.environ.get(secret)
            assert value is None or value not in record_text, "no cloud credential in the state file"
        seen = run_ray_script(env, "look")
        assert seen["sum"] == 285 and len(seen["nodes"]) == 1
        assert square(5) >> pool == 25  # sky.attach's Ray Client driver, through the same tunnel
        assert [n.index for n in pool.nodes] == [0] and pool.nodes[0].provider == "aws"
        pool.down()
        assert not psutil.pid_exists(keeper) or psutil.Process(keeper).status() == psutil.STATUS_ZOMBIE
        assert sim.live_instances(cluster=name) == [] and sim.security_groups(cluster=name) == []
        assert pool_state.read_record(name) is None
        assert not os.path.exists(os.path.join(tmp_path, name)), "the cluster's keys are removed"
        assert hosts.wait_idle() == []
