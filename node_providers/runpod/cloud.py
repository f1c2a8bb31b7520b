"""RunPod pods for the generic script-booted node provider: launch, describe, terminate.

A pod is a container. Its command (RunPod's `dockerArgs`) is the node's whole boot: a short
`bash -c` that decodes the base64 payload (the SDK pastes arguments into its GraphQL text
unescaped, so nothing with quotes or newlines may travel there) and runs it. The payload starts,
on the head only, with a prelude that installs the driver-generated SSH host key and the
cluster's login key and starts sshd, before the generic boot script starts Ray: the driver pins
that host key and reaches the head through `ssh -L` to the public port RunPod maps to port 22.

Pods have no tags. A pod's identity is its name, `skyward-<cluster>-<role>-<index>`, and its
tags travel base64-encoded in one env variable (`SKYWARD_POD_TAGS`), so a provider made in
another process finds the same pods; `describe` lists the account's pods by that name prefix.
`set_tags` changes are kept in this process (shared by every provider instance in it, as Ray's
autoscaler re-creates providers at will), not at RunPod: RunPod cannot change a running pod's env
without restarting it.

A pod ends itself with only what RunPod gives every pod about itself: its id (`RUNPOD_POD_ID`)
and its pod-scoped key (`RUNPOD_API_KEY`, https://docs.runpod.io/pods/references/environment-variables),
through `runpodctl remove pod` (installed in every pod with that key) or, without it, the same
`podTerminate` GraphQL call with curl. The user's key never reaches a pod.

Pools of 2+ pods are created with global networking (`globalNetwork: true`, in the Secure Cloud):
each pod is reachable from the others of the account at `<pod id>.runpod.internal`
(https://docs.runpod.io/pods/networking), which is the address workers join the head by.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from node_providers.runpod.api import graphql, require_key, runpod_errors, safe
from node_providers.runpod.config import RunPod
from skyward_ray import names
from skyward_ray.cluster.contract import (
    BootEnvironment,
    Cloud,
    ClusterListing,
    ClusterParams,
    Machine,
    MachineRequest,
    MachineState,
    Role,
    SSHEndpoint,
)
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, SpecError

NAME_PREFIX = "skyward"
ENV_TAGS = "SKYWARD_POD_TAGS"
NETWORK_TAG = "skyward/network"  # "global" on pods made with global networking
INTERNAL_DOMAIN = "runpod.internal"
SSH_DIR = "$HOME/.skyward-ssh"
BOOT_FILE = "$HOME/.skyward-boot.sh"

INSTANCE_ID_SHELL = "${RUNPOD_POD_ID}"
# The pod's address on the global network (its DNS name resolves there), else its first address.
NODE_IP_SHELL = ("$({ getent hosts ${RUNPOD_POD_ID}." + INTERNAL_DOMAIN + " | awk '{print $1; exit}'; "
                 "hostname -I | awk '{print $1}'; } | head -n 1)")
# Only the pod's own id and pod-scoped key: `runpodctl` (RunPod installs it in every pod with that
# key), else the GraphQL podTerminate it would send.
SHUTDOWN_COMMAND = (
    'runpodctl remove pod "$RUNPOD_POD_ID" >/dev/null 2>&1 || '
    "curl -s -m 30 --retry 3 -X POST -H 'Content-Type: application/json' "
    '-H "Authorization: Bearer $RUNPOD_API_KEY" '
    '--data "{\\"query\\": \\"mutation { podTerminate(input: {podId: \\\\\\"$RUNPOD_POD_ID\\\\\\"}) }\\"}" '
    '"${RUNPOD_API_BASE_URL:-https://api.runpod.io}/graphql"'
)

# RunPod's desiredStatus → the contract's. A pod whose runtime is null has no container yet.
# EXITED (its container ended, or RunPod took an interruptible pod back) never comes back for
# skyward_ray, yet keeps billing its volume: `describe` terminates it on sight and reports it
# terminated, so the pool replaces the node at once and nothing is left billing.
_STATES: dict[str, MachineState] = {"EXITED": "terminated", "TERMINATED": "terminated", "DEAD": "terminated"}
_POD_FIELDS = ("id name desiredStatus env costPerHr gpuCount imageName machineId "
               "runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }")


# Tag changes made in this process, by pod id: every provider instance here sees them.
_TAG_LOCK = threading.Lock()
_TAG_CHANGES: dict[str, dict[str, str]] = {}


_ANY_POD_NAME = re.compile(re.escape(NAME_PREFIX) + r"-(?P<cluster>[A-Za-z0-9-]+)-(head|worker)-\d+")


def pod_prefix(cluster_name: str) -> str:
    return f"{NAME_PREFIX}-{cluster_name}-"


class RunPodCloud(Cloud):
    """The pods of one cluster, in the RunPod account the key belongs to."""

    config_class = RunPod
    config: RunPod
    describe_ttl = 1.0  # launchers poll; spare the API

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix = pod_prefix(self.cluster_name)
        self._name = re.compile(re.escape(self.prefix) + r"(head|worker)-(\d+)")
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
        clusters = sorted({match["cluster"] for pod in pods
                           if (match := _ANY_POD_NAME.fullmatch(pod.get("name") or ""))})
        return [ClusterListing(name=name, machines=cls(name, config, ClusterParams(), {}).describe())
                for name in clusters]

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Nothing to make (pods carry their own keys): check the key and the GPU type before any pod."""
        if not self.params.instance_type:
            raise SpecError("RunPod: no GPU type; set provider.cluster.instance_type (e.g. 'NVIDIA GeForce RTX 4090')")
        safe(self.params.instance_type, "the GPU type")
        safe(self.cluster_name, "the cluster name")
        with runpod_errors("check the API key"):
            graphql(self.key, "query myself { myself { id } }")
        return {"global_network": self.params.nodes > 1}

    def cleanup(self) -> None:
        """No per-cluster resources: wait (bounded) until RunPod lists none of the cluster's pods active."""
        deadline = time.monotonic() + 60
        while any(m.active for m in self.describe()) and time.monotonic() < deadline:
            time.sleep(1.0)

    # -- machines -------------------------------------------------------------------------------
    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        config = self.config
        return BootEnvironment(
            instance_id_shell=INSTANCE_ID_SHELL,
            node_ip_shell=NODE_IP_SHELL,
            shutdown_command=SHUTDOWN_COMMAND,
            **config.node_resources(),
        )

    @property
    def global_network(self) -> bool:
        return bool(self.prepared.get("global_network", self.params.nodes > 1))

    def launch(self, request: MachineRequest) -> Machine:
        """One pod: `podFindAndDeployOnDemand`, or `podRentInterruptable` bidding the current floor (spot)."""
        from runpod.api.mutations.pods import generate_pod_deployment_mutation

        params, config, node_config = self.params, self.config, request.node_config
        gpu_type = safe(str(node_config.get("gpuTypeId") or params.instance_type or ""), "the GPU type")
        if not gpu_type:
            raise SpecError("RunPod: no GPU type for this pod")
        count = int(node_config.get("gpuCount") or params.accelerator_count or 1)
        market = node_config.get("market") or params.market
        tags = {**request.tags, names.CLUSTER: self.cluster_name}
        if self.global_network:
            tags[NETWORK_TAG] = "global"
        name = f"{self.prefix}{request.role}-{request.index}"
        mutation = generate_pod_deployment_mutation(
            name=safe(name, "the pod name"), image_name=safe(config.image, "the image"), gpu_type_id=gpu_type,
            cloud_type="SECURE" if self.global_network else config.cloud_type,
            support_public_ip=True, start_ssh=True, gpu_count=count, volume_in_gb=config.volume_gb,
            container_disk_in_gb=config.container_disk_gb, min_vcpu_count=config.min_vcpu_count,
            min_memory_in_gb=config.min_memory_gb, docker_args=container_command(request, config.ssh_user, params.ssh_public_key),
            ports="22/tcp", volume_mount_path="/runpod-volume" if config.volume_gb else None,
            env={ENV_TAGS: base64.b64encode(json.dumps(tags, sort_keys=True).encode()).decode()},
        )
        extra = ["globalNetwork: true"] if self.global_network else []
        operation = "podFindAndDeployOnDemand"
        if market == "spot":
            extra.append(f"bidPerGpu: {self._bid_floor(gpu_type, count):.4f}")
            mutation = mutation.replace("podFindAndDeployOnDemand(", "podRentInterruptable(", 1)
            operation = "podRentInterruptable"
        if extra:
            mutation = mutation.replace('name: "', ", ".join(extra) + ', name: "', 1)
        where = f"{count}x {gpu_type} {market}"
        with runpod_errors("start a pod", where):
            pod = graphql(self.key, mutation).get(operation)
        if not pod or not pod.get("id"):
            raise ProvisioningError(f"RunPod: starting a pod ({where}) returned no pod")
        return Machine(instance_id=pod["id"], state="pending", private_ip=self._private_ip(pod["id"], tags),
                       tags=tags)

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
        return f"{pod_id}.{INTERNAL_DOMAIN}" if tags.get(NETWORK_TAG) == "global" else None

    def describe(self) -> list[Machine]:
        with runpod_errors("list pods", self.cluster_name):
            pods = (graphql(self.key, f"query myPods {{ myself {{ pods {{ {_POD_FIELDS} }} }} }}")
                    .get("myself") or {}).get("pods") or []
        found, exited = [], []
        for pod in pods:
            if not self._name.fullmatch(pod.get("name") or ""):
                continue
            machine, ssh = self._machine(pod)
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

    def _machine(self, pod: dict[str, Any]) -> tuple[Machine, tuple[str, int] | None]:
        env = pod_env(pod.get("env"))
        tags: dict[str, str] = {}
        with contextlib.suppress(Exception):
            tags = {str(k): str(v) for k, v in json.loads(base64.b64decode(env.get(ENV_TAGS, ""))).items()}
        with _TAG_LOCK:
            tags.update(_TAG_CHANGES.get(pod["id"], {}))
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

    def terminate(self, instance_ids: list[str]) -> None:
        """podTerminate each (never podStop: a stopped pod keeps billing its volume)."""
        from runpod.api.mutations.pods import generate_pod_terminate_mutation

        for pod_id in sorted(set(instance_ids)):
            try:
                with runpod_errors("terminate a pod", pod_id):
                    graphql(self.key, generate_pod_terminate_mutation(safe(pod_id, "a pod id")))
            except AuthError:
                raise
            except ProvisioningError as error:
                if "not found" not in str(error).lower() and "does not exist" not in str(error).lower():
                    raise

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        """Kept in this process (RunPod cannot change a running pod's env without a restart)."""
        with _TAG_LOCK:
            _TAG_CHANGES.setdefault(instance_id, {}).update(tags)

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

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        return "(RunPod's API gives no container log; see the pod's Logs tab in the RunPod console)"


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


