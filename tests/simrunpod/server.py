"""A fake RunPod API: the GraphQL subset the runpod SDK (1.11) and skyward_ray send, on graphql-core.

Only the network peer is fake: the code under test uses the real SDK, which reaches this server
through `RUNPOD_API_BASE_URL` (read on every call). Like RunPod's:

- every call is `POST /graphql` with `Authorization: Bearer <key>`; an unknown key gets HTTP 401
  (the SDK raises `AuthenticationError`); query errors come back as HTTP 200 with `errors`
  (the SDK raises `QueryError` with the first message), validation errors (an input field the
  schema does not have) as HTTP 400 with `errors`;
- the schema holds exactly what is sent: `gpuTypes` (with `lowestPrice(input: {gpuCount})`),
  `myself { id pods { ... } }`, `pod(input: {podId})`, `podFindAndDeployOnDemand`,
  `podRentInterruptable` (with `bidPerGpu`), `podTerminate`, `podStop`; a pod's `runtime` is null
  until its container runs, then lists `ports { ip isIpPublic privatePort publicPort type }`;
- every pod gets a pod-scoped key of its own (`RUNPOD_API_KEY` in its env, as RunPod documents)
  that may read, stop and terminate that pod and nothing else;
- no capacity is answered with RunPod's own message text (`CAPACITY_MESSAGE`).

What the pods do is `tests.simrunpod.hosts.PodHosts`' business: the server calls `hosts.boot(pod)`
when a pod is placed and `hosts.end(pod_id)` when it ends.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync, parse, validate

from catalog import prices
from catalog.taxonomy import taxonomy
from tests.simapi import ApiSimulator

CAPACITY_MESSAGE = ("There are no longer any instances available with the requested specifications. "
                    "Please refresh and try again.")
# RunPod's text for a bid under the floor is not documented; this one is the fake's own.
BID_MESSAGE = "Your bid price is lower than the current minimum bid price for this GPU type."
USER_KEY = "rpa_SKYWARDFAKEUSERKEY0042DONOTLEAK"

_INPUT_FIELDS = """
  name: String
  imageName: String
  cloudType: CloudTypeEnum
  startSsh: Boolean
  gpuTypeId: String
  supportPublicIp: Boolean
  gpuCount: Int
  volumeInGb: Int
  minVcpuCount: Int
  minMemoryInGb: Int
  allowedCudaVersions: [String]
  dataCenterId: String
  dockerArgs: String
  countryCode: String
  containerDiskInGb: Int
  ports: String
  volumeMountPath: String
  env: [EnvironmentVariableInput]
  templateId: String
  networkVolumeId: String
  minDownload: Int
  minUpload: Int
  globalNetwork: Boolean
