"""This machine as an offer: free, on-demand, one per accelerator it can provide (no Ray import)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psutil

from catalog.taxonomy import Variant, taxonomy
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


_VENDOR_WORDS = re.compile(r"^(NVIDIA|Tesla|GeForce|Quadro)\s+", re.IGNORECASE)


def canonical_gpu(name: str, memory_gb: float | None = None) -> Variant | None:
    """The catalog variant an `nvidia-smi` name means, by exact name, never by substring ("A10" is
    not an A100, "L4" is not an L40S).

    Tried in order: the names providers use for it (RunPod's ids are nvidia-smi's names, e.g.
    "NVIDIA A100-SXM4-80GB"), then the name without vendor words, then its model token ("A100" of
    "A100-SXM4-80GB"), each as an exact family or alias.
    """
    tax = taxonomy()
    for provider in ("runpod", "vastai", "aws"):
        variant = tax.lookup(provider, name, memory_gb)
        if variant is not None:
            return variant
    stripped = name.strip()
    while _VENDOR_WORDS.match(stripped):
        stripped = _VENDOR_WORDS.sub("", stripped, count=1)
    for candidate in (stripped, stripped.split()[0] if stripped else "", re.split(r"[-\s]", stripped)[0]):
        family = tax.resolve_family(candidate) if candidate else None
        if family is not None:
            variants = tax.by_family[family]
            return min(variants, key=lambda v: abs(v.memory_gb - memory_gb)) if memory_gb else variants[0]
    return None


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
    offers += gpu_offers(detect_gpus(), base)
    return offers


def gpu_offers(gpus: tuple[tuple[int, str, float], ...], base: dict[str, Any]) -> list[Offer]:
    """One offer per kind of GPU here, named by its canonical family (or nvidia-smi's name when the
    catalog does not know the card, so it can never pass for a card it is not)."""
    offers = []
    for name in sorted({name for _, name, _ in gpus}):
        same = [g for g in gpus if g[1] == name]
        variant = canonical_gpu(name, same[0][2])
        offers.append(Offer(accelerator=variant.family if variant else name, count=len(same),
                            form_factor=variant.form_factor if variant else None,
                            instance_type=f"local-{name}", accelerator_memory_gb=same[0][2], **base))
    return offers
