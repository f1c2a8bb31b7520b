"""The fake RunPod's REST pod API (`https://rest.runpod.io/v1`, here `<fake>/v1`), held to its published contract.

Sources, cited where they apply:

- the request schema: RunPod's OpenAPI document for REST v1 (`PodCreateInput`, copied unchanged but
  for descriptions into `pod_create_input.json`, see its `$comment`). A body is validated with
  jsonschema against it with no other property allowed: a field the schema does not have is refused
  (400), as RunPod's v2 API documents it (`additional properties 'bogus' not allowed`);
- the calls, as RunPod's CLI makes them (github.com/runpod/runpodctl `internal/api/pods.go`):
  `POST /pods` (201, the pod), `GET /pods` (a JSON list), `GET /pods/{id}` (404 when unknown),
  `DELETE /pods/{id}` (204); every one with `Authorization: Bearer <key>`;
- global networking (`globalNetworking: true`): "only available for On-Demand GPU Pods on some Secure
  Cloud data centers" (the schema's description) and only in the data centers
  https://docs.runpod.io/pods/networking lists (`GLOBAL_NETWORK_DATA_CENTERS`). A request that asks
  for it with `interruptible`, `COMMUNITY` or a CPU pod, or only in data centers that lack it, is
  refused; with no such capacity for the GPU it gets RunPod's capacity message;
- error bodies: REST v1 documents none; `{"error": ..., "status": ...}` is what runpodctl reads
  (`APIError` in `internal/api/client.go`), so that is the fake's shape.
"""

from __future__ import annotations

import json
import shlex
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft7Validator

from tests.simapi import Text

if TYPE_CHECKING:
    from tests.simrunpod.server import Pod, SimRunPod

SCHEMA_FILE = Path(__file__).with_name("pod_create_input.json")
# https://docs.runpod.io/pods/networking, "Supported data centers" (runpod/docs pods/networking.mdx, 2026-07-20)
GLOBAL_NETWORK_DATA_CENTERS = frozenset({
    "CA-MTL-3", "EU-CZ-1", "EU-FR-1", "EU-NL-1", "EU-RO-1", "EU-SE-1", "EUR-IS-2", "OC-AU-1", "US-CA-2",
    "US-GA-1", "US-GA-2", "US-IL-1", "US-KS-2", "US-NC-1", "US-TX-3", "US-TX-4", "US-WA-1",
})
NO_GLOBAL_NETWORK_DC = "global networking is not available in any of the requested data centers"
GLOBAL_NETWORK_RULE = "global networking is only available for on-demand GPU pods in Secure Cloud"


class RestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@lru_cache(maxsize=1)
def validator() -> Draft7Validator:
    """The published schema as JSON Schema: OpenAPI's `nullable` spelled as a null type, nothing else allowed."""
    schema = json.loads(SCHEMA_FILE.read_text())
    for prop in schema["properties"].values():
        if prop.pop("nullable", False):
            prop["type"] = [prop["type"], "null"]
    return Draft7Validator({**schema, "additionalProperties": False})


def handle(sim: "SimRunPod", method: str, path: str, query: dict[str, str], body: bytes,
           caller: str) -> tuple[int, Any]:
    """(status, answer) for one REST call under `/v1`."""
    parts = [p for p in path.split("/") if p][1:]  # drop "v1"
    try:
        if parts == ["pods"] and method == "POST":
            return 201, rest_pod(create(sim, _body(body), caller))
        if parts == ["pods"] and method == "GET":
            _user_only(caller)
            return 200, [rest_pod(p) for p in sim.live_pods() if _matches(p, query)]
        if len(parts) == 2 and parts[0] == "pods" and method in ("GET", "DELETE"):
            pod = _own(sim, parts[1], caller)
            if method == "GET":
                return 200, rest_pod(pod)
            sim.end_pod(pod.id)
            return 204, Text("")
    except RestRefused as refused:
        return refused.status, {"error": str(refused), "status": refused.status}
    return 404, {"error": "not found", "status": 404}