"""

SCHEMA = build_schema(f"""
type Query {{
  myself: User
  pod(input: PodFilter!): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
}}
type Mutation {{
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput!): Pod
  podRentInterruptable(input: PodRentInterruptableInput!): Pod
  podTerminate(input: PodTerminateInput!): Boolean
  podStop(input: PodStopInput!): Pod
}}
enum CloudTypeEnum {{ ALL SECURE COMMUNITY }}
input EnvironmentVariableInput {{ key: String! value: String }}
input PodFindAndDeployOnDemandInput {{ {_INPUT_FIELDS} }}
input PodRentInterruptableInput {{ bidPerGpu: Float! {_INPUT_FIELDS} }}
input PodTerminateInput {{ podId: String! }}
input PodStopInput {{ podId: String! incrementVersion: Boolean }}
input PodFilter {{ podId: String! }}
input GpuTypeFilter {{ id: String }}
input GpuLowestPriceInput {{ gpuCount: Int }}
type User {{ id: String pods: [Pod] }}
type LowestPrice {{ minimumBidPrice: Float uninterruptablePrice: Float }}
type GpuType {{
  id: String displayName: String manufacturer: String memoryInGb: Int cudaCores: Int maxGpuCount: Int
  secureCloud: Boolean communityCloud: Boolean securePrice: Float communityPrice: Float
  oneMonthPrice: Float threeMonthPrice: Float oneWeekPrice: Float communitySpotPrice: Float secureSpotPrice: Float
  lowestPrice(input: GpuLowestPriceInput): LowestPrice
}}
type PodRuntimePorts {{ ip: String isIpPublic: Boolean privatePort: Int publicPort: Int type: String }}
type PodRuntime {{ uptimeInSeconds: Int ports: [PodRuntimePorts] }}
type PodMachine {{ podHostId: String gpuDisplayName: String }}
type Pod {{
  id: String name: String containerDiskInGb: Int costPerHr: Float desiredStatus: String dockerArgs: String
  dockerId: String env: [String] gpuCount: Int imageName: String lastStatusChange: String machineId: String
  memoryInGb: Float podType: String port: Int ports: String uptimeSeconds: Int vcpuCount: Float
  volumeInGb: Float volumeMountPath: String runtime: PodRuntime machine: PodMachine
}}
""")


@dataclass
class GpuPrice:
    id: str
    display_name: str
    memory_gb: int
    on_demand: float | None  # per GPU per hour
    bid_floor: float | None  # per GPU per hour; None: no interruptible market
    secure: bool = True
    community: bool = False


@dataclass
class Pod:
    id: str
    name: str
    image: str
    gpu_type: str
    gpu_count: int
    cloud_type: str
    docker_args: str
    env: dict[str, str]
    ports: str
    interruptible: bool
    global_network: bool
    cost_per_hr: float
    pod_key: str
    container_disk_gb: int
    volume_gb: int
    created: float = field(default_factory=time.time)
    desired_status: str = "RUNNING"
    runtime: dict[str, Any] | None = None
    machine_id: str = field(default_factory=lambda: "m" + secrets.token_hex(5))

    def as_graphql(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "containerDiskInGb": self.container_disk_gb,
            "costPerHr": self.cost_per_hr, "desiredStatus": self.desired_status, "dockerArgs": self.docker_args,
            "dockerId": None, "env": [f"{k}={v}" for k, v in self.env.items()], "gpuCount": self.gpu_count,
            "imageName": self.image, "lastStatusChange": f"{self.desired_status} at {time.ctime(self.created)}",
            "machineId": self.machine_id, "memoryInGb": 31.0, "podType": "INTERRUPTABLE" if self.interruptible
            else "RESERVED", "port": None, "ports": self.ports, "uptimeSeconds": int(time.time() - self.created),
            "vcpuCount": 8.0, "volumeInGb": float(self.volume_gb), "volumeMountPath": "/runpod-volume",
            "runtime": self.runtime, "machine": {"podHostId": f"{self.id}-{self.machine_id}",
                                                 "gpuDisplayName": self.gpu_type},
        }


@dataclass
class Call:
    operation: str
    query: str
    caller: str  # "user", "pod:<id>" or "bad-key"
    status: int
    seconds: float


class QueryFailed(Exception):
    pass


@dataclass
class CapacityFault:
    """Launches of `gpu_type` (None: any) get RunPod's capacity error, `times` of them (None: all)."""

    gpu_type: str | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, gpu_type: str) -> bool:
        return self.gpu_type in (None, gpu_type) and (self.times is None or self.hits < self.times)


def snapshot_gpu_prices() -> dict[str, GpuPrice]:
    """The fake's market: the snapshot's one-GPU rows, per GPU."""
    tax = taxonomy()
    table: dict[str, GpuPrice] = {}
    for row in prices.rows("runpod_gpu_types"):
        if int(row["gpu_count"]) != 1:
            continue
        variant = tax.lookup("runpod", row["gpu_type_id"])
        table[row["gpu_type_id"]] = GpuPrice(
            id=row["gpu_type_id"], display_name=row["accelerator_name"],
            memory_gb=int(variant.memory_gb) if variant and variant.memory_gb else 0,
            on_demand=prices.number(row["on_demand"]), bid_floor=prices.number(row["spot"]))
    return table


def _pod_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


