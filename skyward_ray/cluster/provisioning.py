"""Creating a cluster's machines: prepare its resources, then the head, then the workers at once.

Every create records its id on the `Cluster` the moment the cloud returns it, so an interruption
at any point leaves the teardown a complete list of what to end. Before the first machine, the
pool's state file is written (`skyward-ray gc` finds what follows by it).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import secrets
import threading
import time
from typing import Any

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray import names
from skyward_ray.cluster import pool_state
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider, provider_section
from skyward_ray.cluster.running import Cluster
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError, SpecError
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.providers import ProviderConfig


def load_node_provider(config: ProviderConfig, params: ClusterParams, cluster_name: str) -> ScriptBootedNodeProvider:
    """Prepare the cluster's resources (`bootstrap_config`) and return its node provider."""
    node_provider = config.require_provisioning()
    module_name, _, class_name = node_provider.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    section = provider_section(node_provider, config.model_dump(), params)
    cluster_config = cls.bootstrap_config({"cluster_name": cluster_name, "provider": section})
    return cls(cluster_config["provider"], cluster_name)


def _tags(cluster_name: str, kind: str, index: int, launch_request: str) -> dict[str, str]:
    return {
        TAG_RAY_CLUSTER_NAME: cluster_name,
        TAG_RAY_NODE_KIND: kind,
        TAG_RAY_USER_NODE_TYPE: names.HEAD_TYPE if kind == NODE_KIND_HEAD else names.WORKER_TYPE,
        TAG_RAY_NODE_NAME: f"{cluster_name}-{kind}-{index}",
        TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
        TAG_RAY_LAUNCH_REQUEST: launch_request,
    }


def _create(cluster: Cluster, kind: str, index: int, launch_request: str, count: int = 1) -> list[str]:
    """One machine (node `index`), or `count` workers in one batch from the lowest free indexes; their
    ids go to `cluster.instance_ids` the moment the cloud returns them, in index order."""
    with cluster.lock:
        cluster.creating += 1
    known = False  # did this create end with a known outcome (an id, or the cloud's typed refusal)?
    try:
        created = cluster.provider.create_node_with_resources_and_labels(
            {}, _tags(cluster.name, kind, index, launch_request), count, {},
            {names.NODE_INDEX: str(index)} if count == 1 else {})
        if len(created) != count:
            raise ProvisioningError(f"the provider created {len(created)} nodes of the {count} asked for, from node "
                                    f"{index} of {cluster.name}")
        instance_ids = sorted(created, key=lambda i: int(created[i].get("index", index)))
        with cluster.lock:
            cluster.instance_ids.extend(instance_ids)
        known = True
        return instance_ids
    except (CapacityError, AuthError, QuotaError, SpecError):
        known = True  # the cloud refused: nothing was started
        raise
    finally:
        with cluster.lock:
            cluster.creating -= 1
            if not known:  # a lost response or a failure midway: a machine may show up in the listing later
                cluster.last_uncertain_create = time.monotonic()


def create_worker(cluster: Cluster, index: int) -> str:
    """One more worker for a running cluster (a replacement keeps the lost node's index)."""
    [instance_id] = _create(cluster, NODE_KIND_WORKER, index, secrets.token_hex(4))
    return instance_id


def provision(cluster: Cluster, nodes: int) -> None:
    """Start the head (index 0), then workers 1..nodes-1 at once: in one launch call where the cloud
    starts many identical machines per call (`Cloud.launch_many`), else one call each, in parallel.

    Every create runs in a worker thread and records its ids in `cluster.instance_ids` as it
    returns, so an interruption at any point leaves the caller a complete list to end. The first
    failure, or a signal (KeyboardInterrupt/SystemExit raised here, in the waiting thread), cancels
    every create not yet started; the ones in flight are waited for, so their ids are recorded too.
    """
    launch_request = secrets.token_hex(4)
    stop = threading.Event()

    def create(kind: str, index: int, count: int = 1) -> list[str]:
        if stop.is_set():
            return []
        try:
            return _create(cluster, kind, index, launch_request, count)
        except BaseException:
            stop.set()
            raise

    in_one_call = nodes > 2 and cluster.provider.launches_in_batches
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1 if in_one_call else min(16, nodes),
                                                     thread_name_prefix="skyward-create")
    try:
        executor.submit(create, NODE_KIND_HEAD, 0).result()
        futures = ([executor.submit(create, NODE_KIND_WORKER, 1, nodes - 1)] if in_one_call else
                   [executor.submit(create, NODE_KIND_WORKER, i) for i in range(1, nodes)])
        for future in concurrent.futures.as_completed(futures):
            future.result()  # the first failure is raised (the rest are cancelled below)
        with cluster.lock:  # all there: head first, then by index
            by_index = [i for future in futures for i in future.result()]
            cluster.instance_ids[:] = cluster.instance_ids[:1] + by_index + [
                i for i in cluster.instance_ids[1:] if i not in by_index]
    except BaseException:
        stop.set()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def record_pool(config: ProviderConfig, params: ClusterParams, cluster_name: str, offer: Offer,
                detached: dict[str, Any] | None = None) -> None:
    """The pool's 0600 state file: which provider, what it costs, and which process keeps it alive
    (this one: the driver, or a detached pool's keeper)."""
    pool_state.write_record(pool_state.PoolRecord(
        name=cluster_name, provider=config.name, provider_config=config.without_secrets(),
        owner=pool_state.Owner.current(), region=params.region, offer=params.offer, price_per_node=offer.price,
        nodes=params.nodes, kind="keeper" if detached is not None else "driver", detached=detached))
