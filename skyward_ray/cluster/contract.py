"""The provider contract: everything `skyward_ray` knows about a cloud, declared in one place.

A cloud is narrow on purpose. It rents plain machines that boot themselves from a script, and it
says what it sells. Everything else (node indexes, tags and labels, rendering the boot script,
Ray's `NodeProvider` interface and `ray up` compatibility, teardown order) lives once, in
`skyward_ray.cluster.node_provider.ScriptBootedNodeProvider`. The shape follows dask-cloudprovider's
`VMCluster` (a cloud implements create/destroy) and SkyPilot's typed provisioning records.

What crosses the line is typed: `ClusterParams` (what the launcher, or a cluster YAML, asks of one
cluster), `MachineRequest` (one machine to start, with its rendered boot script), `Machine` (what
the cloud says about one machine), `BootEnvironment` (how the cloud's machines learn who they are
and how they power off). The user-facing half of a provider, its typed config and its offer
source, is `skyward_ray.planning.providers.ProviderConfig`, which never imports Ray.

A new cloud is a package `node_providers/<name>/` with a `ProviderConfig` subclass (`config.py`),
an offer source, a `Cloud` subclass, and a one-line `ScriptBootedNodeProvider` subclass naming
them; see docs/architecture.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from skyward_ray.errors import ProvisioningError
from skyward_ray.planning.providers import ProviderConfig

Role = Literal["head", "worker"]
MachineState = Literal["pending", "running", "stopping", "terminated"]

# States in which a machine may still bill or come back: never orphan these.
ACTIVE_STATES: frozenset[str] = frozenset({"pending", "running", "stopping"})


class NotFoundError(ProvisioningError):
    """The cloud does not know this machine id (never made, malformed, or already gone).

    A cloud's API wrapper raises it for an unknown id, so what "an unknown id" means is decided
    once per cloud, by the cloud's own error codes, and acted on once by the caller: `terminate`
    takes it as done, a tag change right after a create retries it (eventual consistency)."""


class ClusterParams(BaseModel):
    """What one cluster is: chosen by the launcher from the plan, or written in a cluster YAML
    (`provider: {cluster: {...}}`). The same for every cloud."""

    model_config = ConfigDict(extra="forbid")

    auth_token: str = Field(default="", repr=False, description="the cluster's Ray token; made at prepare if empty")
    gcs_port: int = 6379
    nodes: int = Field(default=1, ge=1, description="the size the pool is launched at (local pools split CPUs by it)")
    instance_type: str | None = None
    market: Literal["spot", "on-demand"] = "on-demand"
    head_market: Literal["spot", "on-demand"] | None = Field(
        default=None, description="the head's market when it differs from `market` (an on-demand head for a spot "
                                  "pool: a reclaimed head ends the whole pool)")
    region: str | None = None
    zone: str | None = None
    offer: str | None = Field(default=None, description="a label naming the offer bought, e.g. g4dn.xlarge.us-east-1a.spot")
    accelerator: str | None = None
    accelerator_count: int = 0
    heartbeat_grace: float = 30.0
    first_heartbeat_grace: float = Field(
        default=60.0, description="seconds from the head's GCS first answering to the driver's first heartbeat "
                                  "(the driver beats from the moment the head answers)")
    boot_deadline: float = Field(
        default=900.0, description="seconds a machine may take from its boot to the first heartbeat (head) or "
                                   "to reaching the head (worker) before it ends itself")
    max_lifetime: float | None = Field(
        default=None, gt=0, description="a detached pool's remaining lifetime in seconds, enforced by the head itself "
                                        "(it ends the pool then, even with its keeper gone); None: no limit")
    pip: list[str] = Field(default_factory=list, description="installed by every node's boot script")
    ssh_key_dir: str = Field(default="", description="the cluster's SSH keys on the driver (0700); made at prepare")
    ssh_public_key: str = Field(default="", description="the driver's SSH public key line for this cluster")
    apt: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="exported on every node before Ray starts")
    pool_tags: dict[str, str] = Field(
        default_factory=dict, description="tags put on every machine of the pool: who keeps it alive, since when, "
                                          "at what price (`skyward_ray.cluster.pool_state.owner_tags`)")
    dashboard: bool = Field(
        default=False, description="run Ray's dashboard on the head, on 127.0.0.1 only (its job API is what "
                                   "`ray job submit` talks to); off by default: it costs the head ~1.4 GB and seconds")


@dataclass(frozen=True)
class MachineRequest:
    """One machine to start: its node index and role, the tags to put on it, its boot script, and
    the cluster YAML's `node_config` for its node type (cloud-specific overrides; usually empty)."""

    index: int
    role: Role
    tags: Mapping[str, str]
    boot_script: str
    node_config: Mapping[str, Any] = field(default_factory=dict)
    client_token: str | None = None
    """An idempotency token, one per node and per launch attempt: a cloud that has them (EC2
    `ClientToken`) passes it, so a create retried after a lost response starts no second machine."""


