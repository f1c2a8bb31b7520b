"""RunPod pods for the generic script-booted node provider: launch, describe, terminate.

A pod is a container. Its command (RunPod's `dockerArgs`) is the node's whole boot: a short
`bash -c` that decodes the base64 payload (the SDK pastes arguments into its GraphQL text
unescaped, so nothing with quotes or newlines may travel there) and runs it. The payload starts,
on the head only, with a prelude that installs the cluster's login key, makes a fresh SSH host key
and prints its public half on the pod's log, and starts sshd, before the generic boot script starts
Ray: the driver reads that key back through RunPod's v2 log stream (`GET /v2/pods/{id}/logs`), pins
it, and reaches the head through `ssh -L` to the public port RunPod maps to port 22.

Pods have no tags. A pod's identity is its name, `skyward-<cluster>-<role>-<index>`, and its
tags travel encoded in one env variable (`names.ENV_MACHINE_TAGS`), both written by
`skyward_ray.cluster.machine_tags`, so a provider made in another process finds the same pods;
`describe` lists the account's pods by that name prefix. Tags changed after the launch
(`set_tags`, which only `ray up`'s updaters call) are the one thing kept in this process (shared by
every provider instance in it), not at RunPod: RunPod cannot change a running pod's env or name
without restarting the pod, which would end its Ray node.

A pod ends itself with only what RunPod gives every pod about itself: its id (`RUNPOD_POD_ID`)
and its pod-scoped key (`RUNPOD_API_KEY`, https://docs.runpod.io/pods/references/environment-variables),
through `runpodctl remove pod` (installed in every pod with that key) or, without it, the same
`podTerminate` GraphQL call with curl. The user's key never reaches a pod.

Pools of 2+ pods are created through the REST pod API with `globalNetworking: true`, on-demand, in
the Secure Cloud data centers that offer it (`global_network.py`, which cites what RunPod documents):
each pod is reachable from the others of the account at `<pod id>.runpod.internal`, which is the
address workers join the head by. One-pod pools need no private network and use GraphQL (on-demand,
or interruptible at the current bid floor). Every pod is listed and ended through GraphQL.

Listing is reused for `describe_ttl` (2 s): at most 30 listings a minute per pool, half of the
per-minute quota RunPod's v2 API shows as its example (`RateLimit-Policy: "minute";q=60`; RunPod
publishes no numbers for GraphQL or REST v1); a 429 is waited out in `transport.py`.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from node_providers.runpod import global_network as network
from node_providers.runpod import transport
from node_providers.runpod.api import graphql, pod_log, require_key, rest, runpod_errors, safe
from node_providers.runpod.config import RunPod
from skyward_ray import names
from skyward_ray.cluster.contract import ClusterListing, ClusterParams, Machine, MachineRequest, MachineState, SSHEndpoint
from skyward_ray.cluster.machine_tags import MachineName, MachineNaming, TagCodec
from skyward_ray.cluster.remote_cloud import LaterTags, RemoteCloud
from skyward_ray.errors import CapacityError, ProvisioningError, SpecError
from skyward_ray.node import self_destroy
from skyward_ray.node.sshd import sshd_lines, state_dir_lines

INTERNAL_DOMAIN = network.INTERNAL_DOMAIN
BOOT_FILE = "$HOME/.skyward-boot.sh"
ENV_TAGS = names.ENV_MACHINE_TAGS
NAMING = MachineNaming(first="-", between="-")
TAGS = TagCodec(ascii_armor=True)  # the SDK pastes env values into its GraphQL text unescaped


def shutdown_command(budget_s: int = self_destroy.BUDGET_S, call_s: int = self_destroy.CALL_S) -> str:
    """Terminate this pod (never stop it) with only its own id and pod-scoped key: `runpodctl`
    (RunPod installs it in every pod with that key), else the GraphQL podTerminate it would send;
    each attempt bounded, retried for `budget_s` seconds (`skyward_ray.node.self_destroy`)."""
    graphql_call = self_destroy.http_attempt(
        "-X POST -H 'Content-Type: application/json' -H \"Authorization: Bearer ${RUNPOD_API_KEY:-}\" "
        '--data "{\\"query\\": \\"mutation { podTerminate(input: {podId: \\\\\\"${RUNPOD_POD_ID:-}\\\\\\"}) }\\"}" '
        '"${RUNPOD_API_BASE_URL:-https://api.runpod.io}/graphql"', call_s)
    cli = ("{ command -v runpodctl >/dev/null 2>&1 && "
           + self_destroy.bounded('runpodctl remove pod "${RUNPOD_POD_ID:-}"') + " >/dev/null 2>&1; }")
    attempt = f"{{ {cli} || {graphql_call}; }}"
    return "{ " + self_destroy.recover_environment(("RUNPOD_POD_ID", "RUNPOD_API_KEY")) + "\n" + \
        self_destroy.retrying(attempt, "terminate this pod", budget_s, call_s) + "; }"


SHUTDOWN_COMMAND = shutdown_command()

# RunPod's desiredStatus → the contract's. A pod whose runtime is null has no container yet.
# EXITED (its container ended, or RunPod took an interruptible pod back) never comes back for
# skyward_ray, yet keeps billing its volume: `describe` terminates it on sight and reports it
# terminated, so the pool replaces the node at once and nothing is left billing.
_STATES: dict[str, MachineState] = {"EXITED": "terminated", "TERMINATED": "terminated", "DEAD": "terminated"}
_POD_FIELDS = ("id name desiredStatus env costPerHr gpuCount imageName machineId "
               "runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }")


# Tag changes made in this process after a launch, by pod id (RunPod cannot keep them; see above).
LATER_TAGS = LaterTags()


class RunPodCloud(RemoteCloud):
    """The pods of one cluster, in the RunPod account the key belongs to."""

    config_class = RunPod
    config: RunPod
    instance_id_shell = "${RUNPOD_POD_ID}"
    # The pod's address on the global network (its DNS name resolves there), else its first address.
    node_ip_shell = ("$({ getent hosts ${RUNPOD_POD_ID}." + INTERNAL_DOMAIN + " | awk '{print $1; exit}'; "
                     "hostname -I | awk '{print $1}'; } | head -n 1)")
    shutdown_command = SHUTDOWN_COMMAND
    describe_ttl = 2.0
    log_name = "pod log"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._ssh: dict[str, tuple[str, int]] = {}  # pod id → (public ip, public port of 22)

    @property
    def key(self) -> str:
        return require_key(self.config.api_key)

    # -- every skyward cluster of the account (skyward-ray status / down / gc) ------------------
    @classmethod
    def list_clusters(cls, config: RunPod) -> list[ClusterListing]:  # type: ignore[override]
        """The account's pods named `skyward-<cluster>-<role>-<index>`, by cluster; nothing else."""
        key = require_key(config.api_key)
        with runpod_errors("list pods"):
            pods = (graphql(key, "query myPods { myself { pods { id name } } }").get("myself") or {}).get("pods") or []
        clusters = sorted({found.cluster for pod in pods if (found := NAMING.parse(pod.get("name") or ""))})
        return [ClusterListing(name=name, machines=cls(name, config, ClusterParams(), {}).describe())
                for name in clusters]

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Nothing to make (pods carry their own keys): check the key and the GPU type before any pod."""
        if not self.params.instance_type:
            raise SpecError("RunPod: no GPU type; set provider.cluster.instance_type (e.g. 'NVIDIA GeForce RTX 4090')")
        safe(self.params.instance_type, "the GPU type")
        safe(self.cluster_name, "the cluster name")
        if self.params.nodes > 1 and (reason := network.refusal(self.params.market, self.params.head_market)):
            raise SpecError(f"RunPod: {reason}")
        with runpod_errors("check the API key"):
            graphql(self.key, "query myself { myself { id } }")
        return {"global_network": self.params.nodes > 1}

    def cleanup(self) -> None:
        """No per-cluster resources: wait (bounded) until RunPod lists none of the cluster's pods active."""
        deadline = time.monotonic() + 60
        while any(m.active for m in self.describe()) and time.monotonic() < deadline:
            time.sleep(1.0)

    # -- machines -------------------------------------------------------------------------------
    @property
    def global_network(self) -> bool:
        return bool(self.prepared.get("global_network", self.params.nodes > 1))

    def launch(self, request: MachineRequest) -> Machine:
        """One pod: on the global network through REST (pools of 2+), else `podFindAndDeployOnDemand`, or
        `podRentInterruptable` bidding the current floor (spot)."""
        params, node_config = self.params, request.node_config
        gpu_type = safe(str(node_config.get("gpuTypeId") or params.instance_type or ""), "the GPU type")
        if not gpu_type:
            raise SpecError("RunPod: no GPU type for this pod")
        count = int(node_config.get("gpuCount") or params.accelerator_count or 1)
        market = str(node_config.get("market") or params.market)
        tags = {**request.tags, names.CLUSTER: self.cluster_name}
        machine = MachineName(self.cluster_name, request.role, request.index)
        where = f"{count}x {gpu_type} {market}"
        if self.global_network:
            if reason := network.refusal(market, None):
                raise SpecError(f"RunPod: {reason}")
            tags[names.NETWORK] = "global"
            pod = self._launch_networked(request, machine, tags, gpu_type, count, where)
        else:
            pod = self._launch_graphql(request, machine, tags, gpu_type, count, market, where)
        if not pod or not pod.get("id"):
            raise ProvisioningError(f"RunPod: starting a pod ({where}) returned no pod")
        return Machine(instance_id=pod["id"], state="pending", private_ip=self._private_ip(pod["id"], tags),
                       tags=tags)

    def _launch_networked(self, request: MachineRequest, machine: MachineName, tags: dict[str, str],
                          gpu_type: str, count: int, where: str) -> dict[str, Any]:
        """`POST /pods` with `globalNetworking: true` (on-demand, Secure Cloud, its data centers)."""
        body = network.create_request(
            name=NAMING.name(machine), gpu_type=gpu_type, count=count, config=self.config,
            start_command=start_command(request, self.config.ssh_user, self.params.ssh_public_key),
            env={ENV_TAGS: TAGS.encode(machine, tags)})
        with runpod_errors("start a pod on the global network", where):
            return rest(self.key, "POST", "/pods", body) or {}

    def _launch_graphql(self, request: MachineRequest, machine: MachineName, tags: dict[str, str],
                        gpu_type: str, count: int, market: str, where: str) -> dict[str, Any]:
        transport.load_sdk()
        from runpod.api.mutations.pods import generate_pod_deployment_mutation

        config = self.config
        mutation = generate_pod_deployment_mutation(
            name=safe(NAMING.name(machine), "the pod name"), image_name=safe(config.image, "the image"),
            gpu_type_id=gpu_type, cloud_type=config.cloud_type, support_public_ip=True, start_ssh=True,
            gpu_count=count, volume_in_gb=config.volume_gb, container_disk_in_gb=config.container_disk_gb,
            min_vcpu_count=config.min_vcpu_count, min_memory_in_gb=config.min_memory_gb,
            docker_args=container_command(request, config.ssh_user, self.params.ssh_public_key),
            ports="22/tcp", volume_mount_path=network.VOLUME_MOUNT if config.volume_gb else None,
            env={ENV_TAGS: TAGS.encode(machine, tags)},
        )
        operation = "podFindAndDeployOnDemand"
        if market == "spot":
            bid = f"bidPerGpu: {self._bid_floor(gpu_type, count):.4f}"
            mutation = mutation.replace("podFindAndDeployOnDemand(", "podRentInterruptable(", 1)
            mutation = mutation.replace('name: "', bid + ', name: "', 1)
            operation = "podRentInterruptable"
        with runpod_errors("start a pod", where):
            return graphql(self.key, mutation).get(operation) or {}

    def _bid_floor(self, gpu_type: str, count: int) -> float:
        """The interruptible price floor per GPU right now (what an interruptible pod bids)."""
        query = (f'query GpuTypes {{ gpuTypes(input: {{id: "{gpu_type}"}}) {{ id '
                 f"lowestPrice(input: {{gpuCount: {count}}}) {{ minimumBidPrice uninterruptablePrice }} }} }}")
        with runpod_errors("read the interruptible price", gpu_type):
            types = graphql(self.key, query).get("gpuTypes") or []
        floor = ((types[0].get("lowestPrice") or {}).get("minimumBidPrice")) if types else None
        if not floor:
            raise CapacityError(f"RunPod: {gpu_type} has no interruptible price now (no spot capacity)")
        return float(floor)

    def _private_ip(self, pod_id: str, tags: Mapping[str, str]) -> str | None:
        return network.private_address(pod_id) if tags.get(names.NETWORK) == "global" else None

    def describe(self) -> list[Machine]:
        with runpod_errors("list pods", self.cluster_name):
            pods = (graphql(self.key, f"query myPods {{ myself {{ pods {{ {_POD_FIELDS} }} }} }}")
                    .get("myself") or {}).get("pods") or []
        found, exited = [], []
        for pod in pods:
            name = NAMING.parse(pod.get("name") or "")
            if name is None or name.cluster != self.cluster_name:
                continue
            machine, ssh = self._machine(pod, name)
            if ssh is not None:
                with self._lock:
                    self._ssh[machine.instance_id] = ssh
            if (pod.get("desiredStatus") or "").upper() == "EXITED":
                exited.append(machine.instance_id)
            found.append(machine)
        if exited:  # ended, and still billing its disk: terminate now (retried on the next listing if it fails)
            with contextlib.suppress(ProvisioningError):
                self.terminate(exited)
        return found

    def _machine(self, pod: dict[str, Any], name: MachineName) -> tuple[Machine, tuple[str, int] | None]:
        tags = TAGS.decode(name, pod_env(pod.get("env")).get(ENV_TAGS, ""))
        tags = LATER_TAGS.over(pod["id"], tags)
        runtime = pod.get("runtime")
        status = (pod.get("desiredStatus") or "").upper()
        state: MachineState = _STATES.get(status, "running" if runtime else "pending")
        if status not in _STATES and status not in ("RUNNING", "CREATED", "RESTARTING", ""):
            state = "stopping"  # an unknown state may still bill: keep it active so teardown ends it
        ssh = None
        for port in (runtime or {}).get("ports") or []:
            if port.get("privatePort") == 22 and port.get("isIpPublic") and port.get("ip") and port.get("publicPort"):
                ssh = (port["ip"], int(port["publicPort"]))
        return Machine(instance_id=pod["id"], state=state, private_ip=self._private_ip(pod["id"], tags),
                       public_ip=ssh[0] if ssh else None, tags=tags), ssh

    def end_machine(self, instance_id: str) -> None:
        """podTerminate (never podStop: a stopped pod keeps billing its volume)."""
        transport.load_sdk()
        from runpod.api.mutations.pods import generate_pod_terminate_mutation

        with runpod_errors("terminate a pod", instance_id):
            graphql(self.key, generate_pod_terminate_mutation(safe(instance_id, "a pod id")))

    def read_log(self, instance_id: str, lines: int) -> str:
        """The pod's container log: the command's output, the sshd snippet's and the boot script's lines."""
        with runpod_errors("read the pod's log", instance_id):
            return pod_log(self.key, instance_id, lines)

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        """Kept in this process: RunPod cannot change a running pod's env or name without restarting it."""
        LATER_TAGS.set(instance_id, tags)

    def ssh_endpoint(self, machine: Machine) -> SSHEndpoint:
        with self._lock:
            ssh = self._ssh.get(machine.instance_id)
        if ssh is None:
            self.describe()
            with self._lock:
                ssh = self._ssh.get(machine.instance_id)
        if ssh is None:
            raise ProvisioningError(
                f"RunPod: pod {machine.instance_id} has no public port for SSH, so this driver cannot reach it. "
                "Fix: use an offer with public IPs (Secure Cloud), or run the driver inside RunPod")
        return SSHEndpoint(host=ssh[0], port=ssh[1], user=self.config.ssh_user)


def pod_env(env: Any) -> dict[str, str]:
    """A pod's `env` as RunPod lists it (["KEY=value", ...]) or as a mapping."""
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    result: dict[str, str] = {}
    for item in env or []:
        if isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            result[key] = value
        elif isinstance(item, Mapping) and "key" in item:
            result[str(item["key"])] = str(item.get("value", ""))
    return result


def start_command(request: MachineRequest, ssh_user: str, public_key: str | None) -> list[str]:
    """The pod's command as argv: decode the base64 payload (the head's sshd, then the boot script) to a
    file and run it."""
    lines = state_dir_lines()
    if request.role == "head" and public_key:  # it makes its own host key and prints it
        lines += sshd_lines(22, ssh_user, public_key)
    payload = "\n".join([*lines, request.boot_script])
    encoded = base64.b64encode(payload.encode()).decode()
    return ["bash", "-c", f"echo {encoded} | base64 -d > {BOOT_FILE} && exec bash {BOOT_FILE}"]


def container_command(request: MachineRequest, ssh_user: str, public_key: str | None) -> str:
    """`start_command` as one GraphQL `dockerArgs` string (its script holds no single quote)."""
    shell, flag, script = start_command(request, ssh_user, public_key)
    return f"{shell} {flag} '{script}'"
