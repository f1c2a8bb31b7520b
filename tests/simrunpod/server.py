"""A fake RunPod API: the GraphQL subset the runpod SDK (1.11) and skyward_ray send, on graphql-core,
the REST pod API (`tests.simrunpod.rest`, under `/v1`) and the v2 API's pod log stream
(`GET /v2/pods/{id}/logs`, Server-Sent Events that stay open, `handle_v2`).

Only the network peer is fake: the code under test uses the real SDK, which reaches this server
through `RUNPOD_API_BASE_URL` (read on every call). Like RunPod's:

- every call is `POST /graphql` with `Authorization: Bearer <key>`; an unknown key gets HTTP 401
  (the SDK raises `AuthenticationError`); query errors come back as HTTP 200 with `errors`
  (the SDK raises `QueryError` with the first message), validation errors (an input field the
  schema does not have) as HTTP 400 with `errors`;
- the GraphQL schema's pod inputs hold the fields RunPod's senders put there, no more: the runpod
  SDK 1.11 (`runpod/api/mutations/pods.py`) and RunPod's CLI (runpodctl `api/pod.go`,
  `internal/api/graphql.go` `CreatePodGQLInput`). Neither has a global-networking field, and RunPod
  documents global networking only as the REST field `globalNetworking`, so an input field outside
  these is a validation error, as graphql-core reports it;
- the schema's operations are what is sent: `gpuTypes` (with `lowestPrice(input: {gpuCount})`),
  `myself { id pods { ... } }`, `pod(input: {podId})`, `podFindAndDeployOnDemand`,
  `podRentInterruptable` (with `bidPerGpu`), `podTerminate`, `podStop`; a pod's `runtime` is null
  until its container runs, then lists `ports { ip isIpPublic privatePort publicPort type }`;
- every pod gets a pod-scoped key of its own (`RUNPOD_API_KEY` in its env, as RunPod documents)
  that may read, stop and terminate that pod and nothing else;
- no capacity is answered with RunPod's own message text (`CAPACITY_MESSAGE`);
- pods are placed in data centers: each GPU type has capacity in `capacity[gpu]` (by default
  `DEFAULT_DATA_CENTERS`, one with global networking, one without);
- rate limits: RunPod publishes no numbers for GraphQL or REST v1; its v2 API documents per-user
  windows answered with HTTP 429 and a problem body (`TooManyRequestsError` in
  github.com/runpod/docs api-reference-v2/openapi.json). `limit_rate(requests, window_s)` turns
  such a window on (off by default), for every key, every API.

What the pods do is `tests.simrunpod.hosts.PodHosts`' business: the server calls `hosts.boot(pod)`
when a pod is placed and `hosts.end(pod_id)` when it ends.
"""

from __future__ import annotations

import collections
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError, graphql_sync, parse, validate

from tests.simapi import ApiSimulator, EventStream
from tests.simrunpod import rest
from tests.simrunpod.model import DEFAULT_DATA_CENTERS, GpuPrice, Pod, new_pod_id, snapshot_gpu_prices
from tests.simrunpod.schema import SCHEMA

CAPACITY_MESSAGE = ("There are no longer any instances available with the requested specifications. "
                    "Please refresh and try again.")
# RunPod's text for a bid under the floor is not documented; this one is the fake's own.
BID_MESSAGE = "Your bid price is lower than the current minimum bid price for this GPU type."
USER_KEY = "rpa_SKYWARDFAKEUSERKEY0042DONOTLEAK"
# RunPod v2's documented 429 body (api-reference-v2/openapi.json, TooManyRequestsError example)
RATE_LIMITED = {"title": "Too Many Requests", "status": 429, "detail": "rate limit exceeded for the minute window"}
__all__ = ["BID_MESSAGE", "CAPACITY_MESSAGE", "DEFAULT_DATA_CENTERS", "USER_KEY", "CapacityFault", "GpuPrice", "Pod",
           "SimRunPod", "snapshot_gpu_prices"]


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


