"""The local "cloud": machines are process groups on this machine (see `ProcessHost`).

Each node runs the same boot script a cloud instance would, as its own process group, bound to
its own loopback address (127.X.Y.n; Ray binds any 127.x address) where Ray lets us choose
(tests/test_security_aws_local.py lists what Ray still puts on every interface), with its own
HOME and Ray temp dir, a small object store, and this machine's CPUs and memory split across the
nodes so N nodes do not each claim the whole machine. The workers share the head's Ray log
directory and its one log monitor, as the nodes of Ray's own `cluster_utils.Cluster` do (one host:
one log monitor, ~80 MB less per worker; `ray_start`'s SKYWARD_HEAD_TEMP_DIR).

Accelerators: real NVIDIA GPUs are found with `nvidia-smi` and split between the nodes with
`CUDA_VISIBLE_DEVICES`; with `Local(simulate_accelerators=True)` nodes advertise the requested
accelerators with no hardware behind them (the generic provider adds those resources).

State lives in files under the cluster's state dir (`ProcessHost`), so a re-created provider (as
Ray's autoscaler makes) sees the same machines.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import sys
import threading
from collections.abc import Mapping
from typing import Any

import psutil

from node_providers.local.config import Local
from node_providers.local.offers import PROVIDER_NAME, detect_gpus
from node_providers.local.ports import PORTS
from node_providers.local.process_host import ProcessHost
from skyward_ray import names
from skyward_ray.cluster import pool_state
from skyward_ray.cluster.contract import (
    BootEnvironment,
    Cloud,
    ClusterListing,
    ClusterParams,
    Machine,
    MachineRequest,
    Role,
)
from skyward_ray.errors import SpecError
from skyward_ray.node.ray_start import HEAD_TEMP_DIR_ENV, NO_RAY_CLIENT_SERVER_ENV

RAY_TEMP_DIR = "r"  # a node's Ray temp dir, in its machine directory (short: Ray's sockets live below it)


# A local head runs no autoscaler monitor (Ray's hidden `ray start --no-monitor`). Skyward runs no
# autoscaler on a node (elastic pools run Ray's in the driver, reading the GCS), and the monitor's
# read-only instance serves Prometheus metrics without auth on every interface (no host setting;
# on a fixed port, 44217, unless AUTOSCALER_METRIC_PORT moves it), reachable from the LAN.
NO_MONITOR = ["--no-monitor"]


def new_address_block() -> str:
    """A random 127.X.Y prefix for one cluster, so concurrent local pools never share addresses."""
    return f"127.{secrets.randbelow(250) + 2}.{secrets.randbelow(250) + 2}"


# What one local node costs this machine at the least: Ray's processes (GCS on the head, raylet,
# agents: about 0.4-0.5 GiB resident together) besides its object store; and how many nodes one
# CPU carries (each node spends about a CPU-second booting and a few percent idling).
CLUSTER_FILE = "cluster"  # in a local pool's state dir: the pool's name
NODE_OVERHEAD_BYTES = 512 * 1024**2
NODES_PER_CPU = 2


def check_capacity(nodes: int, object_store_memory: int, cpus: int | None = None,
                   available_memory: int | None = None) -> None:
    """Refuse a local pool this machine cannot hold, before any process is started."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    available = available_memory if available_memory is not None else psutil.virtual_memory().available
    by_cpu = max(2, NODES_PER_CPU * cpus)
    per_node = object_store_memory + NODE_OVERHEAD_BYTES
    by_memory = max(1, available // per_node)
    most = min(by_cpu, by_memory)
    if nodes > most:
        why = (f"{cpus} CPU{'s' if cpus != 1 else ''} carry at most {by_cpu} local nodes ({NODES_PER_CPU} per CPU)"
               if by_cpu <= by_memory else
               f"{available / 1024**3:.1f} GiB of available memory holds at most {by_memory} local nodes "
               f"({per_node / 1024**3:.2f} GiB each: Ray's processes plus the object store)")
        raise SpecError(
            f"sky.Local: nodes={nodes} is more than this machine can run: {why}. Nothing was started. "
            f"Fix: pass nodes={most} or fewer, or use a cloud provider (provider=sky.AWS(), ...) for a bigger pool")


def default_state_dir(cluster_name: str) -> str:
    """A new private directory for one local pool (mkdtemp, 0700) under this user's runtime root
    (`skyward_ray.cluster.pool_state.runtime_root`); its machines.json names the cluster."""
    return str(pool_state.new_pool_dir())


class LocalCloud(Cloud):
    """Machines on this machine: `ProcessHost` process groups on the cluster's own 127.X.Y block."""

    config_class = Local
    config: Local
    listing_is_consistent = True  # the machine table is written before `launch` returns
    terminated_may_linger = True  # a process that escaped its group, or the machine's directory
    _launch_lock = threading.Lock()  # picking an address and booting on it is one step

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._host: ProcessHost | None = None

    @property
    def host(self) -> ProcessHost:
        if self._host is None:
            self._host = ProcessHost(self.prepared["state_dir"])
        return self._host

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Check the GPUs suffice, pick the cluster's address block and head port, make its state dir."""
        check_capacity(self.params.nodes, self.config.object_store_memory)
        params, gpus = self.params, detect_gpus()
        if params.accelerator and params.accelerator_count and not self.config.simulate_accelerators and gpus:
            needed = params.nodes * params.accelerator_count
            if needed > len(gpus):
                raise SpecError(
                    f"accelerator={params.accelerator}:{params.accelerator_count} × nodes={params.nodes} needs "
                    f"{needed} GPUs, this machine has {len(gpus)}; lower nodes= or count=, or use "
                    "sky.Local(simulate_accelerators=True) to test placement"
                )
        state_dir = default_state_dir(self.cluster_name)
        with open(os.open(os.path.join(state_dir, CLUSTER_FILE), os.O_WRONLY | os.O_CREAT, 0o600), "w") as out:
            out.write(self.cluster_name)  # how `list_clusters` names this directory's pool
        block = new_address_block()
        head_ip = f"{block}.1"
        return {"state_dir": state_dir, "address_block": block, "head_ip": head_ip, "gcs_port": PORTS.free_port(head_ip)}

    def cleanup(self) -> None:
        shutil.rmtree(self.prepared["state_dir"], ignore_errors=True)

    @classmethod
    def list_clusters(cls, config: Local) -> list[ClusterListing]:  # type: ignore[override]
        """Every local pool of this user: the directories under the runtime root that hold a pool."""
        found = []
        for entry in sorted(pool_state.runtime_root().iterdir()):
            if not (entry / CLUSTER_FILE).is_file() and not (entry / "machines.json").is_file():
                continue
            try:
                name = (entry / CLUSTER_FILE).read_text().strip()
            except OSError:
                name = ""
            prepared = {"state_dir": str(entry)}
            machines = cls(name or entry.name, config, ClusterParams(), prepared).describe()
            if not name:
                name = next((m.tags.get(names.CLUSTER, "") for m in machines if m.tags.get(names.CLUSTER)), entry.name)
            found.append(ClusterListing(name=name, machines=machines, prepared=prepared, resources=[str(entry)]))
        return found

    # -- machines -------------------------------------------------------------------------------
    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        params, nodes = self.params, max(self.params.nodes, 1)
        count = params.accelerator_count if params.accelerator else 0
        resources = {f"accelerator_type:{params.accelerator}": 1.0} if count else {}
        return BootEnvironment(
            instance_id_shell="${" + names.ENV_INSTANCE_ID + "}",
            node_ip_shell="${" + names.ENV_NODE_IP + "}",
            # A local "machine" is its process group (the script is its leader): ending it kills the
            # whole group, so no helper Ray left behind (e.g. agents respawned as the head vanished)
            # outlives it, as nothing outlives a powered-off cloud instance.
            shutdown_command="kill -KILL -- -$$",
            token_in_environment=True,
            python=sys.executable,
            temp_dir_shell="${" + names.ENV_MACHINE_DIR + "}/" + RAY_TEMP_DIR,
            extra_ray_args=PORTS.colocated_port_args(self.prepared["head_ip"]) + (
                NO_MONITOR if role == "head" else []),
            dashboard_port=PORTS.free_port("127.0.0.1"),  # nodes of other pools share 127.0.0.1
            gcs_reconnect_timeout=10,
            num_cpus=self.config.cpus_per_node or max(1.0, float((os.cpu_count() or 1) // nodes)),
            num_gpus=float(count),  # no accelerator asked for: tasks get none, even on a GPU machine
            memory=int(psutil.virtual_memory().total * 0.6 / nodes),
            object_store_memory=self.config.object_store_memory,
            resources=resources,
        )

    def launch(self, request: MachineRequest) -> Machine:
        with self._launch_lock:
            return self._launch(request)

    def _launch(self, request: MachineRequest) -> Machine:
        machines = self.host.machines()
        instance_id = f"{self.cluster_name}-{request.index}"
        suffix = itertools.count(1)
        while instance_id in machines:  # a replaced node keeps its index but gets a new id
            instance_id = f"{self.cluster_name}-{request.index}r{next(suffix)}"
        block, used = self.prepared["address_block"], {m.ip for m in machines.values() if not m.terminated}
        ip = self.prepared["head_ip"] if request.role == "head" else next(
            f"{block}.{n}" for n in itertools.count(2) if f"{block}.{n}" not in used)
        # The token reaches the node in its environment only (readable by this user alone), never in
        # its script or on a command line; Ray's metrics exporter (an HTTP port) is off on local nodes,
        # and so is Ray Client's server on the head: a local pool's drivers join its GCS directly.
        env = {**self._gpu_env(request.index), "RAY_AUTH_TOKEN": self.params.auth_token,
               "RAY_enable_metrics_collection": "false", NO_RAY_CLIENT_SERVER_ENV: "1"}
        if request.role != "head":  # one host: the head's log monitor reads this node's logs
            head = next((i for i, m in machines.items() if m.ip == self.prepared["head_ip"] and not m.terminated), None)
            if head is not None:
                env[HEAD_TEMP_DIR_ENV] = str(self.host.state_dir / head / RAY_TEMP_DIR)
        self.host.boot(instance_id, request.boot_script, ip, env=env, tags=dict(request.tags))
        return Machine(instance_id=instance_id, state="running", private_ip=ip, public_ip=ip, tags=dict(request.tags))

    def _gpu_env(self, index: int) -> dict[str, str]:
        """Give node `index` its own slice of this machine's GPUs (real GPUs only)."""
        count = self.params.accelerator_count if self.params.accelerator else 0
        gpus = detect_gpus()
        if self.config.simulate_accelerators or not gpus:
            return {}  # Ray refuses --num-gpus=N beside an empty CUDA_VISIBLE_DEVICES
        if not count:
            return {"CUDA_VISIBLE_DEVICES": ""}
        mine = [str(g[0]) for g in gpus][index * count:(index + 1) * count]
        return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}

    def _removed(self) -> bool:
        """The pool's directory is gone (cleaned up, or ended by `skyward-ray down`): it has no machines."""
        return not os.path.isdir(self.prepared["state_dir"])

    def describe(self) -> list[Machine]:
        if self._removed():
            return []
        try:
            machines = self.host.machines()  # one read of the shared state
        except FileNotFoundError:  # the pool's directory went meanwhile (its own teardown, or another gc)
            return []
        listed = []
        for machine in machines.values():
            running = not machine.terminated and self.host.root_alive(machine)
            listed.append(Machine(instance_id=machine.instance_id, state="running" if running else "terminated",
                                  private_ip=machine.ip, public_ip=machine.ip, tags=dict(machine.tags)))
        return listed

    def terminate(self, instance_ids: list[str]) -> None:
        """End machines with a grace (SIGTERM first): a node lost from a running pool leaves its
        Ray cluster at once, rather than when the head's health checks notice."""
        self._end(instance_ids, grace=1.0)

    def end_pool(self, instance_ids: list[str]) -> bool:
        """The whole pool at once (SIGKILL, as a cloud's terminate gives an instance no time to wind
        down), not workers then head each with a grace: no node stays behind to drain or to notice."""
        self._end(instance_ids, grace=0.0)
        return True

    def _end(self, instance_ids: list[str], grace: float) -> None:
        if not self._removed():
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: nothing of it is left to end
                self.host.terminate(list(instance_ids), grace=grace)

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        self.host.update_tags(instance_id, dict(tags))

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        return self.host.log_tail(instance_id, lines)


__all__ = ["LocalCloud", "PROVIDER_NAME", "default_state_dir"]
