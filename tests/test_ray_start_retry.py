"""A node whose `ray start` times out at boot starts Ray once more, and comes up.

Ray's raylet gives the dashboard agent 15 s to write its port file (a constant in its C++) and
aborts past it; `ray start` then fails the node. On a starved or cold machine the agent's imports
take longer (seen in CI: a container pool's node at load 15 on two cores). Here the agent really is
slow on the first attempt: a `sitecustomize` on the node's PYTHONPATH holds the agent's process,
before it imports anything of Ray, for longer than the raylet waits, once. A real `ray start` of
one node runs through `ray_start.py`, exactly as a boot script runs it; its processes are ended by
pid.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node_providers.local.ports import PORTS
from skyward_ray.node import ray_start

SLOW_AGENT = """
import os, sys, time
if sys.argv and sys.argv[0].endswith(os.path.join("dashboard", "agent.py")):
    marker = os.environ["SLOW_AGENT_MARKER"]
    if not os.path.exists(marker):  # the first agent of the node only
        open(marker, "w").close()
        time.sleep(120)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state, parent = stat.read().rsplit(")", 1)[1].split()[:2]
            if int(parent) == pid and state != "Z":
                found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, killed but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_node_whose_ray_start_times_out_starts_ray_once_more_and_comes_up(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_AGENT)
    repository = Path(__file__).parents[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), ray_start.NO_RAY_CLIENT_SERVER_ENV: "1",
           "SLOW_AGENT_MARKER": str(tmp_path / "agent-was-slow"),
           "PYTHONPATH": f"{tmp_path / 'site'}:{repository}"}
    env.pop(ray_start.SECOND_ATTEMPT_ENV, None)
    program = Path(ray_start.__file__).read_text()
    ray_dir = tempfile.mkdtemp(prefix="rs-")  # short: Ray's socket paths must fit in 107 bytes
    node = subprocess.Popen(
        [sys.executable, "-c", program, "head", "start", "--head", f"--port={PORTS.free_port('127.0.0.1')}",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={ray_dir}",
         "--num-cpus=1", "--object-store-memory=78643200", *PORTS.colocated_port_args("127.0.0.1")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while _comm(node.pid) != "bash" and node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _comm(node.pid) == "bash", "the node never came up; its output:\n" + (
            node.communicate(timeout=30)[0] if node.poll() is not None else "(still starting)")
        assert (tmp_path / "agent-was-slow").exists()
        ray_processes = [pid for pid in _children(node.pid) if _comm(pid) != "sleep"]  # not the watch's own
        assert "raylet" in [_comm(pid) for pid in ray_processes]
        time.sleep(3)
        assert node.poll() is None and all(_comm(pid) for pid in ray_processes)  # up, and staying up
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)  # the watch ends Ray's processes, as on a node's teardown
        try:
            lines = node.communicate(timeout=60)[0].splitlines()
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            lines = node.communicate()[0].splitlines()
        shutil.rmtree(ray_dir, ignore_errors=True)
    retried = [line for line in lines if line.startswith("skyward: ray start failed")]
    assert len(retried) == 1 and "timed out during startup" in retried[0]
    assert "starting ray once more" in retried[0]
    assert any("Ray runtime started" in line for line in lines[lines.index(retried[0]):])
    assert node.returncode == 143
    left = [f"{pid} {_comm(pid)}" for pid in ray_processes if _running(pid)]
    assert not left  # the watch ended them all
