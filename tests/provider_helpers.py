"""What every cloud's provider test does the same way: a cluster's params as the launcher makes them,
the tags Ray's launcher puts on a node, and creating nodes through the generic node provider.

One copy, so the provider tests of AWS, RunPod, Vast.ai (and a new cloud's) differ only in what
they check about their cloud.
"""

from __future__ import annotations

import time
from typing import Any

from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

from skyward_ray import names
from skyward_ray.cluster import pool_state
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.planning.offers import Offer

TOKEN = "token-" + "x" * 58


def cluster_name() -> str:
    """A fresh cluster name, as unlikely to clash across tests as the launcher's."""
    return f"sky-t{time.monotonic_ns() % 10**8}"


def cluster_params(bought: Offer | None = None, /, **fields: Any) -> ClusterParams:
    """A cluster's params as the launcher makes them for the offer `bought` (its type, market, place,
    label, accelerator and the pool's tags with its price), with `fields` on top."""
    from_offer: dict[str, Any] = {}
    if bought is not None:
        from_offer = dict(instance_type=bought.instance_type, market=bought.market, region=bought.region,
                          zone=bought.zone, offer=bought.label, accelerator=bought.accelerator,
                          accelerator_count=bought.count, pool_tags=pool_state.owner_tags(bought.price))
    return ClusterParams(**{"auth_token": TOKEN, "nodes": 1, **from_offer, **fields})


def node_tags(name: str, kind: str = NODE_KIND_HEAD) -> dict[str, str]:
    """The tags Ray's cluster launcher puts on a node of this kind."""
    return {TAG_RAY_CLUSTER_NAME: name, TAG_RAY_NODE_KIND: kind, "ray-user-node-type": f"skyward.{kind}",
            "ray-launch-request": "r1", "ray-node-name": f"{name}-{kind}", "ray-node-status": "up-to-date"}


def create(provider: Any, name: str, kind: str = NODE_KIND_HEAD, count: int = 1, index: int | None = None,
           node_config: dict[str, Any] | None = None) -> list[str]:
    """Create `count` nodes of this kind (at `index` when given); a worker first waits (bounded)
    until the head has an address to join. Returns the new instance ids."""
    if kind == NODE_KIND_WORKER:
        deadline = time.monotonic() + 10
        while not any(m.private_ip for m in provider.machines(fresh=True)) and time.monotonic() < deadline:
            time.sleep(0.05)
    labels = {names.NODE_INDEX: str(index)} if index is not None else {}
    return list(provider.create_node_with_resources_and_labels(dict(node_config or {}), node_tags(name, kind), count,
                                                               {}, labels))
