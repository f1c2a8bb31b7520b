"""The local provider: a Ray `NodeProvider` whose instances are process groups on this machine.

Each node runs the same startup script a cloud instance would (see `skyward_ray.startup_script`),
as its own process group, bound to its own loopback address (127.X.Y.n; Ray binds any 127.x
address), with its own HOME and Ray temp dir, a small object store, and this machine's CPUs and
memory split across the nodes so N nodes do not each claim the whole machine.

Accelerators: real NVIDIA GPUs are found with `nvidia-smi` and split between the nodes with
`CUDA_VISIBLE_DEVICES`. With `Local(simulate_accelerators=True)` every node advertises the requested
accelerators as Ray resources (`GPU` and `accelerator_type:<name>`) with no hardware behind them, so
placement can be tested on a laptop or in CI.

State lives in files under `provider_config["state_dir"]` (see `ProcessHost`), so the provider is
thread-safe and a re-instantiated provider (as Ray's autoscaler does) sees the same nodes.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psutil
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from node_providers.process_host import ProcessHost
from skyward_ray import startup_script
from skyward_ray.offers import Offer

if TYPE_CHECKING:
    from skyward_ray.accelerators import Accelerator
    from skyward_ray.image import Image
    from skyward_ray.providers import Local

PROVIDER_NAME = "local"


# -- accelerators on this machine ------------------------------------------------------------
@lru_cache(maxsize=1)
def detect_gpus() -> tuple[tuple[int, str, float], ...]:
    """(index, name, memory GB) of each NVIDIA GPU here; empty without `nvidia-smi`."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        index, name, memory = (part.strip() for part in line.split(","))
        gpus.append((int(index), name, float(memory) / 1024))
    return tuple(gpus)


def _gpu_matches(gpu_name: str, accelerator: "Accelerator") -> bool:
    return accelerator.name.replace(" ", "").lower() in gpu_name.replace(" ", "").lower()


def list_offers(config: "Local", accelerator: "Accelerator | None" = None) -> list[Offer]:
    """This machine as an offer: free, always on-demand, one per accelerator it can provide."""
    base = dict(
        provider=PROVIDER_NAME, market="on-demand", price=0.0, on_demand_price=0.0, spot_price=None,
        region="local", zone=None, vcpus=float(os.cpu_count() or 1),
        memory_gb=psutil.virtual_memory().total / 1024**3, price_source="local (free)",
        price_as_of=None,
    )
    offers = [Offer(accelerator=None, count=0, instance_type="local", **base)]
    if accelerator is not None and config.simulate_accelerators:
        offers.append(Offer(accelerator=accelerator.name, count=accelerator.count,
                            form_factor=accelerator.form_factor, accelerator_memory_gb=accelerator.memory,
                            instance_type=f"local-simulated-{accelerator.name}", **base))
    gpus = detect_gpus()
    if gpus:
        names = sorted({name for _, name, _ in gpus})
        for name in names:
            same = [g for g in gpus if g[1] == name]
            canonical = accelerator.name if accelerator is not None and _gpu_matches(name, accelerator) else name
            offers.append(Offer(accelerator=canonical, count=len(same), instance_type=f"local-{name}",
                                accelerator_memory_gb=same[0][2], **base))
    return offers


# -- addresses and ports -----------------------------------------------------------------------
def new_address_block() -> str:
    """A random 127.X.Y prefix for one cluster, so concurrent local pools never share addresses."""
    return f"127.{secrets.randbelow(250) + 2}.{secrets.randbelow(250) + 2}"


def default_state_dir(cluster_name: str) -> str:
    # Short on purpose: Ray puts unix sockets under <temp dir>/session_*/sockets (108-byte limit).
    base = tempfile.gettempdir() if len(tempfile.gettempdir()) <= 20 else "/tmp"
    return os.path.join(base, cluster_name)


