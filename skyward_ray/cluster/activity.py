"""Is anyone using this pool? Asked of the head's GCS by a detached pool's keeper, for its idle clock.

Idle means: no task running and no client attached. The GCS already knows both, so the user's
code never has to ping anything:

- every Ray driver is a job while it is connected: a script that called `ray.init()`, a Ray
  Client session (its server process on the head is the job; Ray keeps it for the client's
  reconnect grace, 30 s, after the client leaves), the entrypoint of a `ray job submit`;
  jobs in Ray's own namespaces (`_ray_internal...`) are not users;
- tasks and actors that outlive their driver (detached actors) hold resources: a node whose
  available CPUs/GPUs/custom resources are below its totals is busy, and work waiting for
  resources (pending requests, constraints) counts too.

The keeper itself is no Ray driver, so it never counts.
"""

from __future__ import annotations

from typing import Any

_NOT_WORK = ("memory", "object_store_memory")  # held by the object store and workers' reservations, not by tasks
_INTERNAL_NAMESPACE = "_ray_internal"


def busy_reason(gcs: Any, timeout: float = 5.0) -> str | None:
    """Why the pool is in use now (a short phrase), or None when it is idle. Raises when the GCS does not answer."""
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    jobs = gcs.get_all_job_info(timeout=timeout)
    live = [job for job in jobs.values()
            if not job.is_dead and not job.config.ray_namespace.startswith(_INTERNAL_NAMESPACE)]
    if live:
        return f"{len(live)} Ray driver{'s' if len(live) != 1 else ''} attached"
    state = get_cluster_resource_state(gcs)
    for node in state.node_states:
        for resource, total in node.total_resources.items():
            if resource in _NOT_WORK or resource.startswith("node:"):
                continue
            if node.available_resources.get(resource, 0.0) < total - 1e-6:
                return f"resources in use on {node.node_ip_address} ({resource})"
    if len(state.pending_resource_requests) or len(state.pending_gang_resource_requests):
        return "work waiting for resources"
    return None


__all__ = ["busy_reason"]
