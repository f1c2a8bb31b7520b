"""One Ray `NodeProvider` for every cloud whose machines boot themselves from a script.

A cloud supplies a `Cloud` (see `skyward_ray.cluster.contract`): launch, describe, terminate,
prepare, clean up. Everything that is the same on every cloud lives here, once:

- node indexes: the head is 0, workers take the lowest free index, a replacement keeps the index
  it replaces, and concurrent requests never share one;
- tags and labels, one spelling each (`skyward_ray.names`), with Ray's own autoscaler tags;
- the boot script: rendered per machine from the cluster's parameters and the cloud's
  `BootEnvironment`;
- Ray's v1 `NodeProvider` interface, so the same class serves our launcher, Ray's v2 autoscaler
  (through its adapter) and `ray up` with `provider: {type: external, module: ...}`;
- teardown order: workers before the head (a head ended first leaves workers draining).

State lives in the cloud (tags), never only here: a provider re-created in another thread or
process finds the same machines.

The Ray `provider:` section this class reads:

    provider:
      type: external
      module: node_providers.aws.AWSNodeProvider
      cloud: {region: us-east-1, ...}     # the provider's typed config (sky.AWS fields)
      cluster: {market: spot, ...}        # ClusterParams; filled in by bootstrap_config
      prepared: {...}                     # what Cloud.prepare made; filled in by bootstrap_config
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray import names
from skyward_ray.cluster import secret_delivery, ssh_keys, token_file
from skyward_ray.cluster.billing import Ledger
from skyward_ray.cluster.contract import Cloud, ClusterParams, Machine, MachineRequest, Role
from skyward_ray.errors import ProvisioningError
from skyward_ray.node import startup_script

# How long a cloud's listing may miss a machine its create just returned (eventual consistency):
# within it, a machine not listed is pending, not gone.
LISTING_LAG = 60.0

# Resources Ray takes as `ray start` flags rather than as custom resources.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def provider_section(node_provider: str, config_fields: dict[str, Any], params: ClusterParams) -> dict[str, Any]:
    """The `provider:` section of a cluster config, from a config's "module:Class" and fields."""
    module, _, cls = node_provider.partition(":")
    return {"type": "external", "module": f"{module}.{cls}", "cloud": config_fields, "cluster": params.model_dump()}


