"""A worker whose `ray start` times out at boot starts Ray again, and joins; a head does not.

Ray's raylet gives the dashboard agent 15 s to write its port file (a constant in its C++) and
aborts past it; `ray start` then fails the node. On a starved or cold machine the agent's imports
take longer (seen in CI: a container pool's node at load 15 on two cores). Here the agent really is
slow on the first attempt: a `sitecustomize` on the node's PYTHONPATH holds the agent's process,
before it imports anything of Ray, for longer than the raylet waits, once. A real `ray start` of
head and a worker run through `ray_start.py`, exactly as a boot script runs it; their processes are
ended by pid. A head is not started over: its GCS would come back with a new cluster id, which the
driver's GCS client (and the head's watchdog) connected to the first one are refused by.
"""

from __future__ import annotations

import contextlib
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


def _node_env(tmp_path: Path, token: str, slow_agent: bool) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_AGENT)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           ray_start.NO_RAY_CLIENT_SERVER_ENV: "1", "SLOW_AGENT_MARKER": str(tmp_path / "agent-was-slow"),
           "PYTHONPATH": (f"{site}:" if slow_agent else "") + str(Path(__file__).parents[1])}
    env.pop(ray_start.ATTEMPT_ENV, None)
    return env


def _start(role: str, ip: str, ray_dir: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", Path(ray_start.__file__).read_text(), role, "start", f"--node-ip-address={ip}",
         f"--temp-dir={ray_dir}", "--num-cpus=1", "--object-store-memory=78643200", *PORTS.colocated_port_args(ip),
         *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _until_up_or_ended(node: subprocess.Popen, seconds: float = 240) -> bool:
    """Whether the node became its watch (Ray up) before it ended or `seconds` passed."""
    deadline = time.monotonic() + seconds
    while _comm(node.pid) != "bash" and node.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return _comm(node.pid) == "bash"


def _end(node: subprocess.Popen) -> list[str]:
    """SIGTERM (the watch ends Ray's processes, as on a node's teardown); its output's lines."""
    if hasattr(node, "output_lines"):  # ended before
        return node.output_lines
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
    try:
        lines = node.communicate(timeout=60)[0].splitlines()
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        lines = node.communicate()[0].splitlines()
    node.output_lines = lines  # type: ignore[attr-defined]
    return lines


def _kill_what_is_left(node: subprocess.Popen) -> None:
    """A `ray start` that failed leaves what it started running (a machine's boot script then powers
    it off): SIGKILL to its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)


ALIVE_NODES = """
import sys
from ray._raylet import GcsClient
print(sum(n.state == 0 for n in GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10).values()))
"""


def test_a_worker_whose_ray_start_times_out_starts_ray_again_and_joins(tmp_path):
    token = secrets.token_hex(32)
    ray_dir = tempfile.mkdtemp(prefix="rs-")  # short: Ray's socket paths must fit in 107 bytes
    gcs = f"127.0.0.1:{PORTS.free_port('127.0.0.1')}"
    head = _start("head", "127.0.0.1", f"{ray_dir}/h", _node_env(tmp_path, token, slow_agent=False), "--head",
                  f"--port={gcs.split(':')[1]}", "--include-dashboard=false")
    worker, ray_processes = None, []
    try:
        assert _until_up_or_ended(head), "the head never came up"
        worker_env = {**_node_env(tmp_path, token, slow_agent=True), "SKYWARD_HEAD_IP": "127.0.0.1",
                      "SKYWARD_GCS_PORT": gcs.split(":")[1], "SKYWARD_HEAD_WAIT": "60",
                      "SKYWARD_BOOT_DONE": str(tmp_path / "boot-done")}
        worker = _start("worker", "127.0.0.2", f"{ray_dir}/w", worker_env, f"--address={gcs}")
        assert _until_up_or_ended(worker), "the worker never came up:\n" + "\n".join(_end(worker))
        assert (tmp_path / "agent-was-slow").exists()
        ray_processes = [pid for pid in _children(worker.pid) if _comm(pid) != "sleep"]  # not the watch's own
        assert "raylet" in [_comm(pid) for pid in ray_processes]
        alive = subprocess.run([sys.executable, "-c", ALIVE_NODES, gcs], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert alive.stdout.strip() == "2", alive.stderr  # the head and the worker, once: no node of the failed try
    finally:
        worker_lines = _end(worker) if worker is not None else []
        left = [f"{pid} {_comm(pid)}" for pid in ray_processes if _running(pid)] if worker is not None else []
        _end(head)
        for node in (worker, head):
            if node is not None:
                _kill_what_is_left(node)
        shutil.rmtree(ray_dir, ignore_errors=True)
    retried = [line for line in worker_lines if line.startswith("skyward ray start: failed")]
    # the first attempt's agent was held; a later one may also miss Ray's 15 s on a machine this busy
    assert 1 <= len(retried) < ray_start.RAY_START_ATTEMPTS
    assert all("timed out during startup" in line for line in retried)
    assert retried[0].endswith(f"starting ray again (attempt 2 of {ray_start.RAY_START_ATTEMPTS})")
    assert any("Ray runtime started" in line for line in worker_lines[worker_lines.index(retried[-1]):])
    assert worker.returncode == 143
    assert not left  # its watch ended them all


def test_a_head_whose_ray_start_times_out_fails_as_ray_says_and_is_not_started_over(tmp_path):
    ray_dir = tempfile.mkdtemp(prefix="rs-")
    head = _start("head", "127.0.0.1", ray_dir, _node_env(tmp_path, secrets.token_hex(32), slow_agent=True), "--head",
                  f"--port={PORTS.free_port('127.0.0.1')}", "--include-dashboard=false")
    try:
        assert not _until_up_or_ended(head)
    finally:
        lines = _end(head)
        _kill_what_is_left(head)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert head.returncode == 1
    assert any("timed out during startup" in line for line in lines)
    assert not any("starting ray again" in line for line in lines)