class SimRunPod(ApiSimulator):
    """The fake API's state and its HTTP front. `start()` listens on 0.0.0.0 (pods reach it too)."""

    thread_name = "simrunpod"
    default_host = "0.0.0.0"
    methods = frozenset({"GET", "POST", "DELETE"})

    def __init__(self, user_key: str = USER_KEY) -> None:
        super().__init__()
        self.user_key = user_key
        self.gpus = snapshot_gpu_prices()
        self.pods: dict[str, Pod] = {}
        self.ended: dict[str, Pod] = {}  # terminated pods (RunPod no longer lists them)
        self.never_boot: set[str] = set()  # GPU types whose pods never get a runtime
        self.bid_slip: dict[str, float] = {}  # GPU type → how far the floor rises between a read and a rent
        self.hosts: Any = None  # tests.simrunpod.hosts.PodHosts, once attached
        self.capacity: dict[str, tuple[str, ...]] = {}  # GPU type → data centers with capacity (default: all)
        self.rate_window: tuple[int, float] | None = None  # (requests, seconds) per key; None: no limit
        self._recent: dict[str, collections.deque[float]] = {}
        self.balance = 25.0  # the account's clientBalance (USD) and spendLimit (USD/h), as `myself` reads them
        self.spend_limit = 80.0

    def client_env(self) -> dict[str, str]:
        """The SDK's GraphQL address, runpodctl's REST address variable (`RUNPOD_API_URL`), the key."""
        return {"RUNPOD_API_BASE_URL": self.url, "RUNPOD_API_URL": f"{self.url}/v1", "RUNPOD_API_KEY": self.user_key}

    def respond(self, method: str, path: str, query: Mapping[str, str], body: bytes,
                headers: Any) -> tuple[int, Any]:
        if path.startswith("/v1/"):
            return self.handle_rest(method, path, dict(query), headers.get("Authorization", ""), body)
        if path.startswith("/v2/"):
            return self.handle_v2(method, path, dict(query), headers.get("Authorization", ""))
        return self.handle(path, headers.get("Authorization", ""), body)

    def handle_v2(self, method: str, path: str, query: dict[str, str], authorization: str) -> tuple[int, Any]:
        """The v2 API's pod log stream, `GET /v2/pods/{id}/logs` (api-reference-v2/openapi.json
        `getPodLogs`): Server-Sent Events, each `id: <ts>/<n>` and `data: {"ts", "source", "line"}`,
        the last `tail` lines (default 100, at most 5,000; anything else is a 400) of the pod's
        container output, then the stream stays open. Errors are problem+json bodies."""
        started = time.monotonic()
        caller = self._caller(_bearer(authorization))
        parts = path.strip("/").split("/")
        status: int
        answer: Any
        if caller is None:
            status, answer = 401, {"title": "Unauthorized", "status": 401, "detail": "invalid API key"}
        elif self._over_rate(caller):
            status, answer = 429, RATE_LIMITED
        elif method != "GET" or len(parts) != 4 or parts[:2] != ["v2", "pods"] or parts[3] != "logs":
            status, answer = 404, {"title": "Not Found", "status": 404, "detail": f"no route {method} {path}"}
        elif query.get("source", "container") not in ("container", "system") or not (
                query.get("tail", "100").isdigit() and 0 <= int(query.get("tail", "100")) <= 5000):
            status, answer = 400, {"title": "Bad Request", "status": 400,
                                   "detail": "source must be container or system; tail 0..5000"}
        else:
            pod = self.pods.get(parts[2])
            if caller != "user":  # skyward reads logs with the account's key; what a pod-scoped key may
                # read of the v2 API is not documented, so the fake answers the account's key only
                status, answer = 403, {"title": "Forbidden", "status": 403, "detail": "this key may not read logs"}
            elif pod is None:
                status, answer = 404, {"title": "Not Found", "status": 404, "detail": "pod not found"}
            else:
                status, answer = 200, EventStream(self._log_events(pod.id, int(query.get("tail", "100"))))
        self.record(Call(f"{method} {path}", "", caller or "bad-key", status, time.monotonic() - started))
        return status, answer

    def _log_events(self, pod_id: str, tail: int) -> list[str]:
        """The pod's container output (what its command printed), as log events."""
        text = self.hosts.log(pod_id, tail) if self.hosts is not None and tail else ""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return [f"id: {now}/{n:012d}\ndata: {json.dumps({'ts': now, 'source': 'container', 'line': line})}\n\n"
                for n, line in enumerate(text.splitlines() if text.strip() != "(no log)" else [], 1)]

    def handle_rest(self, method: str, path: str, query: dict[str, str], authorization: str,
                    body: bytes) -> tuple[int, Any]:
        started = time.monotonic()
        caller = self._caller(_bearer(authorization))
        if caller is None:
            status, payload = 401, {"error": "Unauthorized", "status": 401}
        elif self._over_rate(caller):
            status, payload = 429, RATE_LIMITED
        else:
            status, payload = rest.handle(self, method, path, query, body, caller)
        self.record(Call(f"{method} {path}", body.decode(errors="replace"), caller or "bad-key", status,
                         time.monotonic() - started))
        return status, payload

    def limit_rate(self, requests: int, window_s: float) -> None:
        """At most `requests` calls per key in any `window_s` seconds; more get HTTP 429."""
        with self.lock:
            self.rate_window = (requests, window_s)
            self._recent.clear()

    def _over_rate(self, caller: str) -> bool:
        with self.lock:
            if self.rate_window is None:
                return False
            limit, window = self.rate_window
            now = time.monotonic()
            recent = self._recent.setdefault(caller, collections.deque())
            while recent and now - recent[0] > window:
                recent.popleft()
            if len(recent) >= limit:
                return True
            recent.append(now)
            return False

    def all_data_centers(self) -> tuple[str, ...]:
        with self.lock:
            return tuple(sorted({dc for dcs in self.capacity.values() for dc in dcs} | set(DEFAULT_DATA_CENTERS)))

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
            self.capacity.clear()
            self.rate_window = None
            self._recent.clear()

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
        pod = self.place({"name": name, "imageName": "runpod/pytorch", "gpuTypeId": "NVIDIA GeForce RTX 4090",
                             "gpuCount": 1, "dockerArgs": "", "env": []}, interruptible=False, boot=False)
        return pod.id

    # -- HTTP ----------------------------------------------------------------------------------------
    def handle(self, path: str, authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        caller = self._caller(_bearer(authorization))
        try:
            query = json.loads(body or b"{}").get("query") or ""
        except ValueError:
            query = ""
        operation = _operation(query)
        if path.rstrip("/") != "/graphql":
            status, payload = 404, {"error": "not found"}
        elif caller is None:
            status, payload = 401, {"error": "Unauthorized"}
        elif self._over_rate(caller):
            status, payload = 429, RATE_LIMITED
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
    def place(self, spec: dict[str, Any], interruptible: bool, data_centers: list[str] | None = None,
              boot: bool = True) -> Pod:
        """A pod of `spec` (GraphQL input field names) in the first of `data_centers` (None: any) where
        its GPU type has capacity (and global networking, when `spec["globalNetworking"]`); else RunPod's
        capacity error."""
        gpu_type = spec.get("gpuTypeId") or ""
        count = int(spec.get("gpuCount") or 1)
        with self.lock:
            gpu = self.gpus.get(gpu_type)
            if gpu is None:
                raise QueryFailed(f"GPU type {gpu_type!r} is not available")
            if self.faults.take(gpu_type) is not None:
                raise QueryFailed(CAPACITY_MESSAGE)
            offered = self.capacity.get(gpu_type, DEFAULT_DATA_CENTERS)
            usable = [dc for dc in (data_centers or offered) if dc in offered and (
                not spec.get("globalNetworking") or dc in rest.GLOBAL_NETWORK_DATA_CENTERS)]
            if not usable:
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
            pod = Pod(id=new_pod_id(), name=spec.get("name") or "", image=spec.get("imageName") or "",
                      gpu_type=gpu_type, gpu_count=count, cloud_type=spec.get("cloudType") or "ALL",
                      docker_args=spec.get("dockerArgs") or "", env=env, ports=spec.get("ports") or "",
                      interruptible=interruptible, global_network=bool(spec.get("globalNetworking")),
                      data_center=usable[0],
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
        spend = sum(p["costPerHr"] or 0.0 for p in pods)
        return {"id": "user_skyward_fake", "pods": pods, "clientBalance": self.sim.balance,
                "currentSpendPerHr": spend, "spendLimit": self.sim.spend_limit}

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
        return self.sim.place(input, interruptible=False, data_centers=_one(input)).as_graphql()

    def podRentInterruptable(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        self._user_only()
        return self.sim.place(input, interruptible=True, data_centers=_one(input)).as_graphql()

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


def _one(spec: dict[str, Any]) -> list[str] | None:
    """The GraphQL input's one data center (`dataCenterId`), or None: any."""
    return [spec["dataCenterId"]] if spec.get("dataCenterId") else None


def _bearer(authorization: str) -> str:
    return authorization[len("Bearer "):] if authorization.startswith("Bearer ") else ""


def _operation(query: str) -> str:
    """The first field of the query (e.g. podFindAndDeployOnDemand), for the call log."""
    try:
        definition = parse(query).definitions[0]
        return definition.selection_set.selections[0].name.value  # type: ignore[attr-defined]
    except Exception:
        return "?"