class ScriptBootedNodeProvider(NodeProvider):
    """Ray node provider over a `Cloud`. Subclasses only name their cloud: `cloud_class = ...`."""

    cloud_class: ClassVar[type[Cloud]]

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        config, params = self._parse(provider_config)
        # `ray up`: the token is on disk, and no skyward driver is there to hand it to the head after boot
        self.under_ray_up = not params.auth_token and bool(provider_config.get(token_file.PROVIDER_KEY))
        if self.under_ray_up:
            params = params.model_copy(update={"auth_token": token_file.token_for(provider_config)})
        self.params = params
        self.cloud = self.cloud_class(cluster_name, config, params, provider_config.get("prepared") or {})
        self._lock = threading.RLock()
        self._reserved_indexes: set[int] = set()
        self._described: tuple[float, list[Machine]] = (-1e9, [])
        self._private_ips: dict[str, str] = {}
        self._head_ip: str | None = None
        #: the pool's spending record, when a driver keeps one (`sky.Compute`); None under `ray up`
        self.ledger: Ledger | None = None
        self._launched_at: dict[str, float] = {}  # instance id → when this provider's create returned it
        #: the pool's secrets after boot (clouds with `BootEnvironment.secrets_after_boot`): the head's and tickets
        self.courier = secret_delivery.Courier(lambda: self.machines(fresh=True))

    @classmethod
    def _parse(cls, provider_config: dict[str, Any]) -> tuple[Any, ClusterParams]:
        config = cls.cloud_class.config_class(**(provider_config.get("cloud") or {}))
        params = ClusterParams(**(provider_config.get("cluster") or {}))
        return config, params

    # -- prepare / teardown --------------------------------------------------------------------
    @classmethod
    def bootstrap_config(cls, cluster_config: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """Fill in the cluster's token and instance type, and let the cloud prepare its resources."""
        provider = cluster_config["provider"]
        config, params = cls._parse(provider)
        updates: dict[str, Any] = {}
        if not params.auth_token:  # a fresh Ray token for every cluster, in a 0600 file: never in the config,
            # which `ray up` caches world-readable (`token_file`)
            provider.setdefault(token_file.PROVIDER_KEY, str(token_file.default_path(
                cluster_config["cluster_name"], config.key_dir)))
            token_file.ensure(provider[token_file.PROVIDER_KEY])
        if not params.instance_type:  # a cluster YAML names it per node type
            types = [t.get("node_config", {}).get("InstanceType")
                     for t in cluster_config.get("available_node_types", {}).values()]
            updates["instance_type"] = next((t for t in types if t), None)
        if not config.direct_driver and not params.ssh_key_dir:
            updates.update(cls._ssh_keys(cluster_config["cluster_name"], config.key_dir))
        params = params.model_copy(update=updates)
        provider["cluster"] = params.model_dump()
        if not provider.get("prepared"):
            provider["prepared"] = cls.cloud_class(cluster_config["cluster_name"], config, params, {}).prepare()
        return cluster_config

    @staticmethod
    def _ssh_keys(cluster_name: str, root: str | None) -> dict[str, str]:
        """This cluster's login key, made here on the driver (its public half is imported into the
        cloud, its private half never leaves this machine). The head's host key is made on the head
        (`head_host_key`)."""
        directory = ssh_keys.cluster_key_dir(cluster_name, Path(root) if root else None)
        client = ssh_keys.generate_keypair(directory, "id_ed25519", comment=f"skyward-{cluster_name}")
        return {"ssh_key_dir": str(directory), "ssh_public_key": client.public_line}

    def ssh_identity(self) -> Path:
        """The client's private key file (it logs in to the head)."""
        return Path(self.params.ssh_key_dir) / "id_ed25519"

    def head_host_key(self, head: str) -> str | None:
        """The head's SSH host public key line to pin: the one the head made at boot and printed on
        the log the cloud shows (None until it is there)."""
        return self.cloud.printed_host_key(head)

    def cleanup_cluster_resources(self) -> None:
        """End anything still running, then remove what `prepare` made, and the cluster's keys."""
        leftover = self.non_terminated_nodes({})
        if leftover:
            self.terminate_nodes(leftover)
        self.cloud.cleanup()
        token_file.remove(self.provider_config)
        if self.params.ssh_key_dir:
            ssh_keys.remove_key_dir(Path(self.params.ssh_key_dir))

    # -- queries -------------------------------------------------------------------------------
    @property
    def gcs_port(self) -> int:
        """The head's Ray port: the cloud may have picked one at prepare (several nodes per host)."""
        return int(self.cloud.prepared.get("gcs_port", self.params.gcs_port))

    def machines(self, fresh: bool = False) -> list[Machine]:
        """The cloud's listing of this cluster, reused for the cloud's `describe_ttl` seconds."""
        with self._lock:
            at, machines = self._described
            if not fresh and time.monotonic() - at < self.cloud_class.describe_ttl:
                return machines
        machines = self.cloud.describe()
        if self.ledger is not None:  # a machine just created may not be listed yet: not ended
            now = time.monotonic()
            recent = [i for i, at in list(self._launched_at.items()) if now - at <= LISTING_LAG]
            self.ledger.seen_active([m.instance_id for m in machines if m.active] + recent)
        with self._lock:
            self._described = (time.monotonic(), machines)
            self._private_ips.update({m.instance_id: m.private_ip for m in machines if m.private_ip})
        return machines

    def _machine(self, node_id: str) -> Machine | None:
        return next((m for m in self.machines() if m.instance_id == node_id), None)

    def _forget_listing(self) -> None:
        with self._lock:
            self._described = (-1e9, [])

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        alive = [m for m in self.machines(fresh=True) if m.active
                 and all(m.tags.get(k) == v for k, v in tag_filters.items())]
        alive.sort(key=lambda m: int(m.tags.get(names.NODE_INDEX, 0)))
        return [m.instance_id for m in alive]

    def is_running(self, node_id: str) -> bool:
        machine = self._machine(node_id)
        return machine is not None and machine.state == "running"

    def is_terminated(self, node_id: str) -> bool:
        machine = self._machine(node_id)
        if machine is None:  # a machine just created may not be listed yet (eventual consistency): pending
            launched = self._launched_at.get(node_id)
            return launched is None or time.monotonic() - launched > LISTING_LAG
        return machine.state not in ("pending", "running")

    def node_tags(self, node_id: str) -> dict[str, str]:
        machine = self._machine(node_id)
        return dict(machine.tags) if machine else {}

    def internal_ip(self, node_id: str) -> str:
        known = self._private_ips.get(node_id)  # a machine keeps its private address
        if known:
            return known
        machine = self._machine(node_id)
        return (machine.private_ip or "") if machine else ""

    def external_ip(self, node_id: str) -> str | None:
        machine = self._machine(node_id)
        return machine.public_ip if machine else None

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        self.cloud.set_tags(node_id, tags)
        self._forget_listing()

    def log_tail(self, node_id: str, lines: int = 30) -> str:
        return self.cloud.log_tail(node_id, lines)

    # -- create --------------------------------------------------------------------------------
    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int,
        resources: dict[str, float], labels: dict[str, str],
    ) -> dict[str, Any]:
        """Start `count` machines, each with its own index. Returns {id: info}.

        Workers with no index asked for, on a cloud that starts many identical machines in one call,
        go in one batch (`Cloud.launch_many`): one request and one rate-limit token for all of them,
        which is what keeps a 256-node launch within EC2's RunInstances limit of 2 requests a second.
        Otherwise one launch each, each with its own boot script."""
        role: Role = "head" if tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD else "worker"
        head_ip = None if role == "head" else self._find_head_ip()
        if count > 1 and role == "worker" and names.NODE_INDEX not in labels and self.launches_in_batches:
            return self._create_batch(node_config, tags, count, resources, labels, head_ip or "")
        created: dict[str, Any] = {}
        for _ in range(count):
            index = self._reserve_index(role, labels)
            try:
                node_tags = self._node_tags(tags, {names.NODE_INDEX: str(index)})
                boot = self._boot(role, index, node_tags, labels, resources, head_ip)
                machine = self.cloud.launch(MachineRequest(
                    index=index, role=role, tags=node_tags, boot_script=startup_script.render(boot),
                    node_config=dict(node_config), client_token=self._client_token(index, tags)))
            finally:
                with self._lock:
                    self._reserved_indexes.discard(index)
            self._launched(machine, role, boot)
            created[machine.instance_id] = {"instance_id": machine.instance_id, "ip": machine.private_ip,
                                            "index": index}
        return created

    @property
    def launches_in_batches(self) -> bool:
        """Whether this cloud starts many identical workers in one call (it implements `Cloud.launch_many`;
        asked of the class: a cloud's `boot_environment` may reserve ports)."""
        return type(self.cloud).launch_many is not Cloud.launch_many

    def _create_batch(self, node_config: dict[str, Any], tags: dict[str, str], count: int,
                      resources: dict[str, float], labels: dict[str, str], head_ip: str) -> dict[str, Any]:
        """`count` workers in one launch: consecutive indexes from the lowest free run, one boot script
        (each machine adds its launch index to the first index), one enrollment ticket for the batch
        (the head answers it once per worker address the driver registers, `secret_delivery`)."""
        first = self._reserve_run(count)
        try:
            node_tags = self._node_tags(tags, {names.FIRST_INDEX: str(first)})
            boot = self._boot("worker", first, node_tags, labels, resources, head_ip, batch=True)
            machines = self.cloud.launch_many(MachineRequest(
                index=first, role="worker", tags=node_tags, boot_script=startup_script.render(boot),
                node_config=dict(node_config), client_token=self._client_token(first, tags)), count)
        finally:
            with self._lock:
                self._reserved_indexes.difference_update(range(first, first + count))
        created: dict[str, Any] = {}
        for machine in machines:
            self._launched(machine, "worker", boot)
            created[machine.instance_id] = {"instance_id": machine.instance_id, "ip": machine.private_ip,
                                            "index": int(machine.tags.get(names.NODE_INDEX, first))}
        return created

    def _node_tags(self, tags: dict[str, str], index_tags: dict[str, str]) -> dict[str, str]:
        node_tags = {**tags, TAG_RAY_CLUSTER_NAME: self.cluster_name, names.CLUSTER: self.cluster_name, **index_tags}
        if self.params.offer:
            node_tags[names.OFFER] = self.params.offer
        node_tags.update({k: v for k, v in self.params.pool_tags.items() if k not in node_tags})
        return node_tags

    def _client_token(self, index: int, tags: dict[str, str]) -> str:
        """One idempotency token per launch call (a node, or a batch by its first index) and attempt."""
        return f"{self.cluster_name}-{index}-{tags.get(TAG_RAY_LAUNCH_REQUEST) or secrets.token_hex(4)}"

    def _launched(self, machine: Machine, role: Role, boot: startup_script.NodeBoot) -> None:
        """What this provider records of a machine its cloud just started."""
        self._launched_at[machine.instance_id] = time.monotonic()
        if boot.secrets_after_boot:
            if role == "head":
                self.courier.head_waits = True
            else:
                self.courier.worker_launched(machine.instance_id, boot.enrollment_ticket)
        self._forget_listing()
        if self.ledger is not None:
            self.ledger.launched([machine.instance_id])
        if machine.private_ip:
            self._private_ips[machine.instance_id] = machine.private_ip

    def _find_head_ip(self) -> str:
        if self._head_ip:
            return self._head_ip
        heads = [m for m in self.machines(fresh=True)
                 if m.tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD and m.state in ("pending", "running")]
        if not heads or not heads[0].private_ip:
            raise ProvisioningError(f"cluster {self.cluster_name} has no running head node to join workers to")
        self._head_ip = heads[0].private_ip
        return self._head_ip

    def _reserve_index(self, role: Role, labels: dict[str, str]) -> int:
        """The caller's index (a replacement), 0 for the head, else the lowest index not in use."""
        with self._lock:
            if names.NODE_INDEX in labels:
                index = int(labels[names.NODE_INDEX])
            elif role == "head":
                index = 0
            else:
                used = {int(m.tags.get(names.NODE_INDEX, -1)) for m in self.machines(fresh=True) if m.active}
                used |= self._reserved_indexes | {0}
                index = next(i for i in itertools.count(1) if i not in used)
            self._reserved_indexes.add(index)
            return index

    def _reserve_run(self, count: int) -> int:
        """The first of the lowest `count` consecutive worker indexes not in use (a batch's)."""
        with self._lock:
            used = {int(m.tags.get(names.NODE_INDEX, -1)) for m in self.machines(fresh=True) if m.active}
            used |= self._reserved_indexes | {0}
            first = next(i for i in itertools.count(1) if not used & set(range(i, i + count)))
            self._reserved_indexes.update(range(first, first + count))
            return first

    def _boot(self, role: Role, index: int, tags: dict[str, str], labels: dict[str, str],
              resources: dict[str, float], head_ip: str | None, batch: bool = False) -> startup_script.NodeBoot:
        """One node's boot; `batch`: every worker of a batch (`index` is the first's, and each machine
        works out its own at boot, so the index is in no literal of the script)."""
        params, config = self.params, self.cloud.config
        env = self.cloud.boot_environment(role, index)
        num_gpus, custom = env.num_gpus, dict(env.resources)
        if config.simulate_accelerators and params.accelerator and params.accelerator_count:
            num_gpus = float(params.accelerator_count)
            custom.setdefault(f"accelerator_type:{params.accelerator}", 1.0)
        custom.update({k: v for k, v in resources.items() if k not in _BUILTIN_RESOURCES})
        node_labels = {**{k: v for k, v in labels.items() if k != names.NODE_INDEX}, names.PROVIDER: config.name}
        if not batch:
            node_labels[names.NODE_INDEX] = str(index)
        if params.accelerator:
            node_labels.setdefault(names.ACCELERATOR, params.accelerator)
        if params.offer:
            node_labels[names.OFFER] = params.offer
        spot = (params.head_market if role == "head" and params.head_market else params.market) == "spot"
        # then neither the token nor the pool's env is in the payload (`ray up` has no driver to deliver them)
        later = env.secrets_after_boot and not self.under_ray_up
        return startup_script.NodeBoot(
            role=role,
            cluster_name=self.cluster_name,
            auth_token="" if env.token_in_environment or later else params.auth_token,
            secrets_after_boot=later,
            enrollment_ticket=secret_delivery.new_ticket() if later and role == "worker" else "",
            gcs_port=self.gcs_port,
            head_ip=head_ip,
            python=env.python,
            pip=list(params.pip),
            apt=list(params.apt),
            env={**({} if later else params.env), **({} if batch else {names.ENV_NODE_INDEX: str(index)}),
                 names.ENV_PROVIDER: config.name, names.ENV_TOTAL_NODES: str(params.nodes),
                 names.ENV_ACCELERATOR: params.accelerator or "",
                 names.ENV_ACCELERATOR_COUNT: str(params.accelerator_count or 0),
                 names.ENV_SPOT: "1" if spot else "0"},
            node_type_name=tags.get(TAG_RAY_USER_NODE_TYPE, names.HEAD_TYPE if role == "head" else names.WORKER_TYPE),
            labels=node_labels,
            shell_labels={names.INSTANCE_ID: f"${names.ENV_INSTANCE_ID}",
                          **({names.NODE_INDEX: f"${names.ENV_NODE_INDEX}"} if batch else {})},
            first_index=index if batch else None,
            launch_index_shell=env.launch_index_shell if batch else None,
            num_cpus=resources.get("CPU", env.num_cpus),
            num_gpus=resources.get("GPU", num_gpus),
            memory=int(resources["memory"]) if "memory" in resources else env.memory,
            object_store_memory=env.object_store_memory,
            resources=custom,
            market_type="spot" if spot else "on-demand",
            region=params.region,
            zone=params.zone,
            instance_id_shell=env.instance_id_shell,
            node_ip_shell=env.node_ip_shell,
            temp_dir_shell=env.temp_dir_shell,
            extra_ray_args=env.extra_ray_args,
            # the job API of `ray job submit`, on the head's loopback only, when the pool asks for it
            dashboard_port=env.dashboard_port if role == "head" and params.dashboard else None,
            heartbeat_grace=params.heartbeat_grace,
            first_heartbeat_grace=params.first_heartbeat_grace,
            boot_deadline=params.boot_deadline,
            head_wait_timeout=params.boot_deadline,
            lifetime=params.max_lifetime if role == "head" else None,
            gcs_reconnect_timeout=env.gcs_reconnect_timeout,
            shutdown_command=env.shutdown_command,
            # a head reached through SSH prints the host key it made, for the driver to pin
            print_host_key=self.cloud.head_host_key_file if role == "head" else None,
        )

    # -- terminate -----------------------------------------------------------------------------
    def terminate_node(self, node_id: str) -> None:
        self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> None:  # type: ignore[override]
        """Workers first, the head last: a head ended first leaves its workers draining. When the
        ids hold every machine still running, the whole pool ends (`Cloud.end_pool`)."""
        ids = sorted(set(node_ids))
        if not ids:
            return
        listed = self.machines(fresh=True)
        kinds = {m.instance_id: m.tags.get(TAG_RAY_NODE_KIND) for m in listed}
        heads = [i for i in ids if kinds.get(i) == NODE_KIND_HEAD]
        workers = [i for i in ids if i not in heads]
        running = {m.instance_id for m in listed if m.active}
        if not (running and running <= set(ids) and self.cloud.end_pool(ids)):
            if workers:
                self.cloud.terminate(workers)
            if heads:
                self.cloud.terminate(heads)
        if self.ledger is not None:
            self.ledger.ended(ids)
        self._forget_listing()

    # -- `ray up` ------------------------------------------------------------------------------
    def get_command_runner(self, log_prefix: str, node_id: str, auth_config: dict[str, Any], cluster_name: str,
                           process_runner: Any, use_internal_ip: bool,
                           docker_config: dict[str, Any] | None = None) -> "BootScriptCommandRunner":
        """For `ray up`: machines set themselves up from their boot script; there is nothing to run over SSH."""
        return BootScriptCommandRunner(node_id)


class BootScriptCommandRunner:
    """What Ray's cluster launcher gets instead of SSH: a runner that runs nothing, and says so.

    A node of a script-booted provider installs the image and starts Ray from its boot script, so
    the YAML's `setup_commands`/`*_start_ray_commands`/`file_mounts` are not used. Commands are
    recorded so nobody mistakes them for having run.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.skipped: list[str] = []

    def run(self, cmd: str | None = None, timeout: int = 120, exit_on_fail: bool = False,
            port_forward: Any = None, with_output: bool = False, environment_variables: Any = None,
            run_env: str = "auto", ssh_options_override_ssh_key: str = "", shutdown_after_run: bool = False) -> Any:
        if cmd:
            self.skipped.append(cmd)
        return b"" if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: Any = None) -> None:
        self.skipped.append(f"rsync-up {source} {target}")

    def run_rsync_down(self, source: str, target: str, options: Any = None) -> None:
        self.skipped.append(f"rsync-down {source} {target}")

    def remote_shell_command_str(self) -> str:
        return f"# {self.node_id} boots from its script; skyward_ray opens no SSH session to it\n"

    def run_init(self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool) -> bool | None:
        return None