class SimRunPod(ApiSimulator):
    """The fake API's state and its HTTP front. `start()` listens on 0.0.0.0 (pods reach it too)."""

    thread_name = "simrunpod"
    default_host = "0.0.0.0"

    def __init__(self, user_key: str = USER_KEY) -> None:
        super().__init__()
        self.user_key = user_key
        self.gpus = snapshot_gpu_prices()
        self.pods: dict[str, Pod] = {}
        self.ended: dict[str, Pod] = {}  # terminated pods (RunPod no longer lists them)
        self.never_boot: set[str] = set()  # GPU types whose pods never get a runtime
        self.bid_slip: dict[str, float] = {}  # GPU type → how far the floor rises between a read and a rent
        self.hosts: Any = None  # tests.simrunpod.hosts.PodHosts, once attached

    def client_env(self) -> dict[str, str]:
        return {"RUNPOD_API_BASE_URL": self.url, "RUNPOD_API_KEY": self.user_key}

    def respond(self, method: str, path: str, query: Mapping[str, str], body: bytes,
                headers: Any) -> tuple[int, Any]:
        return self.handle(path, headers.get("Authorization", ""), body)

    # -- faults and observation -------------------------------------------------------------------
    def fail_capacity(self, gpu_type: str | None = None, times: int | None = None) -> CapacityFault:
        """Launches of this GPU type (None: any) get RunPod's capacity error (`times` of them; None: all)."""
        self.faults.discard(lambda fault: fault.gpu_type != gpu_type)
        return self.faults.add(CapacityFault(gpu_type, times))

    def clear_faults(self) -> None:
        with self.lock:
            super().clear_faults()
            self.never_boot.clear()
            self.bid_slip.clear()
            self.gpus = snapshot_gpu_prices()

    def set_bid_floor(self, gpu_type: str, per_gpu: float) -> None:
        with self.lock:
            self.gpus[gpu_type].bid_floor = per_gpu

    def calls(self) -> list[Call]:
        return self.recorded()

    def live_pods(self) -> list[Pod]:
        with self.lock:
            return list(self.pods.values())

    def interrupt(self, pod_id: str) -> None:
        """RunPod takes an interruptible pod back (or its owner stops it): its container is stopped,
        the pod shows EXITED."""
        with self.lock:
            pod = self.pods[pod_id]
            pod.desired_status = "EXITED"
            pod.runtime = None
        if self.hosts is not None:
            self.hosts.end(pod_id)

    def set_runtime(self, pod_id: str, runtime: dict[str, Any]) -> None:
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is not None and pod.desired_status == "RUNNING":
                pod.runtime = runtime

    def add_foreign_pod(self, name: str = "someone-elses-notebook") -> str:
        """A pod skyward did not make (another tool's, in the same account); it never boots."""
        pod = self._new_pod({"name": name, "imageName": "runpod/pytorch", "gpuTypeId": "NVIDIA GeForce RTX 4090",
                             "gpuCount": 1, "dockerArgs": "", "env": []}, interruptible=False, boot=False)
        return pod.id

    # -- HTTP ----------------------------------------------------------------------------------------
    def handle(self, path: str, authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        key = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else ""
        caller = self._caller(key)
        try:
            query = json.loads(body or b"{}").get("query") or ""
        except ValueError:
            query = ""
        operation = _operation(query)
        if path.rstrip("/") != "/graphql":
            status, payload = 404, {"error": "not found"}
        elif caller is None:
            status, payload = 401, {"error": "Unauthorized"}
        else:
            status, payload = self._execute(query, caller)
        self.record(Call(operation, query, caller or "bad-key", status, time.monotonic() - started))
        return status, payload

    def _caller(self, key: str) -> str | None:
        if key and secrets.compare_digest(key, self.user_key):
            return "user"
        with self.lock:
            for pod in self.pods.values():
                if key and secrets.compare_digest(key, pod.pod_key):
                    return f"pod:{pod.id}"
        return None

    def _execute(self, query: str, caller: str) -> tuple[int, dict[str, Any]]:
        try:
            document = parse(query)
        except GraphQLError as error:
            return 400, {"errors": [{"message": error.message}]}
        problems = validate(SCHEMA, document)
        if problems:
            return 400, {"errors": [{"message": p.message} for p in problems]}
        result = graphql_sync(SCHEMA, query, root_value=_Root(self, caller))
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
        return 200, payload

    # -- the model --------------------------------------------------------------------------------
    def _new_pod(self, spec: dict[str, Any], interruptible: bool, boot: bool = True) -> Pod:
        gpu_type = spec.get("gpuTypeId") or ""
        count = int(spec.get("gpuCount") or 1)
        with self.lock:
            gpu = self.gpus.get(gpu_type)
            if gpu is None:
                raise QueryFailed(f"GPU type {gpu_type!r} is not available")
            if self.faults.take(gpu_type) is not None:
                raise QueryFailed(CAPACITY_MESSAGE)
            if interruptible:
                if gpu.bid_floor is None:
                    raise QueryFailed(CAPACITY_MESSAGE)
                if float(spec["bidPerGpu"]) + 1e-9 < gpu.bid_floor + self.bid_slip.get(gpu_type, 0.0):
                    raise QueryFailed(BID_MESSAGE)
                price = float(spec["bidPerGpu"]) * count
            else:
                price = (gpu.on_demand or 0.0) * count
            env = {e["key"]: e.get("value") or "" for e in spec.get("env") or []}
            pod = Pod(id=_pod_id(), name=spec.get("name") or "", image=spec.get("imageName") or "",
                      gpu_type=gpu_type, gpu_count=count, cloud_type=spec.get("cloudType") or "ALL",
                      docker_args=spec.get("dockerArgs") or "", env=env, ports=spec.get("ports") or "",
                      interruptible=interruptible, global_network=bool(spec.get("globalNetwork")),
                      cost_per_hr=round(price, 4), pod_key="rpa_pod_" + secrets.token_hex(16),
                      container_disk_gb=int(spec.get("containerDiskInGb") or 0),
                      volume_gb=int(spec.get("volumeInGb") or 0))
            self.pods[pod.id] = pod
            never = gpu_type in self.never_boot
        if boot and self.hosts is not None and not never:
            self.hosts.boot(pod)
        return pod

    def end_pod(self, pod_id: str) -> None:
        """The pod is terminated (by its owner, or by the test): RunPod lists it no more."""
        with self.lock:
            pod = self.pods.pop(pod_id, None)
            if pod is None:
                return
            pod.desired_status = "TERMINATED"
            pod.runtime = None
            self.ended[pod_id] = pod
        if self.hosts is not None:
            self.hosts.end(pod_id)

    _end = end_pod  # the name the provider tests use


class _Root:
    """Resolvers: graphql-core calls these methods with (info, **arguments)."""

    def __init__(self, sim: SimRunPod, caller: str) -> None:
        self.sim = sim
        self.caller = caller

    def _user_only(self) -> None:
        if self.caller != "user":
            raise QueryFailed("This API key is scoped to one pod and cannot do this.")

    def _own(self, pod_id: str) -> Pod:
        with self.sim.lock:
            pod = self.sim.pods.get(pod_id)
        if self.caller.startswith("pod:") and self.caller != f"pod:{pod_id}":
            raise QueryFailed("This API key is scoped to another pod.")
        if pod is None:
            raise QueryFailed(f"Pod {pod_id} not found")
        return pod

    def myself(self, info: Any) -> dict[str, Any]:
        self._user_only()
        with self.sim.lock:
            pods = [p.as_graphql() for p in self.sim.pods.values()]
        return {"id": "user_skyward_fake", "pods": pods}

    def pod(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        return self._own(input["podId"]).as_graphql()

    def gpuTypes(self, info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: N802
        self._user_only()
        wanted = (input or {}).get("id")
        with self.sim.lock:
            gpus = [g for g in self.sim.gpus.values() if wanted is None or g.id == wanted]
        return [_gpu_type(g) for g in gpus]

    def podFindAndDeployOnDemand(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        self._user_only()
        return self.sim._new_pod(input, interruptible=False).as_graphql()

    def podRentInterruptable(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        self._user_only()
        return self.sim._new_pod(input, interruptible=True).as_graphql()

    def podTerminate(self, info: Any, input: dict[str, Any]) -> None:  # noqa: N802
        self._own(input["podId"])
        self.sim.end_pod(input["podId"])
        return None

    def podStop(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pod = self._own(input["podId"])
        self.sim.interrupt(pod.id)
        return {"id": pod.id, "desiredStatus": "EXITED"}


def _gpu_type(gpu: GpuPrice) -> dict[str, Any]:
    def lowest(info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"uninterruptablePrice": gpu.on_demand, "minimumBidPrice": gpu.bid_floor}

    return {"id": gpu.id, "displayName": gpu.display_name, "manufacturer": gpu.id.split()[0],
            "memoryInGb": gpu.memory_gb, "cudaCores": 0, "maxGpuCount": 8, "secureCloud": gpu.secure,
            "communityCloud": gpu.community, "securePrice": gpu.on_demand, "communityPrice": None,
            "oneMonthPrice": None, "threeMonthPrice": None, "oneWeekPrice": None,
            "communitySpotPrice": None, "secureSpotPrice": gpu.bid_floor, "lowestPrice": lowest}


def _operation(query: str) -> str:
    """The first field of the query (e.g. podFindAndDeployOnDemand), for the call log."""
    try:
        definition = parse(query).definitions[0]
        return definition.selection_set.selections[0].name.value  # type: ignore[attr-defined]
    except Exception:
        return "?"
