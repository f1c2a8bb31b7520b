"""The boot script ends its machine by itself: a real bash running the rendered script, with a stub
interpreter standing in for Python and Ray (no Ray process starts; each case takes seconds).

The machine's "power off" is the shutdown command a cloud would give: here it records that it ran
and ends the script's process group, as a powered-off machine ends everything on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skyward_ray import names
from skyward_ray.errors import SpecError
from skyward_ray.node import startup_script

# Answers the boot script's interpreter calls: the version check passes; `ray start` (head or
# worker: its packed program's arguments) and the watchdog (the one started with SKYWARD_WATCH_*
# in its environment; its program is packed too) run for as long as the test says.
STUB_PYTHON = """#!/bin/bash
[ -n "${SKYWARD_WATCH_RAY_PID:-}" ] && exec sleep "$STUB_WATCHDOG_S"
case "$*" in
  *" head start --disable-usage-stats"*|*" worker start --disable-usage-stats"*)
    echo "index=${SKYWARD_NODE_INDEX:-} $*" > "$SKYWARD_MACHINE_DIR/ray-start"
    exec sleep "$STUB_RAY_S" ;;
esac
exit 0
"""


def boot(tmp_path: Path, role: str = "head", **overrides) -> str:
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    fields = dict(role=role, cluster_name="sky-boottest", auth_token="t", python=str(stub), requirements=[],
                  head_ip="127.0.0.1" if role == "worker" else None,
                  shutdown_command='echo ended >> "$SKYWARD_MACHINE_DIR/powered-off"; kill -KILL -- -$$')
    fields.update(overrides)
    return startup_script.render(startup_script.NodeBoot(**fields))


def run_machine(tmp_path: Path, script: str, ray_s: float = 60, watchdog_s: float = 60,
                timeout: float = 20, path_first: Path | None = None,
                extra_env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run the script as a machine (its own process group); returns (seconds until it ended, its log).
    `path_first`: a directory of stand-in commands searched before the system's."""
    machine = tmp_path / "machine"
    machine.mkdir(exist_ok=True)
    (tmp_path / "startup.sh").write_text(script)
    path = os.environ["PATH"] if path_first is None else f"{path_first}:{os.environ['PATH']}"
    env = {"PATH": path, "HOME": str(machine), "SKYWARD_MACHINE_DIR": str(machine),
           "SKYWARD_INSTANCE_ID": "i-boottest", "SKYWARD_NODE_IP": "127.0.0.1",
           "STUB_RAY_S": str(ray_s), "STUB_WATCHDOG_S": str(watchdog_s), **(extra_env or {})}
    started = time.monotonic()
    proc = subprocess.Popen(["bash", str(tmp_path / "startup.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - started, output


def powered_off(tmp_path: Path) -> int:
    marker = tmp_path / "machine" / "powered-off"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_when_ray_exits_the_machine_powers_off(tmp_path):
    took, log = run_machine(tmp_path, boot(tmp_path), ray_s=0.5)
    assert powered_off(tmp_path) == 1 and "ray exited" in log and took < 5


def test_when_the_watchdog_exits_the_machine_powers_off(tmp_path):
    took, log = run_machine(tmp_path, boot(tmp_path), ray_s=60, watchdog_s=0.5)
    assert powered_off(tmp_path) == 1 and "the watchdog exited" in log and took < 5


def test_a_script_that_fails_part_way_powers_off_through_its_exit_trap(tmp_path):
    stubs = tmp_path / "bin"  # a package that is not installed, and an apt-get that fails
    stubs.mkdir()
    for name in ("dpkg-query", "apt-get"):
        (stubs / name).write_text("#!/bin/sh\nexit 100\n")
        (stubs / name).chmod(0o755)
    took, log = run_machine(tmp_path, boot(tmp_path, apt=["a-package"]), path_first=stubs)
    assert powered_off(tmp_path) >= 1 and "apt install failed" in log


def test_no_heartbeat_within_the_boot_deadline_powers_off(tmp_path):
    took, log = run_machine(tmp_path, boot(tmp_path, boot_deadline=2), ray_s=60, watchdog_s=60)
    assert powered_off(tmp_path) == 1 and "boot not done within 2s" in log
    assert 2 <= took < 6


def test_a_worker_that_reached_its_head_is_not_ended_by_the_boot_deadline(tmp_path):
    script = boot(tmp_path, role="worker", boot_deadline=1)
    (tmp_path / "machine").mkdir()
    (tmp_path / "machine" / "skyward-boot-done").touch()  # what the worker writes once the head answers
    took, log = run_machine(tmp_path, script, ray_s=3)
    assert "boot not done" not in log and "ray exited" in log and took >= 3


def test_a_machine_that_booted_before_powers_off_instead_of_coming_back_half_configured(tmp_path):
    script = boot(tmp_path)
    run_machine(tmp_path, script, ray_s=0.2)
    assert powered_off(tmp_path) == 1
    took, log = run_machine(tmp_path, script, ray_s=60)  # a reboot, or a container restart, runs it again
    assert powered_off(tmp_path) == 2 and "has booted before" in log and "starting ray" not in log and took < 5


@pytest.mark.parametrize("role", ["head", "worker"])
def test_every_aws_user_data_carries_a_reboot_guard(role):
    from node_providers.aws.cloud import user_data
    from skyward_ray.cluster.contract import MachineRequest
    from tests.simaws.hosts import split_user_data

    request = MachineRequest(index=0 if role == "head" else 1, role=role, tags={}, boot_script="#!/bin/bash\ntrue\n")
    config, script = split_user_data(user_data(request))
    assert script == request.boot_script
    [guard] = config["bootcmd"]
    assert "shutdown -h now" in guard[-1] and "skyward-first-boot" in guard[-1]
    # no host key travels: cloud-init replaces the image's (shared by every instance of the AMI) with a fresh one
    assert "ssh_keys" not in config and config["ssh_deletekeys"] is True and config["ssh_genkeytypes"] == ["ed25519"]


def _batch_worker(tmp_path: Path) -> str:
    """A worker's script as `launch_many` renders it for every machine of a batch starting at node 5."""
    (tmp_path / "machine").mkdir(exist_ok=True)
    (tmp_path / "machine" / "skyward-boot-done").touch()  # the head answered (the stub starts no Ray)
    return boot(tmp_path, role="worker", first_index=5, launch_index_shell="${STUB_LAUNCH_INDEX}",
                shell_labels={names.NODE_INDEX: f"${names.ENV_NODE_INDEX}"})


def test_a_worker_of_a_batch_takes_the_first_index_plus_its_launch_index(tmp_path):
    took, log = run_machine(tmp_path, _batch_worker(tmp_path), ray_s=0.5, extra_env={"STUB_LAUNCH_INDEX": "2"})
    started = (tmp_path / "machine" / "ray-start").read_text()
    assert started.startswith("index=7 "), started  # what `sky.instance_info().node` reads on the node
    assert f"{names.NODE_INDEX}=7" in started, "Ray's node label holds the same index"


def test_a_worker_of_a_batch_that_cannot_read_its_launch_index_powers_off_before_ray(tmp_path):
    took, log = run_machine(tmp_path, _batch_worker(tmp_path), extra_env={"STUB_LAUNCH_INDEX": ""})
    assert powered_off(tmp_path) == 1 and "no launch index from the cloud" in log and took < 5
    assert "starting ray" not in log and not (tmp_path / "machine" / "ray-start").exists()


def test_a_batch_needs_both_its_first_index_and_the_launch_index_and_only_workers_have_one(tmp_path):
    with pytest.raises(SpecError, match="first_index"):
        boot(tmp_path, role="worker", first_index=1)
    with pytest.raises(SpecError, match="first_index"):
        boot(tmp_path, role="head", first_index=1, launch_index_shell="0")


# What a node's `ray start` becomes once Ray's processes are up (`ray_start.py`): this process starts
# two stand-ins for Ray's processes, then execs into the watch over its children, as `ray start` does.
WATCHED_NODE = """
import os, subprocess, sys
from skyward_ray.node import ray_start
for _ in range(2):
    subprocess.Popen(["sleep", "60"])
watched = ray_start.started()
print(" ".join(watched), flush=True)
os.execvp("bash", ["bash", "-c", ray_start.WATCH, "skyward-ray-watch", *watched])
"""


def _watched_node() -> tuple[subprocess.Popen, list[int]]:
    """The stand-in node, once it has become the watch (a bash), and its two stand-in Ray processes."""
    node = subprocess.Popen([sys.executable, "-c", WATCHED_NODE], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    ray_processes = [int(pid) for pid in node.stdout.readline().split()]
    deadline = time.monotonic() + 20
    while Path(f"/proc/{node.pid}/comm").read_text().strip() != "bash" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # its traps are set as bash starts the script
    return node, ray_processes


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_when_one_of_rays_processes_exits_the_watch_ends_the_others_and_exits_1():
    node, ray_processes = _watched_node()
    try:
        assert len(ray_processes) == 2 and not any(_gone(pid) for pid in ray_processes)
        os.kill(ray_processes[0], signal.SIGKILL)  # a Ray process dies: the watch reaps it, sees it gone
        assert node.wait(timeout=20) == 1
        assert all(_gone(pid) for pid in ray_processes)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)


def test_sigterm_to_the_watch_stops_every_ray_process_as_ray_start_block_did():
    node, ray_processes = _watched_node()
    try:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=20) == 143
        assert all(_gone(pid) for pid in ray_processes)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)


# Ray's `ray start` looks its node up in the GCS for 30 s (a constant in Ray's Node.__init__), then
# fails the node. `ray_start.py` makes that lookup wait while the raylet Ray started is alive (a
# real raylet that died is started again: tests/test_ray_start_retry.py). Here
# a stand-in node starts a stand-in raylet (a program named `raylet`: its name is what is checked)
# and a stand-in for Ray's lookup that fails until the raylet "registers" or the raylet dies.
STALLED_REGISTRATION = """
import os, shutil, subprocess, sys, tempfile, time, types
from skyward_ray.node import ray_start
raylet_path = os.path.join(tempfile.mkdtemp(), "raylet")
shutil.copy(shutil.which("sleep"), raylet_path)
raylet = subprocess.Popen([raylet_path, "60"])
registers_after, dies_after = float(sys.argv[1]), float(sys.argv[2])
began = time.monotonic()
def get_node(gcs_address, node_id):
    if time.monotonic() - began >= dies_after and raylet.poll() is None:
        raylet.kill()  # not reaped here: a zombie, as a raylet that crashed is until Ray reaps it
    if time.monotonic() - began < registers_after:
        raise RuntimeError("Failed to get node info")
    return {"NodeID": node_id}
services = types.SimpleNamespace(get_node=get_node)
ray_start._patient_node_lookup(services, ray_start._Raylet())  # no raylet of Ray's to start again
try:
    print(services.get_node("10.0.0.1:6379", "n1"), flush=True)
except RuntimeError as e:
    print("failed:", e, flush=True)
finally:
    raylet.kill()
    shutil.rmtree(os.path.dirname(raylet_path))
print(f"after {time.monotonic() - began:.1f}s", flush=True)
"""


def _stalled_registration(registers_after: float, dies_after: float) -> list[str]:
    done = subprocess.run([sys.executable, "-c", STALLED_REGISTRATION, str(registers_after), str(dies_after)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_slow_raylet_is_waited_for_while_it_runs():
    *_, found, took = _stalled_registration(registers_after=3, dies_after=999)
    assert found == "{'NodeID': 'n1'}"
    assert 3 <= float(took.split()[1].rstrip("s")) < 20  # 20: a starved machine, not the 300 s cap


def test_a_raylet_that_died_fails_the_lookup_at_once():
    found, took = _stalled_registration(registers_after=999, dies_after=1)
    assert found == "failed: Failed to get node info"
    assert 1 <= float(took.split()[1].rstrip("s")) < 20  # not the 300 s cap


def test_rays_node_start_still_looks_its_node_up_and_starts_its_raylet_where_ray_start_py_hooks_in():
    """What the patience above and the raylet's second start hook into; a Ray upgrade that moved them
    would make a slow or aborted raylet fatal again."""
    import inspect

    import ray._private.node

    source = inspect.getsource(ray._private.node.Node.__init__)
    assert "ray._private.services.get_node(" in source and "raylet_start_wait_time_s" in source
    assert "self.start_raylet(" in inspect.getsource(ray._private.node.Node.start_ray_processes)
    start_raylet = inspect.getsource(ray._private.node.Node.start_raylet)
    assert "self.all_processes[ray_constants.PROCESS_TYPE_RAYLET]" in start_raylet
    assert ray._private.node.ray_constants.PROCESS_TYPE_RAYLET == "raylet"