def create(sim: "SimRunPod", body: dict[str, Any], caller: str) -> "Pod":
    _user_only(caller)
    problems = sorted(validator().iter_errors(body), key=lambda e: list(e.path))
    if problems:
        raise RestRefused(400, "; ".join(f"{'.'.join(map(str, p.path)) or '$'}: {p.message}" for p in problems))
    network = bool(body.get("globalNetworking"))
    if network and (body.get("interruptible") or body.get("cloudType", "SECURE") != "SECURE"
                    or body.get("computeType", "GPU") != "GPU"):
        raise RestRefused(400, GLOBAL_NETWORK_RULE)
    wanted = list(body.get("dataCenterIds") or sim.all_data_centers())
    if network:
        wanted = [dc for dc in wanted if dc in GLOBAL_NETWORK_DATA_CENTERS]
        if not wanted:
            raise RestRefused(400, NO_GLOBAL_NETWORK_DC)
    gpu_types = list(body.get("gpuTypeIds") or [])
    if not gpu_types:
        raise RestRefused(400, "gpuTypeIds: a GPU pod needs at least one GPU type")
    spec = {
        "name": body.get("name", "my pod"), "imageName": body.get("imageName", ""), "gpuTypeId": gpu_types[0],
        "gpuCount": body.get("gpuCount", 1), "cloudType": body.get("cloudType", "SECURE"),
        "dockerArgs": shlex.join([*body.get("dockerEntrypoint", []), *body.get("dockerStartCmd", [])]),
        "env": [{"key": k, "value": v} for k, v in (body.get("env") or {}).items()],
        "ports": ",".join(body.get("ports") or []), "containerDiskInGb": body.get("containerDiskInGb"),
        "volumeInGb": body.get("volumeInGb"), "globalNetworking": network,
    }
    try:
        return sim.place(spec, interruptible=bool(body.get("interruptible")), data_centers=wanted)
    except Exception as error:  # the model's refusal (no capacity, no such GPU): RunPod's words, HTTP 400
        raise RestRefused(400, str(error)) from None


def rest_pod(pod: "Pod") -> dict[str, Any]:
    """A pod as the REST API's `Pod` schema has it (the fields skyward_ray and runpodctl read)."""
    ports = (pod.runtime or {}).get("ports") or []
    return {
        "id": pod.id, "name": pod.name, "desiredStatus": pod.desired_status, "image": pod.image,
        "costPerHr": pod.cost_per_hr, "interruptible": pod.interruptible, "env": dict(pod.env),
        "gpu": {"id": pod.gpu_type, "count": pod.gpu_count}, "machineId": pod.machine_id,
        "containerDiskInGb": pod.container_disk_gb, "volumeInGb": pod.volume_gb,
        "ports": [p for p in pod.ports.split(",") if p], "dataCenterId": pod.data_center,
        "publicIp": next((p["ip"] for p in ports if p.get("isIpPublic")), None),
        "portMappings": {str(p["privatePort"]): p["publicPort"] for p in ports} or None,
    }


def _body(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError as error:
        raise RestRefused(400, f"the body is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise RestRefused(400, "the body must be a JSON object")
    return parsed


def _matches(pod: "Pod", query: dict[str, str]) -> bool:
    checks = {"name": pod.name, "id": pod.id, "desiredStatus": pod.desired_status, "gpuTypeId": pod.gpu_type}
    return all(checks[k] == v for k, v in query.items() if k in checks)


def _user_only(caller: str) -> None:
    if caller != "user":
        raise RestRefused(403, "This API key is scoped to one pod and cannot do this.")


def _own(sim: "SimRunPod", pod_id: str, caller: str) -> "Pod":
    if caller.startswith("pod:") and caller != f"pod:{pod_id}":
        raise RestRefused(403, "This API key is scoped to another pod.")
    with sim.lock:
        pod = sim.pods.get(pod_id)
    if pod is None:
        raise RestRefused(404, f"pod {pod_id} not found")
    return pod
