"""The pod host simulator: every pod the fake RunPod places becomes a container-like machine that
runs its command, as isolated as a real one (the pattern of `tests.simaws.hosts`).

For each placed pod (after `boot_delay`), on the simulated network (`tests.simnet`):

- its own network namespace with a public address, where only the public port RunPod mapped to
  the container's port 22 gets in (nftables in the namespace: the mapped port is redirected to 22,
  port 22 itself is closed from outside), as `runtime.ports` then says;
- a pod made with `globalNetwork: true` has an address on the private network shared by every such
  pod of the account, and `<pod id>.runpod.internal` resolves to it inside every such pod (an
  `/etc/netns/<ns>/hosts` file, which `ip netns exec` binds over /etc/hosts); a pod without global
  networking reaches no other pod (its private interface is closed both ways);
- the container command (`dockerArgs`) run as the machine's root process with its own HOME and
  nothing of the driver's environment, only what RunPod documents a pod gets: `RUNPOD_POD_ID`,
  `RUNPOD_API_KEY` (the pod-scoped key, never the user's), `RUNPOD_PUBLIC_IP`, `RUNPOD_TCP_PORT_22`,
  `RUNPOD_GPU_COUNT`, `RUNPOD_DC_ID`, plus the pod's own env. `RUNPOD_API_BASE_URL` points at the
  fake (what DNS for api.runpod.io would be). The node builds its own Python from the offline uv
  cache of `tests.simaws.hosts.node_package_cache` (an image with uv installed).

sshd is whatever the pod's command starts: nothing here installs a key or starts a server for it.
When the fake says a pod ended (terminated, stopped, interrupted), its processes and namespace go.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from node_providers.local.process_host import ProcessHost
from tests.simaws.hosts import SYSTEM_PATH, _uv, node_package_cache
from tests.simnet import SimHost, SimNetwork
from tests.simnet.network import IP

NETNS_ETC = Path("/etc/netns")
DATA_CENTER = "US-TX-3"


class PodHosts:
    """Boots and ends the simulated machines of one fake RunPod account."""

    def __init__(self, sim: Any, boot_delay: float = 0.0) -> None:
        self.sim = sim
        self.boot_delay = boot_delay
        self.root = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))  # short: Ray's unix sockets live below
        self.shim_dir = self.root / "bin"
        self.shim_dir.mkdir()
        (self.shim_dir / "uv").symlink_to(_uv())  # an image with uv installed
        self.host = ProcessHost(self.root / "m")
        self.network = SimNetwork()  # its private range stands for RunPod's global network
        self.sim_hosts: dict[str, SimHost] = {}
        self.global_pods: dict[str, str] = {}  # pod id → private address, for pods on the global network
        self.booted_at: dict[str, float] = {}  # pod id → wall-clock time its container started
        self.boot_seconds: dict[str, float] = {}  # pod id → seconds from placement to container start
        self.ports: set[int] = set()
        self.errors: list[str] = []
        self._ended: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()
        self._stopped = False

    @property
    def path(self) -> str:
        return os.pathsep.join([str(self.shim_dir), os.path.join(sys.base_prefix, "bin"), SYSTEM_PATH])

    def start(self) -> "PodHosts":
        self.uv_cache = node_package_cache()
        self.network.open()
        self.sim.hosts = self
        return self

    def stop(self) -> list[str]:
        """End every machine still running; returns their pod ids (a test may assert none)."""
        if self._stopped:
            return []
        self._stopped = True
        for thread in list(self._threads):
            thread.join(timeout=30)
        left = self.running()
        self.sim.hosts = None
        try:
            for pod_id in list(self.sim_hosts):
                try:
                    self.end(pod_id)
                except Exception as error:  # keep going: the namespaces and files must go regardless
                    self.errors.append(f"end {pod_id}: {type(error).__name__}: {error}")
            self.network.close()
        finally:
            for name in list(self._netns_dirs()):
                shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def running(self) -> list[str]:
        return [i for i in self.host.machines() if self.host.is_running(i)]

    def wait_idle(self, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        left = self.running()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.running()
        return left

    def log(self, pod_id: str, lines: int = 40) -> str:
        return self.host.log_tail(pod_id, lines)

    # -- the fake's calls ---------------------------------------------------------------------------
    def boot(self, pod: Any) -> None:
        """A pod was placed: start its machine in the background (the API call returns at once)."""
        placed = time.monotonic()
        thread = threading.Thread(target=self._boot_guarded, args=(pod, placed), name=f"pod-{pod.id}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def end(self, pod_id: str) -> None:
        with self._lock:
            self._ended.add(pod_id)
            host = self.sim_hosts.get(pod_id)
            self.global_pods.pop(pod_id, None)
        if host is None:
            return
        try:
            self.host.terminate([pod_id], keep_directory=True)
            host.stop(grace=1.0)  # sshd and anything else in its namespace
        except Exception as error:
            self.errors.append(f"end {pod_id}: {type(error).__name__}: {error}")
        shutil.rmtree(NETNS_ETC / host.namespace, ignore_errors=True)
        try:
            self._write_hosts_files()
        except Exception as error:  # the fake's bookkeeping must never fail the API call that ended the pod
            self.errors.append(f"hosts files after ending {pod_id}: {type(error).__name__}: {error}")

    # -- booting -----------------------------------------------------------------------------------
    def _boot_guarded(self, pod: Any, placed: float) -> None:
        try:
            if self.boot_delay:
                time.sleep(self.boot_delay)
            self._boot(pod, placed)
        except Exception as error:
            self.errors.append(f"boot {pod.id}: {type(error).__name__}: {error}")

    def _boot(self, pod: Any, placed: float) -> None:
        with self._lock:
            if pod.id in self._ended or self._stopped:
                return
            public_ip = self.network.allocate_public_ip()
            port = random.randrange(10000, 60000)
            while port in self.ports:
                port = random.randrange(10000, 60000)
            self.ports.add(port)
            host = self.network.add_host(f"p{len(self.sim_hosts)}", public_ip=public_ip,
                                         allowed_tcp=[("0.0.0.0/0", 22, 22)])
            self.sim_hosts[pod.id] = host
        _nft(host, _port_map(port))
        if pod.global_network:
            (NETNS_ETC / host.namespace).mkdir(parents=True, exist_ok=True)
            with self._lock:
                self.global_pods[pod.id] = host.private_ip
            self._write_hosts_files()
        else:
            _nft(host, _ISOLATED)
        env = {
            "PATH": self.path,
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": pod.pod_key,
            "RUNPOD_PUBLIC_IP": public_ip,
            "RUNPOD_TCP_PORT_22": str(port),
            "RUNPOD_GPU_COUNT": str(pod.gpu_count),
            "RUNPOD_CPU_COUNT": "8",
            "RUNPOD_DC_ID": DATA_CENTER,
            "RUNPOD_POD_HOSTNAME": f"{pod.id}-{pod.machine_id}",
            "RUNPOD_API_BASE_URL": f"http://{self.network.driver_ip}:{self.sim.port}",
            **pod.env,
            "UV_CACHE_DIR": str(self.uv_cache),
            "UV_OFFLINE": "1",  # a namespace reaches no package index: the cache is this cloud's mirror
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": "hardlink",
            "SKYWARD_ENV_DIR": str(self.host.state_dir / pod.id / "env"),
        }
        with self._lock:
            if pod.id in self._ended:
                return
            self.booted_at[pod.id] = time.time()
            self.boot_seconds[pod.id] = time.monotonic() - placed
            # docker runs the command as its argv; bash's word splitting of `exec <args>` is the same here
            self.host.boot(pod.id, f"exec {pod.docker_args}\n", host.private_ip, env=env,
                           wrapper=[IP, "netns", "exec", host.namespace], inherit_path=False)
        self.sim.set_runtime(pod.id, {"uptimeInSeconds": 0, "ports": [
            {"ip": public_ip, "isIpPublic": True, "privatePort": 22, "publicPort": port, "type": "tcp"}]})

    def _write_hosts_files(self) -> None:
        """Every global-network pod resolves every other's `<pod id>.runpod.internal` (rewritten in place)."""
        with self._lock:
            lines = ["127.0.0.1 localhost"] + [f"{ip} {pod_id}.runpod.internal"
                                               for pod_id, ip in sorted(self.global_pods.items())]
            namespaces = [self.sim_hosts[p].namespace for p in self.global_pods if p in self.sim_hosts]
        for namespace in namespaces:
            path = NETNS_ETC / namespace / "hosts"
            try:
                with open(path, "w") as handle:  # same inode: a bind mount already made sees the change
                    handle.write("\n".join(lines) + "\n")
            except FileNotFoundError:  # that pod is ending right now
                pass

    def _netns_dirs(self) -> list[str]:
        if not NETNS_ETC.is_dir() or not self.network.prefix:
            return []
        return [p.name for p in NETNS_ETC.iterdir() if p.name.startswith(self.network.prefix + "-")]


_ISOLATED = """table inet runpod_isolated {
  chain in { type filter hook input priority 10; policy accept; iifname "priv" drop; }
  chain out { type filter hook output priority 10; policy accept; oifname "priv" drop; }
}
"""


def _port_map(public_port: int) -> str:
    """The public port RunPod maps to the container's 22; 22 itself is closed from outside."""
    return f"""table ip runpod_ports {{
  chain closed {{ type filter hook prerouting priority -150; policy accept; iifname "pub" tcp dport 22 drop; }}
  chain mapped {{ type nat hook prerouting priority -100; policy accept; iifname "pub" tcp dport {public_port} redirect to :22; }}
}}
"""


def _nft(host: SimHost, ruleset: str) -> None:
    done = subprocess.run([IP, "netns", "exec", host.namespace, "nft", "-f", "-"], input=ruleset, text=True,
                          capture_output=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {host.namespace} failed: {done.stderr.strip()}")
