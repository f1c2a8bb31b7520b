"""Docker containers for the generic script-booted node provider: launch, describe, terminate.

A container pool is a cloud in miniature, driven the way a cloud is:

- **Its own network.** `prepare` makes the pool's internal network (no address on the host, no
  route out: the pool's "VPC"), the node image (`node_image`), and the gateway that publishes the
  head's SSH port on 127.0.0.1 (`gateway`). Nodes reach each other by address on that network.
- **The same boot.** A node's command is the payload a RunPod pod runs: on the head, the sshd
  prelude with the driver-generated host key and the cluster's login key (`skyward_ray.node.sshd`),
  then the generic boot script. No secret is in a container's command, env or labels: the head gets the
  token over the driver's pinned SSH session, a worker from the head for a one-time ticket, as on a cloud.
- **Machines end themselves.** Each container runs under Docker's init as PID 1 and is removed
  when its script ends (`auto_remove`): the script's shutdown command signals PID 1, as a cloud
  machine powers itself off. The head's watchdog ends the head when the driver's heartbeat
  stops; workers end when the head is gone; the gateway when the head is gone.
- **Found by labels.** Every container and network carries `skyward/cluster` and the pool's
  tags as Docker labels, so `status`/`down`/`gc` find them from any process.

Tags changed after a launch (`set_tags`, which only `ray up`'s updaters call) are kept in this
process: Docker cannot change a container's labels.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

import psutil

from node_providers.container import engine, gateway, launch_request, node_image
from node_providers.container.config import Container
from node_providers.local.offers import detect_gpus
from skyward_ray import names
from skyward_ray.cluster.contract import (
    BootEnvironment,
    ClusterListing,
    ClusterParams,
    Machine,
    MachineRequest,
    MachineState,
    NotFoundError,
    Role,
    SSHEndpoint,
)
from skyward_ray.cluster.remote_cloud import LaterTags, RemoteCloud
from skyward_ray.errors import AuthError, ProviderUnavailableError, ProvisioningError, SpecError
from skyward_ray.node.sshd import sshd_lines, state_dir_lines

KIND_LABEL = "skyward.kind"  # "node", "gateway" or "network": what a labelled Docker object is to the pool
HEAD_ALIAS = "head"  # the head's name on the pool's network (the gateway relays to it)
SSH_USER = "root"
_STATES: dict[str, MachineState] = {"created": "pending", "running": "running", "restarting": "running",
                                     "paused": "stopping", "removing": "terminated", "exited": "terminated",
                                     "dead": "terminated"}

LATER_TAGS = LaterTags()  # container id → tags set after its launch


def pool_network(cluster: str) -> str:
    return f"skyward-{cluster}"


def edge_network(cluster: str) -> str:
    return f"skyward-{cluster}-edge"


def gateway_name(cluster: str) -> str:
    return f"skyward-{cluster}-gateway"


class ContainerCloud(RemoteCloud):
    """The containers of one cluster on one Docker Engine."""

    config_class = Container
    config: Container  # type: ignore[assignment]
    instance_id_shell = "$(hostname)"  # Docker names a container's host by its short id
    node_ip_shell = "$(hostname -I | awk '{print $1}')"  # its one address, on the pool's network
    shutdown_command = "kill -TERM 1"  # Docker's init (PID 1) passes it on; the container ends and is removed
    log_name = "container log"
    listing_is_consistent = True  # the engine lists a container as soon as it is created

    @property
    def engine(self) -> Any:
        return engine.client(self.config.docker_host)

    def _labels(self, kind: str) -> dict[str, str]:
        return {**self.params.pool_tags, names.CLUSTER: self.cluster_name, KIND_LABEL: kind}

    # -- every skyward cluster on the engine (skyward-ray status / down / gc) -------------------
    @classmethod
    def list_clusters(cls, config: Container) -> list[ClusterListing]:  # type: ignore[override]
        """Every pool with a labelled container or network on the engine; nothing else. An engine
        that does not answer runs no container: like a cloud without credentials here, it has
        nothing of ours to list (`AuthError`, which `gc` takes as "nothing reachable from here")."""
        try:
            client = engine.client(config.docker_host)
        except ProviderUnavailableError as error:
            raise AuthError(str(error)) from None
        with engine.engine_errors("list the pools' containers"):
            # The engine's own listing (one call): docker-py's `containers.list` inspects each
            # container it lists, and fails with NotFound on one being created or removed meanwhile.
            boxes = client.api.containers(all=True, filters={"label": names.CLUSTER})
            networks = client.networks.list(filters={"label": names.CLUSTER})
        found: dict[str, list[str]] = {}
        for box in boxes:
            found.setdefault(box["Labels"][names.CLUSTER], []).append(box["Names"][0].lstrip("/"))
        for network in networks:
            found.setdefault(network.attrs.get("Labels", {})[names.CLUSTER], []).append(network.name)
        return [ClusterListing(name=name, machines=cls(name, config, ClusterParams(), {}).describe(),
                               region="container", resources=sorted(resources))
                for name, resources in sorted(found.items())]

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """The node image, the pool's network, the edge network and the gateway; all or nothing."""
        from skyward_ray.console import console

        self._check_gpus()
        client = self.engine
        image = node_image.ensure_node_image(client, self.config.image, self.params.pip, self.params.apt,
                                             say=console.print)
        try:
            with engine.engine_errors("create the pool's network"):
                client.networks.create(pool_network(self.cluster_name), driver="bridge", internal=True,
                                       labels=self._labels("network"),
                                       options={"com.docker.network.bridge.inhibit_ipv4": "true"})
                client.networks.create(edge_network(self.cluster_name), driver="bridge",
                                       labels=self._labels("network"))
            ssh_port = self._start_gateway(image)
        except BaseException:
            self.cleanup()
            raise
        return {"image": image, "ssh_port": ssh_port}

    def _check_gpus(self) -> None:
        if self.config.gpus is not None and not self.config.simulate_accelerators and not detect_gpus():
            raise SpecError("sky.Container(gpus=...) passes NVIDIA GPUs to the nodes, and this machine has none "
                            "(no nvidia-smi). Fix: drop gpus=, or use simulate_accelerators=True to test placement")

    def _start_gateway(self, image: str) -> int:
        with engine.engine_errors("start the pool's gateway"):
            attrs = launch_request.launch(engine.engine_address(self.config.docker_host), launch_request.Launch(
                image=image, command=gateway.relay_command(HEAD_ALIAS, 22, gateway.HEAD_APPEARS_WITHIN_S),
                name=gateway_name(self.cluster_name), labels=self._labels("gateway"),
                network=edge_network(self.cluster_name), also_networks=[pool_network(self.cluster_name)],
                publish_on_loopback=[f"{gateway.RELAY_PORT}/tcp"], nano_cpus=250_000_000, mem_limit=128 * 1024**2))
        bound = (attrs["NetworkSettings"]["Ports"] or {}).get(f"{gateway.RELAY_PORT}/tcp") or []
        if not bound:
            raise ProvisioningError("Docker: the gateway's SSH port was not published on 127.0.0.1")
        return int(bound[0]["HostPort"])

    def cleanup(self) -> None:
        """Wait (bounded) for the nodes to be gone, then remove the gateway, any exited container and the networks."""
        deadline = time.monotonic() + 60
        while any(m.active for m in self.describe()) and time.monotonic() < deadline:
            time.sleep(0.5)
        import docker

        client = self.engine
        # the gateway, and any container of the pool the engine kept after it stopped (a daemon
        # restart keeps even auto-removed containers, exited)
        with engine.engine_errors("list the pool's containers", self.cluster_name):  # one call, no inspect (above)
            leftovers = client.api.containers(all=True, filters={"label": f"{names.CLUSTER}={self.cluster_name}"})
        for box in leftovers:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(box["Id"], force=True)
        for name in (pool_network(self.cluster_name), edge_network(self.cluster_name)):
            for attempt in range(20):  # a container being removed may still hold its endpoint
                try:
                    client.networks.get(name).remove()
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    time.sleep(0.5)

    # -- machines -------------------------------------------------------------------------------
    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        params = self.params
        simulated = self.config.simulate_accelerators and params.accelerator and params.accelerator_count
        return BootEnvironment(
            instance_id_shell=self.instance_id_shell, node_ip_shell=self.node_ip_shell,
            shutdown_command=self.shutdown_command, secrets_after_boot=True,
            num_cpus=self.cpus_per_node(),
            num_gpus=None if self.config.gpus is not None or simulated else 0.0,
            object_store_memory=self.config.object_store_memory)

    def cpus_per_node(self) -> float:
        return self.config.cpus or max(1.0, float((os.cpu_count() or 1) // max(self.params.nodes, 1)))

    def memory_per_node(self) -> int:
        return self.config.memory or int(psutil.virtual_memory().total * 0.6 / max(self.params.nodes, 1))

    def launch(self, request: MachineRequest) -> Machine:
        tags = {**request.tags, names.CLUSTER: self.cluster_name}
        lines = state_dir_lines()
        if request.role == "head" and self.params.ssh_public_key:
            lines += sshd_lines(22, SSH_USER, self.params.ssh_public_key)
        payload = "\n".join([*lines, request.boot_script])
        gpus = None
        if self.config.gpus is not None and not self.config.simulate_accelerators:
            gpus = -1 if self.config.gpus == "all" else int(self.config.gpus)
        name = f"skyward-{self.cluster_name}-{request.role}-{request.index}-{secrets.token_hex(3)}"
        with engine.engine_errors("start a node container", name):
            attrs = launch_request.launch(engine.engine_address(self.config.docker_host), launch_request.Launch(
                image=self.prepared["image"], entrypoint=["bash", "-c", payload], name=name,
                labels={**tags, KIND_LABEL: "node"},
                network=pool_network(self.cluster_name), aliases=[HEAD_ALIAS] if request.role == "head" else [],
                nano_cpus=int(self.cpus_per_node() * 1e9), mem_limit=self.memory_per_node(),
                shm_size=self.config.object_store_memory + 64 * 1024**2, gpus=gpus))
        return self._machine(attrs)

    def _machine(self, attrs: Mapping[str, Any]) -> Machine:
        labels = dict(attrs["Config"].get("Labels") or {})
        instance_id = attrs["Id"][:12]
        labels = LATER_TAGS.over(instance_id, labels)
        network = (attrs["NetworkSettings"].get("Networks") or {}).get(pool_network(self.cluster_name)) or {}
        state = _STATES.get(attrs["State"]["Status"], "stopping")
        tags = {k: v for k, v in labels.items() if k != KIND_LABEL}
        return Machine(instance_id=instance_id, state=state, private_ip=network.get("IPAddress") or None,
                       public_ip="127.0.0.1" if self._is_head(tags) else None, tags=tags)

    @staticmethod
    def _is_head(tags: Mapping[str, str]) -> bool:
        from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

        return tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD

    def describe(self) -> list[Machine]:
        with engine.engine_errors("list the pool's containers", self.cluster_name):
            boxes = self.engine.api.containers(all=True, filters={
                "label": [f"{names.CLUSTER}={self.cluster_name}", f"{KIND_LABEL}=node"]})
            listed = []
            for box in boxes:
                with contextlib.suppress(Exception):  # removed between the listing and the inspect
                    listed.append(self._machine(self.engine.api.inspect_container(box["Id"])))
        return listed

    def end_machine(self, instance_id: str) -> None:
        """Kill and remove the container (a container that is gone already is not an error)."""
        import docker

        try:
            self.engine.containers.get(instance_id).remove(force=True)
        except docker.errors.NotFound:
            raise NotFoundError(f"Docker: no container {instance_id}") from None
        except docker.errors.APIError as error:
            if "already in progress" not in str(error) and "is not running" not in str(error):
                raise ProvisioningError(f"Docker: removing container {instance_id}: {error}") from None

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        """Kept in this process: Docker cannot change a container's labels."""
        LATER_TAGS.set(instance_id, tags)

    def ssh_endpoint(self, machine: Machine) -> SSHEndpoint:
        port = self.prepared.get("ssh_port")
        if not port or not self._is_head(machine.tags):
            raise ProvisioningError(f"Docker: only the head of {self.cluster_name} is reachable, through the gateway")
        return SSHEndpoint(host="127.0.0.1", port=int(port), user=SSH_USER)

    def read_log(self, instance_id: str, lines: int) -> str | None:
        import docker

        try:
            return self.engine.containers.get(instance_id).logs(tail=lines).decode(errors="replace")
        except docker.errors.NotFound:
            return "(the container is gone, and its log with it)"