def ssh_prelude(request: MachineRequest, ssh_user: str, public_key: str) -> str:
    """The head's SSH, before the boot script: the pinned host key, the cluster's login key, sshd."""
    if not request.ssh_host_key or not public_key:
        return ""
    config = "\n".join([
        "Port 22", "ListenAddress 0.0.0.0", f"HostKey {SSH_DIR}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {SSH_DIR}/authorized_keys", f"PidFile {SSH_DIR}/sshd.pid",
        "PermitRootLogin prohibit-password", f"AllowUsers {ssh_user}", "AuthenticationMethods publickey",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "AllowTcpForwarding yes", "X11Forwarding no", "AllowAgentForwarding no",
        "PrintMotd no", "ClientAliveInterval 10",
    ])
    return "\n".join([
        "# skyward_ray on RunPod: the head's SSH (pinned host key, the cluster's login key) before Ray",
        f'mkdir -p "{SSH_DIR}" && chmod 700 "{SSH_DIR}"',
        f"cat > \"{SSH_DIR}/ssh_host_ed25519_key\" <<'SKYWARD_HOST_KEY'",
        request.ssh_host_key.strip(),
        "SKYWARD_HOST_KEY",
        f'chmod 600 "{SSH_DIR}/ssh_host_ed25519_key"',
        f"printf '%s\\n' '{public_key.strip()}' > \"{SSH_DIR}/authorized_keys\"",
        f'chmod 600 "{SSH_DIR}/authorized_keys"',
        f'cat > "{SSH_DIR}/sshd_config" <<SKYWARD_SSHD',
        config,
        "SKYWARD_SSHD",
        "if [ ! -x /usr/sbin/sshd ]; then",
        "  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null",
        "fi",
        "mkdir -p /run/sshd",
        f'/usr/sbin/sshd -f "{SSH_DIR}/sshd_config" -E "{SSH_DIR}/sshd.log" || echo "skyward: sshd did not start"',
        "",
    ])


def container_command(request: MachineRequest, ssh_user: str, public_key: str | None) -> str:
    """The pod's command: decode the base64 payload (SSH prelude + boot script) to a file and run it."""
    payload = ssh_prelude(request, ssh_user, public_key or "") + request.boot_script
    encoded = base64.b64encode(payload.encode()).decode()
    return f"bash -c 'echo {encoded} | base64 -d > {BOOT_FILE} && exec bash {BOOT_FILE}'"
