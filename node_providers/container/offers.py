"""This machine's Docker Engine as an offer: free, on-demand (no Ray import, no engine call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from node_providers.local.offers import detect_gpus, gpu_offers
from skyward_ray.planning.offers import Offer

if TYPE_CHECKING:
    from node_providers.container.config import Container
    from skyward_ray.planning.accelerators import Accelerator

PROVIDER_NAME = "container"


def list_offers(config: "Container", accelerator: "Accelerator | None" = None) -> list[Offer]:
    """One CPU offer; the requested accelerators when simulated; this machine's GPUs when the
    config passes them to the containers (`gpus=`)."""
    import os

    import psutil

    base = dict(provider=PROVIDER_NAME, market="on-demand", price=0.0, on_demand_price=0.0, spot_price=None,
                region="container", zone=None, vcpus=float(config.cpus or os.cpu_count() or 1),
                memory_gb=(config.memory or psutil.virtual_memory().total) / 1024**3,
                price_source="container (free)", price_as_of=None)
    offers = [Offer(accelerator=None, count=0, instance_type="container", **base)]
    if accelerator is not None and config.simulate_accelerators:
        offers.append(Offer(accelerator=accelerator.name, count=accelerator.count,
                            form_factor=accelerator.form_factor, accelerator_memory_gb=accelerator.memory,
                            instance_type=f"container-simulated-{accelerator.name}", **base))
    if config.gpus is not None:
        offers += gpu_offers(detect_gpus(), base)
    return offers
