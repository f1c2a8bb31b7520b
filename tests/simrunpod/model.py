"""The fake RunPod's records: GPU prices (from the dated snapshot) and pods."""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from catalog import prices
from catalog.taxonomy import taxonomy

DEFAULT_DATA_CENTERS = ("US-TX-3", "US-KS-3")  # US-TX-3 offers global networking, US-KS-3 does not


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
    data_center: str = DEFAULT_DATA_CENTERS[0]
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


def new_pod_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))