def build_provider_config(config: "Local", cluster_name: str, auth_token: str, nodes: int,
                          accelerator: "Accelerator | None", heartbeat_grace: float,
                          offer: Offer | None = None, image: "Image | None" = None) -> dict[str, Any]:
    """The `provider:` section of this cluster's config (what a cluster YAML would hold).

    `image` is not baked in here: local nodes share this interpreter, and `driver_runtime_env`
    hands its pip packages to Ray's runtime_env instead.
    """
    from skyward_ray.errors import SpecError

    gpus = detect_gpus()
    if accelerator is not None and not config.simulate_accelerators and gpus:
        if nodes * accelerator.count > len(gpus):
            raise SpecError(
                f"accelerator={accelerator} × nodes={nodes} needs {nodes * accelerator.count} GPUs, this machine has "
                f"{len(gpus)}; lower nodes= or count=, or use sky.Local(simulate_accelerators=True) to test placement"
            )
    block = new_address_block()
    head_ip = f"{block}.1"
    cpus = config.cpus_per_node or max(1.0, float((os.cpu_count() or 1) // max(nodes, 1)))
    memory = int(psutil.virtual_memory().total * 0.6 / max(nodes, 1))
    return {
        "type": "external",
        "module": "node_providers.local.LocalNodeProvider",
        "state_dir": default_state_dir(cluster_name),
        "address_block": block,
        "head_ip": head_ip,
        "gcs_port": startup_script.free_port(head_ip),
        "auth_token": auth_token,
        "python": sys.executable,
        "num_cpus": cpus,
        "memory": memory,
        "object_store_memory": config.object_store_memory,
        "simulate_accelerators": config.simulate_accelerators,
        "accelerator": accelerator.name if accelerator else None,
        "accelerator_count": accelerator.count if accelerator else 0,
        "heartbeat_grace": heartbeat_grace,
        "first_heartbeat_grace": max(config.boot_timeout * 2, 120.0),
        "env": {},
    }


class LocalNodeProvider(NodeProvider):
    """Ray autoscaler v1 `NodeProvider` over `ProcessHost`; usable by our launcher and by `ray up`."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.host = ProcessHost(provider_config["state_dir"])
        self._lock = threading.RLock()

    # -- prepare / teardown --------------------------------------------------------------------
    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        provider = cluster_config["provider"]
        provider.setdefault("state_dir", default_state_dir(cluster_config["cluster_name"]))
        os.makedirs(provider["state_dir"], exist_ok=True)
        return cluster_config

    def cleanup_cluster_resources(self) -> None:
        """Remove what `bootstrap_config` made (the state dir), once no node is left."""
        leftover = self.non_terminated_nodes({})
        if leftover:
            self.terminate_nodes(leftover)
        shutil.rmtree(self.provider_config["state_dir"], ignore_errors=True)

    # -- queries -------------------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        machines = self.host.machines()  # one read of the shared state per call
        alive = [
            machine for machine in machines.values()
            if not machine.terminated and self.host.root_alive(machine)
            and all(machine.tags.get(k) == v for k, v in tag_filters.items())
        ]
        alive.sort(key=lambda m: int(m.labels.get("skyward/node-index", 0)))
        return [machine.instance_id for machine in alive]

    def is_running(self, node_id: str) -> bool:
        return self.host.is_running(node_id)

    def is_terminated(self, node_id: str) -> bool:
        return not self.host.is_running(node_id)

    def node_tags(self, node_id: str) -> dict[str, str]:
        return dict(self.host.machines()[node_id].tags)

    def internal_ip(self, node_id: str) -> str:
        return self.host.machines()[node_id].ip

    def external_ip(self, node_id: str) -> str:
        return self.internal_ip(node_id)

    def node_labels(self, node_id: str) -> dict[str, str]:
        return dict(self.host.machines()[node_id].labels)

    def log_tail(self, node_id: str, lines: int = 30) -> str:
        return self.host.log_tail(node_id, lines)

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        self.host.update_tags(node_id, tags)

    # -- create / terminate --------------------------------------------------------------------
    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int,
        resources: dict[str, float], labels: dict[str, str],
    ) -> dict[str, Any]:
        created = {}
        for _ in range(count):
            with self._lock:
                instance_id, index, ip = self._allocate(tags, labels)
                node_labels = {
                    **labels,
                    "skyward/node-index": str(index),
                    "skyward/provider": PROVIDER_NAME,
                    "skyward/instance-id": instance_id,
                }
                if self.provider_config.get("accelerator"):
                    node_labels.setdefault("skyward/accelerator", self.provider_config["accelerator"])
                node_tags = {**tags, "skyward-node-index": str(index)}
                script = startup_script.render(self._boot(node_config, node_tags, node_labels, resources, index))
                env = self._gpu_env(index)
                self.host.boot(instance_id, script, ip, env=env, tags=node_tags, labels=node_labels)
            created[instance_id] = {"instance_id": instance_id, "ip": ip}
        return created

    def _allocate(self, tags: dict[str, str], labels: dict[str, str]) -> tuple[str, int, str]:
        machines = self.host.machines()
        is_head = tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD
        if "skyward/node-index" in labels:
            index = int(labels["skyward/node-index"])
        elif is_head:
            index = 0
        else:
            used = {int(m.labels.get("skyward/node-index", -1)) for m in machines.values()}
            index = next(i for i in itertools.count(1) if i not in used)
        instance_id = f"{self.cluster_name}-{index}"
        suffix = itertools.count(1)
        while instance_id in machines:  # a replaced node keeps its index but gets a new id
            instance_id = f"{self.cluster_name}-{index}r{next(suffix)}"
        used_ips = {m.ip for m in machines.values() if not m.terminated}
        ip = self.provider_config["head_ip"] if is_head else next(
            f"{self.provider_config['address_block']}.{n}" for n in itertools.count(2)
            if f"{self.provider_config['address_block']}.{n}" not in used_ips
        )
        return instance_id, index, ip

    def _boot(self, node_config: dict[str, Any], tags: dict[str, str], labels: dict[str, str],
              resources: dict[str, float], index: int) -> startup_script.NodeBoot:
        cfg = self.provider_config
        is_head = tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD
        num_gpus, extra_resources = self._accelerator_resources()
        extra_resources.update({k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")})
        return startup_script.NodeBoot(
            role="head" if is_head else "worker",
            cluster_name=self.cluster_name,
            auth_token=cfg["auth_token"],
            gcs_port=cfg["gcs_port"],
            head_ip=cfg["head_ip"],
            python=cfg["python"],
            env={**cfg.get("env", {}), "SKYWARD_NODE_INDEX": str(index), "SKYWARD_PROVIDER": PROVIDER_NAME,
                 "SKYWARD_ACCELERATOR": cfg.get("accelerator") or "",
                 "SKYWARD_ACCELERATOR_COUNT": str(cfg.get("accelerator_count") or 0), "SKYWARD_SPOT": "0"},
            node_type_name=tags.get(TAG_RAY_USER_NODE_TYPE, "skyward.head" if is_head else "skyward.worker"),
            labels=labels,
            num_cpus=resources.get("CPU", cfg["num_cpus"]),
            num_gpus=resources.get("GPU", num_gpus),
            memory=int(resources.get("memory", cfg["memory"])),
            object_store_memory=cfg["object_store_memory"],
            resources=extra_resources,
            market_type="on-demand",
            temp_dir_shell="${SKYWARD_MACHINE_DIR}/r",
            # A local "machine" is its process group (the script is its leader): ending it kills the
            # whole group, so no helper Ray left behind (e.g. agents respawned as the head vanished)
            # outlives it, as nothing outlives a powered-off cloud instance.
            shutdown_command="kill -KILL -- -$$",
            extra_ray_args=startup_script.colocated_port_args(is_head, cfg["head_ip"]),
            heartbeat_grace=cfg["heartbeat_grace"],
            first_heartbeat_grace=cfg["first_heartbeat_grace"],
            head_wait_timeout=cfg["first_heartbeat_grace"],
            gcs_reconnect_timeout=10,
        )

    def _accelerator_resources(self) -> tuple[float | None, dict[str, float]]:
        cfg = self.provider_config
        name, count = cfg.get("accelerator"), int(cfg.get("accelerator_count") or 0)
        if not name or not count:
            return 0.0, {}  # no accelerator asked for: tasks get none, even on a GPU machine
        return float(count), {f"accelerator_type:{name}": 1.0}

    def _gpu_env(self, index: int) -> dict[str, str]:
        """Give node `index` its own slice of this machine's GPUs (real GPUs only)."""
        cfg = self.provider_config
        count = int(cfg.get("accelerator_count") or 0)
        gpus = detect_gpus()
        if cfg.get("simulate_accelerators") or not gpus:
            return {}  # Ray refuses --num-gpus=N beside an empty CUDA_VISIBLE_DEVICES
        if not count:
            return {"CUDA_VISIBLE_DEVICES": ""}
        mine = [str(g[0]) for g in gpus][index * count:(index + 1) * count]
        return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}

    def terminate_node(self, node_id: str) -> None:
        self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> None:
        """End workers first and the head last: a head killed first leaves workers draining."""
        machines = self.host.machines()
        heads = [i for i in node_ids if machines.get(i) and machines[i].tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD]
        workers = [i for i in node_ids if i not in heads]
        if workers:
            self.host.terminate(workers)
        if heads:
            self.host.terminate(heads)


def driver_endpoint(provider: LocalNodeProvider, head_id: str) -> tuple[str, str]:
    """This process joins as a driver through the head's own raylet (same machine, same address)."""
    ip = provider.internal_ip(head_id)
    return f"{ip}:{provider.provider_config['gcs_port']}", ip


def validate_image(config: "Local", image: "Image") -> None:
    """Refuse, before anything starts, what the local provider cannot honour."""
    from skyward_ray.errors import SpecError

    if image.apt:
        raise SpecError(
            f"Image.apt={list(image.apt)!r}: the local provider does not install system packages on this machine; "
            "install them yourself (apt-get install ...) and drop apt= for sky.Local()"
        )
    here = "%d.%d.%d" % sys.version_info[:3]
    if image.python and not here.startswith(image.python):
        raise SpecError(
            f"Image.python={image.python!r}: local nodes run this interpreter, Python {here}; "
            f"drop python= or run your script with Python {image.python}"
        )


def driver_runtime_env(config: "Local", image: "Image") -> dict[str, Any]:
    """Local nodes share this machine's Python, so pip packages go into Ray's per-node virtualenv."""
    return {"pip": list(image.pip)} if image.pip else {}
