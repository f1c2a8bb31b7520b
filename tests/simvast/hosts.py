"""The host simulator for the local Vast.ai: every instance the fake says is running becomes a
machine that boots itself from its onstart script, as isolated as a container on a real host.

A background thread polls the fake's instances. For each new running instance it makes a host on
the simulated network (`tests.simnet`, as `tests.simaws.hosts` does):

- its own network namespace with the instance's address, and its public address on the public
  network; nothing reaches it from other instances' private side (Vast.ai instances on different
  hosts share no network); only the ports the create request opened (`"-p 2222:2222"` in `env`, plus 22 for the
  SSH launch mode) are reachable from outside, each at the host port Vast advertised in the
  instance's `ports` (a DNAT rule maps host port → container port, as Docker does on a host);
- the onstart script, run as the machine's root process group inside the namespace with exactly
  the environment Vast gives a container: `CONTAINER_ID`, `CONTAINER_API_KEY` (the instance-scoped
  key, not the user's), `PUBLIC_IPADDR`, `VAST_TCP_PORT_<port>`, `VAST_CONTAINERLABEL` and the
  request's own variables, with its own HOME and nothing of the driver's environment. PATH holds
  the system's directories, the base Python interpreter (an image's system Python) and `uv`; the
  node builds its Python environment offline from `tests.simaws.hosts.node_package_cache`;
- `shutdown`, `poweroff`, `halt`, `reboot` refuse: a container cannot power its host off (and the
  real ones must never run here). A Vast instance ends itself through the API.

When the fake says an instance is stopped (interrupted) or gone (destroyed), its processes and
namespace are ended.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from node_providers.local.process_host import ProcessHost
from tests.simaws.hosts import SYSTEM_PATH, _uv, node_package_cache
from tests.simnet import SimHost, SimNetwork
from tests.simnet.network import IP
from tests.simvast.server import Instance, SimVast

_REFUSE_SHIM = """#!/bin/sh
# simulated Vast.ai container: it cannot power its host off; end the instance through the API instead
echo "simvast: $(basename "$0") $* refused inside container $CONTAINER_ID" >&2
exit 1
"""
SHIM_NAMES = ("shutdown", "poweroff", "halt", "reboot")


class VastHosts:
    """Boots and ends simulated machines for the instances of one local Vast.ai."""

    def __init__(self, sim: SimVast, poll_interval: float = 0.15) -> None:
        self.sim = sim
        self.poll_interval = poll_interval
        self.root = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))  # short: Ray's unix sockets live below
        self.shim_dir = self.root / "bin"
        self.host = ProcessHost(self.root / "m")
        self.network = SimNetwork()
        self.sim_hosts: dict[int, SimHost] = {}
        self.booted: dict[int, float] = {}
        self.ended: set[int] = set()
        self.errors: list[str] = []
        self._private = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_shims()

    def _write_shims(self) -> None:
        self.shim_dir.mkdir(parents=True)
        for name in SHIM_NAMES:
            path = self.shim_dir / name
            path.write_text(_REFUSE_SHIM)
            path.chmod(0o755)
        (self.shim_dir / "uv").symlink_to(_uv())  # an image with uv installed

    @property
    def path(self) -> str:
        return os.pathsep.join([str(self.shim_dir), os.path.join(sys.base_prefix, "bin"), SYSTEM_PATH])

    def _next_private_ip(self) -> str:
        self._private += 1
        return str(self.network.private_net[10 + self._private])

    def start(self) -> "VastHosts":
        self.uv_cache = node_package_cache()
        self.network.open()
        self.sim.public_ips = self.network.allocate_public_ip
        self.sim.private_ips = self._next_private_ip
        self.sim.log_source = lambda instance_id, lines: self.host.log_tail(str(instance_id), lines)
        self._thread = threading.Thread(target=self._run, name="simvast-hosts", daemon=True)
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
        self.sim.log_source = None
        for sim_host in self.sim_hosts.values():
            sim_host.stop(grace=1.0)
        self.network.close()
        shutil.rmtree(self.root, ignore_errors=True)
        return left

    def running(self) -> list[str]:
        return [i for i in self.host.machines() if self.host.is_running(i)]

    def wait_idle(self, timeout: float = 15.0, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        deadline = time.monotonic() + timeout
        left = [i for i in self.running() if i not in keep]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [i for i in self.running() if i not in keep]
        return left

    def log(self, instance_id: int | str, lines: int = 40) -> str:
        return self.host.log_tail(str(instance_id), lines)

    # -- the watch loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._step()
            except Exception as error:  # keep the loop alive
                self.errors.append(f"{type(error).__name__}: {error}")

    def _step(self) -> None:
        live = {i.id: i for i in self.sim.live()}
        for instance in live.values():
            if instance.status == "running" and instance.id not in self.booted:
                self._boot(instance)
        for instance_id in list(self.booted):
            if instance_id in self.ended:
                continue
            instance = live.get(instance_id)
            if instance is None or instance.status != "running":
                self.ended.add(instance_id)
                self.host.terminate([str(instance_id)], keep_directory=True)
                self.sim_hosts[instance_id].stop(grace=1.0)

    def _boot(self, instance: Instance) -> None:
        self.booted[instance.id] = time.monotonic()
        ports = sorted(instance.host_ports)
        host = self.network.add_host(f"v{len(self.sim_hosts)}", private_ip=instance.private_ip,
                                     public_ip=instance.public_ip,
                                     allowed_tcp=[("0.0.0.0/0", port, port) for port in ports])
        self.sim_hosts[instance.id] = host
        rules = "\n".join(f'    iifname "pub" tcp dport {hp} dnat to {instance.public_ip}:{port}'
                          for port, hp in instance.host_ports.items())
        # Docker on a host maps each opened port (host port → container port); and containers on
        # different hosts share no network: nothing arrives on the private side.
        nat = (f"table ip simvast {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n{rules}\n  }}\n"
               f"  chain isolate {{\n    type filter hook input priority -10;\n    iifname \"priv\" drop\n  }}\n}}\n")
        subprocess.run([IP, "netns", "exec", host.namespace, "nft", "-f", "-"], input=nat, text=True, check=True,
                       capture_output=True)
        machine_dir = self.host.state_dir / str(instance.id)
        env = {k: str(v) for k, v in (instance.payload.get("env") or {}).items() if not str(k).startswith("-")}
        env.update({
            "PATH": self.path,
            "CONTAINER_ID": str(instance.id),
            "CONTAINER_API_KEY": instance.api_key,
            "VAST_CONTAINERLABEL": f"C.{instance.id}",
            "PUBLIC_IPADDR": instance.public_ip,
            **{f"VAST_TCP_PORT_{port}": str(hp) for port, hp in instance.host_ports.items()},
            "UV_CACHE_DIR": str(self.uv_cache),
            "UV_OFFLINE": "1",  # a namespace reaches no package index: the cache is this host's mirror
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": "hardlink",
            "SKYWARD_ENV_DIR": str(machine_dir / "env"),
        })
        self.host.boot(str(instance.id), instance.payload.get("onstart") or "", instance.private_ip, env=env,
                       wrapper=[IP, "netns", "exec", host.namespace], inherit_path=False)
