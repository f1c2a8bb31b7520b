"""Pods on RunPod's global network: the one private network between pods, so the only way 2+ pods form
one Ray cluster. Created through the REST pod API, because that is the only place RunPod documents it.

What RunPod documents (and nothing more is assumed):

- the field is `globalNetworking: true` on `POST https://rest.runpod.io/v1/pods` (`PodCreateInput` in
  RunPod's OpenAPI, github.com/runpod/docs api-reference/openapi.json); RunPod's GraphQL pod input has
  no such field (the runpod SDK and runpodctl send none), so a GraphQL create cannot ask for it;
- "Currently only available for On-Demand GPU Pods on some Secure Cloud data centers" (that field's
  description): `interruptible: false`, `cloudType: SECURE`, `computeType: GPU`. Interruptible (spot)
  pods cannot join: a spot pool of 2+ pods is rejected in the plan (`offers.SPOT_REASON`) and refused
  here (`refusal`) for a hand-written cluster;
- only in the data centers https://docs.runpod.io/pods/networking lists ("Supported data centers"),
  `offers.GLOBAL_NETWORK_DATA_CENTERS`; the request names exactly those (`dataCenterIds`), so RunPod
  places the pod only where global networking exists. Where none has the GPU, RunPod answers with
  its capacity error, which `api.py` raises as `CapacityError`: the plan walk tries the next offer;
- each such pod is reachable by the others at `<pod id>.runpod.internal` (same page).

The REST body is JSON, so nothing is pasted into query text; the boot payload still travels as the
same base64 `bash -c` command as on GraphQL (`dockerStartCmd` is the container's start command).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from node_providers.runpod.offers import GLOBAL_NETWORK_DATA_CENTERS

if TYPE_CHECKING:
    from node_providers.runpod.config import RunPod

INTERNAL_DOMAIN = "runpod.internal"
VOLUME_MOUNT = "/runpod-volume"


def refusal(market: str, head_market: str | None) -> str | None:
    """Why a pool of 2+ pods in these markets cannot be on the global network, or None."""
    if "spot" in (market, head_market):
        return ("RunPod's global networking (the only private network between pods) is for on-demand pods only; "
                "a spot pool of 2+ pods cannot form one Ray cluster. Fix: allocation='on-demand', or nodes=1")
    return None


def create_request(*, name: str, gpu_type: str, count: int, config: "RunPod", start_command: list[str],
                   env: Mapping[str, str]) -> dict[str, Any]:
    """The `POST /pods` body for one on-demand Secure Cloud GPU pod on the global network."""
    body: dict[str, Any] = {
        "name": name, "imageName": config.image, "computeType": "GPU", "cloudType": "SECURE",
        "interruptible": False, "globalNetworking": True,
        "gpuTypeIds": [gpu_type], "gpuCount": count,
        "dataCenterIds": sorted(GLOBAL_NETWORK_DATA_CENTERS), "dataCenterPriority": "availability",
        "containerDiskInGb": config.container_disk_gb, "volumeInGb": config.volume_gb,
        "minVCPUPerGPU": math.ceil(config.min_vcpu_count / count),
        "minRAMPerGPU": math.ceil(config.min_memory_gb / count),
        "ports": ["22/tcp"], "dockerStartCmd": list(start_command), "env": dict(env),
    }
    if config.volume_gb:
        body["volumeMountPath"] = VOLUME_MOUNT
    return body


def private_address(pod_id: str) -> str:
    """The name other pods on the global network reach this one by."""
    return f"{pod_id}.{INTERNAL_DOMAIN}"
