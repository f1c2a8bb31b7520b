"""The local provider in the conformance suite: machines are process groups on this machine.

The "cloud's side" is the operating system: what bills is a live process carrying a skyward
instance marker, a pool's private directory and its state record; the cloud taking a machine away is its process
group being killed from outside.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

import skyward_ray as sky
from node_providers.local.process_host import INSTANCE_MARKER, end_processes, identified_processes, processes_with_marker
from skyward_ray.cluster import pool_state
from skyward_ray.cluster.contract import ClusterParams
from tests.conformance import Harness


def _run_dir() -> Path:
    return Path(tempfile.gettempdir())


def _home(proc: psutil.Process) -> str:
    try:
        return proc.environ().get("HOME", "")
    except psutil.Error:
        return ""


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    foreign: list[subprocess.Popen] = []

    def billable() -> dict[str, list[str]]:
        run_dir = str(_run_dir()) + "/"
        machines = sorted({machine for proc, machine in identified_processes()
                           if machine and _home(proc).startswith(run_dir)})
        root = pool_state.runtime_root()
        return {"processes": machines,
                "pool_dirs": sorted(p.parent.name for p in root.glob("*/machines.json")),
                "pool_records": sorted(p.name for p in (root / "pools").glob("*.json"))}

    def boot_payloads() -> list[str]:
        return [path.read_text() for path in pool_state.runtime_root().glob("*/**/startup.sh")]

    def interrupt(instance_id: str) -> None:
        # a host failure: every process of the machine at once, also one it was starting meanwhile
        # (a raylet forks workers all the time; one forked after a single listing would outlive it)
        deadline = time.monotonic() + 30
        while (left := processes_with_marker(instance_id)) and time.monotonic() < deadline:
            end_processes(left, grace=0)

    def explain(instance_id: str) -> str:
        described = []
        for proc in processes_with_marker(instance_id):
            with contextlib.suppress(psutil.Error):
                described.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:100]}")
        return f"{instance_id}: processes left: {described or 'none'}"

    def foreign_machine() -> str:
        # another tool's process group on this machine, marked the way skyward marks its machines
        identity = "foreign-0"
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                                env={**os.environ, INSTANCE_MARKER: identity, "HOME": str(_run_dir() / identity)})
        foreign.append(proc)
        return identity

    try:
        yield Harness(
            name="local",
            config=sky.Local(),
            params=lambda nodes=1, **kw: ClusterParams(auth_token="t" * 64, nodes=nodes, **kw),
            accelerator=None,
            billable=billable,
            boot_payloads=boot_payloads,
            secrets=[],
            interrupt=interrupt,
            fail_capacity=None,  # one machine, one offer: nothing to fall back to
            foreign_machine=foreign_machine,
            explain=explain,
        )
    finally:
        for proc in foreign:
            proc.kill()
            proc.wait(timeout=10)
