"""The pod host simulator: every pod the fake RunPod places becomes a container-like machine that
runs its command, as isolated as a real one (the machine side is `tests.simhost`'s).

For each placed pod (after `boot_delay`), on the simulated network (`tests.simnet`):

- its own network namespace with a public address, where only the public port RunPod mapped to
  the container's port 22 gets in (nftables in the namespace: the mapped port is redirected to 22,
  port 22 itself is closed from outside), as `runtime.ports` then says;
- a pod made with global networking (REST `globalNetworking: true`) has an address on the private
  network shared by every such pod of the account, and `<pod id>.runpod.internal` resolves to it
  inside every such pod (an `/etc/netns/<ns>/hosts` file, which `ip netns exec` binds over /etc/hosts); a pod without global
  networking reaches no other pod (its private interface is closed both ways);
- the container command (`dockerArgs`) run as the machine's root process with its own HOME and
  nothing of the driver's environment, only what RunPod documents a pod gets: `RUNPOD_POD_ID`,
  `RUNPOD_API_KEY` (the pod-scoped key, never the user's), `RUNPOD_PUBLIC_IP`, `RUNPOD_TCP_PORT_22`,
  `RUNPOD_GPU_COUNT`, `RUNPOD_DC_ID`, plus the pod's own env; no `SKYWARD_*` id or address (the
  node learns its id from `RUNPOD_POD_ID`, its address from DNS or its interfaces).
  `RUNPOD_API_BASE_URL` points at the fake (what DNS for api.runpod.io would be; a stand-in until
  the simulated internet serves RunPod's API too). The pod is bare by default (`tests.simhost`): its
  own root filesystem from the RunPod-base-like image (`tests.images.cloud_images.RUNPOD`: bash, curl,
  python3 with pip, openssh-server), what the boot installs downloaded from the simulated internet.
  With SKYWARD_SIM_BARE_RUNPOD=0 (quicker, for debugging) it is the driver's userland instead, building
  its Python from the offline uv cache of `tests.simhost.node_package_cache`.

sshd is whatever the pod's command starts: nothing here installs a key or starts a server for it.
When the fake says a pod ended (terminated, stopped, interrupted), its processes and namespace go.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from tests.images.cloud_images import RUNPOD
from tests.simhost import NETNS_ETC, SimulatedHosts, nft


class PodHosts(SimulatedHosts):
    """Boots and ends the simulated machines of one fake RunPod account (the fake calls `boot`/`end`)."""

    prefix = "rp-"
    idle_timeout = 20.0

    image = RUNPOD
    bare_switch = "SKYWARD_SIM_BARE_RUNPOD"

    def __init__(self, sim: Any, boot_delay: float = 0.0, bare: bool | None = None) -> None:
        # its private range stands for RunPod's global network
        super().__init__(sim, boot_delay=boot_delay, bare=bare)
        self.global_pods: dict[str, str] = {}  # pod id → private address, for pods on the global network
        self.ports: set[int] = set()
        # One rewrite of the hosts files at a time, from listing to last write: two pods booting at
        # once must not let the one that listed first write last (its list lacks the other pod).
        self._hosts_files_lock = threading.Lock()

    def attach(self) -> None:
        self.sim.hosts = self

    def detach(self) -> None:
        self.sim.hosts = None

    # -- the fake's calls ---------------------------------------------------------------------------
    def boot(self, pod: Any) -> None:
        """A pod was placed: start its machine in the background (the API call returns at once)."""
        self.boot_later(pod.id, lambda placed: self._boot(pod, placed))

    def end(self, pod_id: Any) -> None:
        with self.lock:
            self.global_pods.pop(pod_id, None)
            host = self.sim_hosts.get(pod_id)
        try:
            super().end(pod_id)
        except Exception as error:
            self.errors.append(f"end {pod_id}: {type(error).__name__}: {error}")
        if host is None:
            return
        try:
            self._write_hosts_files()
        except Exception as error:  # the fake's bookkeeping must never fail the API call that ended the pod
            self.errors.append(f"hosts files after ending {pod_id}: {type(error).__name__}: {error}")

    # -- booting -----------------------------------------------------------------------------------
    def _boot(self, pod: Any, placed: float) -> None:
        with self.lock:
            if pod.id in self.ended or self.stopping.is_set():
                return
            public_ip = self.network.allocate_public_ip()
            port = random.randrange(10000, 60000)
            while port in self.ports:
                port = random.randrange(10000, 60000)
            self.ports.add(port)
            host = self.add_host(pod.id, "p", public_ip=public_ip, allowed_tcp=[("0.0.0.0/0", 22, 22)])
        nft(host, _port_map(port))
        if pod.global_network:
            (NETNS_ETC / host.namespace).mkdir(parents=True, exist_ok=True)
            with self.lock:
                self.global_pods[pod.id] = host.private_ip
            self._write_hosts_files()
        else:
            nft(host, _ISOLATED)
        env = {
            "PATH": self.path,
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": pod.pod_key,
            "RUNPOD_PUBLIC_IP": public_ip,
            "RUNPOD_TCP_PORT_22": str(port),
            "RUNPOD_GPU_COUNT": str(pod.gpu_count),
            "RUNPOD_CPU_COUNT": "8",
            "RUNPOD_DC_ID": pod.data_center,
            "RUNPOD_POD_HOSTNAME": f"{pod.id}-{pod.machine_id}",
            "RUNPOD_API_BASE_URL": f"http://{self.network.driver_ip}:{self.sim.port}",
            **pod.env,
            **self.machine_env(pod.id),
        }
        with self.lock:
            if pod.id in self.ended:
                return
            self.mark_booted(pod.id, time.monotonic() - placed)
            # docker runs the command as its argv; bash's word splitting of `exec <args>` is the same here
            self.run_machine(pod.id, host, f"exec {pod.docker_args}\n", host.private_ip, env)
        if pod.global_network and self.bare:
            self._write_hosts_files()  # the machine's runtime wrote its /etc/hosts: add the pods' names
        self.sim.set_runtime(pod.id, {"uptimeInSeconds": 0, "ports": [
            {"ip": public_ip, "isIpPublic": True, "privatePort": 22, "publicPort": port, "type": "tcp"}]})

    def _write_hosts_files(self) -> None:
        """Every global-network pod resolves every other's `<pod id>.runpod.internal` (rewritten in place)."""
        with self._hosts_files_lock:
            with self.lock:
                lines = ["127.0.0.1 localhost"] + [f"{ip} {pod_id}.runpod.internal"
                                                   for pod_id, ip in sorted(self.global_pods.items())]
                namespaces = [self.sim_hosts[p].namespace for p in self.global_pods if p in self.sim_hosts]
                pods = [p for p in self.global_pods if p in self.sim_hosts]
            paths = [NETNS_ETC / namespace / "hosts" for namespace in namespaces]
            if self.bare:  # a bare machine's own /etc/hosts (its layer), beside the simulated internet's names
                assert self.internet is not None
                lines[1:1] = self.internet.hosts_lines()
                paths = [self.rootfs(p).written("/etc/hosts") for p in pods]
            for path in paths:
                try:
                    with open(path, "w") as handle:  # same inode: a bind mount already made sees the change
                        handle.write("\n".join(lines) + "\n")
                except FileNotFoundError:  # that pod is ending right now
                    pass


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