@dataclass(frozen=True)
class SSHEndpoint:
    """Where the driver reaches a machine's SSH server from outside the cloud."""

    host: str
    port: int
    user: str


@dataclass(frozen=True)
class Machine:
    """One machine as the cloud lists it. `tags` hold every fact the cluster keeps about it."""

    instance_id: str
    state: MachineState
    private_ip: str | None = None
    public_ip: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class ClusterListing:
    """One skyward cluster as a cloud lists it, found by skyward's own tags and names only
    (`Cloud.list_clusters`): what `skyward-ray status` shows and what `down`/`gc` end."""

    name: str
    machines: list[Machine]
    region: str | None = None
    prepared: Mapping[str, Any] = field(default_factory=dict)
    """what a `Cloud` of this cluster needs as `prepared` to terminate and clean up (local: its state dir)"""
    resources: list[str] = field(default_factory=list)
    """what `prepare` made that `cleanup` removes (security groups, key pairs, directories), for display"""

    @property
    def active(self) -> list[Machine]:
        return [m for m in self.machines if m.active]


class BootEnvironment(BaseModel):
    """How this cloud's machines boot: what the generic boot script cannot know by itself."""

    model_config = ConfigDict(extra="forbid")

    instance_id_shell: str = Field(description="shell expression giving the machine's own instance id")
    node_ip_shell: str = Field(description="shell expression giving the machine's private address")
    shutdown_command: str = Field(description="ends this machine (and its billing) when Ray exits")
    token_in_environment: bool = Field(
        default=False, description="the cloud puts the cluster's token in the machine's environment itself "
                                   "(RAY_AUTH_TOKEN; local: the child process's environment), so the boot script "
                                   "never holds it")
    secrets_after_boot: bool = Field(
        default=False, description="no secret in the launch payload (the cloud keeps it where others read it): "
                                   "the head gets the token and env from the driver over SSH, workers from the "
                                   "head for a one-time ticket (`skyward_ray.cluster.secret_delivery`)")
    python: str | None = Field(default=None, description="an interpreter with the driver's Python and Ray "
                                                         "already there; None: the node makes its own (uv)")
    temp_dir_shell: str | None = Field(default=None, description="Ray's temp dir (short: unix sockets live there)")
    extra_ray_args: list[str] = Field(default_factory=list)
    launch_index_shell: str | None = Field(
        default=None, description="shell expression giving the machine's position (0, 1, ...) among the machines "
                                  "one launch call started, on a cloud that starts many identical machines in one "
                                  "call (`Cloud.launch_many`: EC2 RunInstances, the instance's ami-launch-index); "
                                  "None: one machine per call")
    dashboard_port: int = Field(default=8265, description="where the head's dashboard listens on 127.0.0.1 when "
                                                          "the pool has one; clouds whose nodes share a host pick a "
                                                          "free port")
    gcs_reconnect_timeout: int = 15
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    object_store_memory: int | None = None
    resources: dict[str, float] = Field(default_factory=dict)


