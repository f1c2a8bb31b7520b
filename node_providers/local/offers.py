"""This machine as an offer: free, on-demand, one per accelerator it can provide (no Ray import)."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from typing import TYPE_CHECKING

import psutil

from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.local.config import Local
    from skyward_ray.planning.accelerators import Accelerator

PROVIDER_NAME = "local"


@lru_cache(maxsize=1)
def detect_gpus() -> tuple[tuple[int, str, float], ...]:
    """(index, name, memory GB) of each NVIDIA GPU here; empty without `nvidia-smi`."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        index, name, memory = (part.strip() for part in line.split(","))
        gpus.append((int(index), name, float(memory) / 1024))
    return tuple(gpus)


def _gpu_matches(gpu_name: str, accelerator: "Accelerator") -> bool:
    return accelerator.name.replace(" ", "").lower() in gpu_name.replace(" ", "").lower()


def list_offers(config: "Local", accelerator: "Accelerator | None" = None) -> list[Offer]:
    """This machine as an offer: free, always on-demand, one per accelerator it can provide."""
    base = dict(
        provider=PROVIDER_NAME, market="on-demand", price=0.0, on_demand_price=0.0, spot_price=None,
        region="local", zone=None, vcpus=float(os.cpu_count() or 1),
        memory_gb=psutil.virtual_memory().total / 1024**3, price_source="local (free)",
        price_as_of=None,
    )
    offers = [Offer(accelerator=None, count=0, instance_type="local", **base)]
    if accelerator is not None and config.simulate_accelerators:
        offers.append(Offer(accelerator=accelerator.name, count=accelerator.count,
                            form_factor=accelerator.form_factor, accelerator_memory_gb=accelerator.memory,
                            instance_type=f"local-simulated-{accelerator.name}", **base))
    gpus = detect_gpus()
    if gpus:
        names = sorted({name for _, name, _ in gpus})
        for name in names:
            same = [g for g in gpus if g[1] == name]
            canonical = accelerator.name if accelerator is not None and _gpu_matches(name, accelerator) else name
            offers.append(Offer(accelerator=canonical, count=len(same), instance_type=f"local-{name}",
                                accelerator_memory_gb=same[0][2], **base))
    return offers
