"""The host simulator: every instance the simulated region runs becomes a local process that boots itself.

A background thread polls DescribeInstances (like a hypervisor watching its placement queue). For
each new running instance it reads the instance's user data and runs it with
`node_providers.process_host.ProcessHost.boot`, bound to the instance's private address (a
loopback address in the simulated VPC). When EC2 says an instance is shutting down or terminated
(our provider, the test, or a spot interruption ended it), the process group is ended.

The host's environment stands in for the machine:

- `SKYWARD_INSTANCE_ID`, `SKYWARD_NODE_IP` are set, so the startup script
  never asks the instance metadata service (and a `curl` shim refuses 169.254.169.254 anyway);
- PATH starts with a directory of shims: `shutdown`, `poweroff`, `halt` ask the simulator to end
  *this instance* (what EC2 does on an instance-initiated shutdown: terminate or stop, per the
  instance's InstanceInitiatedShutdownBehavior). The real `shutdown` can never run on this machine.
- then `dirname(sys.executable)`, so `python3` is this venv's Python with the same Ray, and the
  startup script finds the image already satisfied.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from node_providers.local.process_host import ProcessHost

_SHUTDOWN_SHIM = """#!/bin/sh
# simulated host: an instance-initiated shutdown of $SKYWARD_INSTANCE_ID (never this machine's shutdown)
echo "simaws: $(basename "$0") $* on $SKYWARD_INSTANCE_ID"
: > "$SIMAWS_SHUTDOWN_DIR/$SKYWARD_INSTANCE_ID"
exit 0
"""
_CURL_SHIM = """#!/bin/sh
# simulated host: the instance metadata service does not exist here; refuse it loudly
for arg in "$@"; do
  case "$arg" in *169.254.*) echo "simaws: refused to contact the metadata service: $arg" >&2; exit 7;; esac
done
PATH="$SIMAWS_REAL_PATH" exec curl "$@"
"""
SHIM_NAMES = ("shutdown", "poweroff", "halt", "reboot")


class HostSimulator:
    """Boots and ends simulated machines for the instances of one simulated region."""

    def __init__(self, sim: Any, boot_delay: float = 0.0, poll_interval: float = 0.15) -> None:
        self.sim = sim
        self.boot_delay = boot_delay
        self.poll_interval = poll_interval
        self.root = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))  # short: Ray's unix sockets live below
        self.shim_dir = self.root / "bin"
        self.shutdown_dir = self.root / "shutdown-requests"
        self.host = ProcessHost(self.root / "m")
        self.booted: dict[str, float] = {}  # instance id → when its machine was started
        self.boot_seconds: dict[str, float] = {}  # instance id → seconds from first seen running to boot
        self.booted_at: dict[str, float] = {}  # instance id → wall-clock time its machine was started
        self.ended: set[str] = set()
        self.errors: list[str] = []
        self._first_seen: dict[str, float] = {}
        self._ignore: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._write_shims()

    def _write_shims(self) -> None:
        self.shim_dir.mkdir(parents=True)
        self.shutdown_dir.mkdir()
        for name in SHIM_NAMES:
            path = self.shim_dir / name
            path.write_text(_SHUTDOWN_SHIM)
            path.chmod(0o755)
        curl = self.shim_dir / "curl"
        curl.write_text(_CURL_SHIM)
        curl.chmod(0o755)

    @property
    def path(self) -> str:
        return os.pathsep.join([str(self.shim_dir), os.path.dirname(sys.executable), os.environ.get("PATH", "")])

    def start(self) -> "HostSimulator":
        """Start watching; instances that exist already are not this simulator's to boot."""
        self._ignore = {i["InstanceId"] for i in self.sim.instances()}
        self._thread = threading.Thread(target=self._run, name="simaws-hosts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        """Stop watching and end every machine still running; returns their ids (a test may assert none)."""
        if self._stop.is_set():
            return []
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        left = self.running()
        if left:
            self.host.terminate(left)
        shutil.rmtree(self.root, ignore_errors=True)
        return left

    def running(self) -> list[str]:
        return [i for i in self.host.machines() if self.host.is_running(i)]

    def wait_idle(self, timeout: float = 15.0, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Wait until no machine except `keep` runs; returns those still running after `timeout`."""
        deadline = time.monotonic() + timeout
        left = [i for i in self.running() if i not in keep]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [i for i in self.running() if i not in keep]
        return left

    # -- the watch loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._step()
            except Exception as error:  # the region may be shutting down; keep the loop alive
                self.errors.append(f"{type(error).__name__}: {error}")

    def _step(self) -> None:
        self._handle_shutdown_requests()
        now = time.monotonic()
        for instance in self.sim.instances():
            instance_id = instance["InstanceId"]
            state = instance["State"]["Name"]
            if instance_id in self._ignore:
                continue
            if state == "running" and instance_id not in self.booted:
                first = self._first_seen.setdefault(instance_id, now)
                if now - first >= self.boot_delay:
                    self._boot(instance, now - first)
            elif state in ("shutting-down", "terminated", "stopping", "stopped") and instance_id in self.booted \
                    and instance_id not in self.ended:
                self.ended.add(instance_id)
                self.host.terminate([instance_id])

    def _boot(self, instance: dict[str, Any], waited: float) -> None:
        instance_id = instance["InstanceId"]
        ec2 = self.sim.client()
        data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = base64.b64decode(data.get("UserData", {}).get("Value", "")).decode()
        env = {
            "PATH": self.path,
            "SIMAWS_REAL_PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SIMAWS_SHUTDOWN_DIR": str(self.shutdown_dir),
        }
        self.booted[instance_id] = time.monotonic()
        self.booted_at[instance_id] = time.time()
        self.boot_seconds[instance_id] = waited
        self.host.boot(instance_id, script, instance["PrivateIpAddress"], env=env)

    def _handle_shutdown_requests(self) -> None:
        """An instance ran `shutdown`: EC2 terminates or stops it, as its shutdown behaviour says."""
        for request in list(self.shutdown_dir.iterdir()):
            instance_id = request.name
            with contextlib.suppress(OSError):
                request.unlink()
            ec2 = self.sim.client()
            behaviour = ec2.describe_instance_attribute(
                InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
            )["InstanceInitiatedShutdownBehavior"]["Value"]
            if behaviour == "terminate":
                ec2.terminate_instances(InstanceIds=[instance_id])
            else:
                ec2.stop_instances(InstanceIds=[instance_id])

    def log(self, instance_id: str, lines: int = 40) -> str:
        return self.host.log_tail(instance_id, lines)