class Cloud(ABC):
    """One cloud's machines. Implementations are thread-safe and keep no state that the cloud
    does not also hold (tags, names): Ray's autoscaler re-creates providers at will, and a
    provider made in another process must find the same machines.

    Errors are the typed errors of `skyward_ray.errors`: `CapacityError` (try the next offer),
    `AuthError` / `QuotaError` (skip this provider), `ProvisioningError` otherwise.
    """

    #: the config class this cloud is configured by
    config_class: ClassVar[type[ProviderConfig]]
    #: how long a `describe()` answer may be reused by the generic provider (spares rate limits)
    describe_ttl: ClassVar[float] = 0.0
    #: whether `describe()` lists a machine as soon as `launch` returned it (the local process
    #: table: yes; a cloud API: only eventually). Teardown needs one more empty listing otherwise.
    listing_is_consistent: ClassVar[bool] = False
    #: whether a machine listed as terminated may still hold something `terminate` ends (a local
    #: machine's stray processes and its directory): `skyward-ray down`/`gc` then end it again.
    terminated_may_linger: ClassVar[bool] = False
    #: where the head of a cloud driven through SSH keeps the public half of the SSH host key it made
    #: at boot, which it prints on its log for the driver to read back (`printed_host_key`) and pin:
    #: no host private key travels in a launch payload. None: the driver reaches no sshd (local)
    head_host_key_file: ClassVar[str | None] = None

    def __init__(self, cluster_name: str, config: ProviderConfig, params: ClusterParams,
                 prepared: Mapping[str, Any]) -> None:
        self.cluster_name = cluster_name
        self.config = config
        self.params = params
        self.prepared = dict(prepared)

    # -- every cluster of this cloud (skyward-ray status / down / gc) ----------------------------
    @classmethod
    def list_clusters(cls, config: ProviderConfig) -> list[ClusterListing]:
        """Every skyward cluster this cloud holds for this user, machines or only leftovers (a
        security group, a key pair, a state dir), found by skyward's own tags and names only and
        never anything skyward did not create. Raises `AuthError` where there are no credentials.
        A cluster listed here is ended by `cls(listing.name, config, ClusterParams(region=...),
        listing.prepared)`: `terminate` its machines, then `cleanup`. Optional: a cloud that does
        not implement it is left out of `skyward-ray status`/`gc` (and says so)."""
        raise NotImplementedError(f"{cls.__name__} cannot list its clusters yet")

    # -- per-cluster resources ------------------------------------------------------------------
    @abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Create what the cluster's machines need (network, security group, key pair, state dir)
        and return the facts later calls need (ids, addresses). All or nothing: on failure remove
        what was made. Called once per cluster; the result comes back as `self.prepared`."""

    @abstractmethod
    def cleanup(self) -> None:
        """Remove what `prepare` made. Called after every machine was terminated; waits as long as
        the cloud needs for the machines to be gone before removing what they used."""

    # -- machines -------------------------------------------------------------------------------
    @abstractmethod
    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        """How a machine of this role and index boots on this cloud (its identity, its shutdown)."""

    @abstractmethod
    def launch(self, request: MachineRequest) -> Machine:
        """Start one machine running `request.boot_script`, tagged with `request.tags`. Returns at
        once (the machine boots by itself). Raises without leaving a machine behind."""

    def launch_many(self, request: MachineRequest, count: int) -> list[Machine]:
        """Start `count` identical workers in one call, where the cloud's API has one (its boot
        environment names a `launch_index_shell`): one request, one payload, one rate-limit token,
        instead of `count`. `request.index` is the first node's index; each machine's is that plus its
        launch index, which the machine reads at boot and the cloud's listing gives back as the
        `NODE_INDEX` tag. All or nothing: raises without leaving a machine behind."""
        raise NotImplementedError(f"{type(self).__name__} starts one machine per call")

    @abstractmethod
    def describe(self) -> list[Machine]:
        """Every machine of this cluster the cloud still lists, in any state."""

    @abstractmethod
    def terminate(self, instance_ids: list[str]) -> None:
        """End these machines (terminate, never stop: a stopped machine keeps billing its disk).
        Unknown or already-ended ids are not an error."""

    def end_pool(self, instance_ids: list[str]) -> bool:
        """End the whole pool at once (no machine of it stays running), where the cloud can do so at
        no cost to anyone; returns whether it did. Default: no (the provider ends the machines in
        order, workers first). Local machines end together: no node stays behind to notice."""
        return False

    @abstractmethod
    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        """Add or change tags on one machine."""

    def ssh_endpoint(self, machine: Machine) -> SSHEndpoint:
        """Where the driver reaches this machine's SSH server (clouds whose config is not
        `direct_driver`); the key to log in is the cluster's, imported at prepare."""
        raise NotImplementedError(f"{type(self).__name__} is driven directly; it has no SSH endpoint")

    def printed_host_key(self, instance_id: str) -> str | None:
        """The SSH host public key (`type base64`) the machine printed on its console at boot, once
        the cloud shows it (None until then); every cloud driven through SSH has it."""
        raise NotImplementedError(f"{type(self).__name__} cannot show a machine's console")

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        """The last lines of the machine's boot log, for error messages; where the cloud has one."""
        return "(this provider keeps no node log)"
