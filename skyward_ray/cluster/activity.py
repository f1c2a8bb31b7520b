"""Is anyone using this pool? Asked of the head's GCS by a detached pool's keeper, for its idle clock.

Idle means: no task running and no client attached. The GCS already knows both, so the user's
code never has to ping anything:

- every Ray driver is a job while it is connected: a script that called `ray.init()`, a Ray
  Client session (its server process on the head is the job; Ray keeps it for the client's
  reconnect grace, 30 s, after the client leaves), the entrypoint of a `ray job submit`;
  jobs in Ray's own namespaces (`_ray_internal...`) are not users;
- tasks and actors that outlive their driver (detached actors) hold resources: a node whose
  available CPUs/GPUs/custom resources are below its totals is busy, and work waiting for
  resources (pending requests, constraints) counts too;
- a client still joining (`sky.attach(...)`, `Compute.up(...).connect()`) is no job yet: `ray.init`
  registers its job only at its end, seconds later on a loaded machine. Such a client puts a
  `joining:` key in the KV before it starts and takes it away once joined (or failed), and the
  keeper counts a key as a client for `JOIN_PATIENCE_S` from when it first saw it (its own clock),
  so a client that died mid-join holds the pool no longer than that. Without it, a pool whose idle
  timeout ran out during a client's join was ended under it, and Ray's core worker ended that
  client's whole process (seen: a test worker gone mid-`ray.init` with a 5 s idle timeout).

The keeper itself is no Ray driver, so it never counts.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any

from skyward_ray.names import HEARTBEAT_NAMESPACE

_NOT_WORK = ("memory", "object_store_memory")  # held by the object store and workers' reservations, not by tasks
_INTERNAL_NAMESPACE = "_ray_internal"
_JOINING_PREFIX = b"joining:"
_KV_NAMESPACE = HEARTBEAT_NAMESPACE.encode()
# How long a client's join may take before its key stops counting: Ray Client's connect may be
# retried for up to 120 s (driver.CLIENT_CONNECT_PATIENCE_S), plus its packages' upload.
JOIN_PATIENCE_S = 300.0


def announce_joining(gcs: Any, timeout: float = 5.0) -> bytes:
    """On a client about to join: tell the keeper a client is on its way; returns the key to withdraw."""
    key = _JOINING_PREFIX + secrets.token_hex(8).encode()
    gcs.internal_kv_put(key, b"", True, _KV_NAMESPACE, timeout=timeout)
    return key


def withdraw_joining(gcs: Any, key: bytes, timeout: float = 5.0) -> None:
    """On the client, once joined (then its job counts) or failed to. Best effort: a key left behind
    stops counting after JOIN_PATIENCE_S."""
    with contextlib.suppress(Exception):
        gcs.internal_kv_del(key, False, _KV_NAMESPACE, timeout=timeout)


class Joining:
    """The keeper's view of clients joining: each key counts from when the keeper first saw it."""

    def __init__(self) -> None:
        self._first_seen: dict[bytes, float] = {}

    def count(self, gcs: Any, timeout: float = 5.0) -> int:
        keys = gcs.internal_kv_keys(_JOINING_PREFIX, _KV_NAMESPACE, timeout=timeout)
        now = time.monotonic()
        self._first_seen = {key: self._first_seen.get(key, now) for key in keys}
        return sum(1 for seen in self._first_seen.values() if now - seen < JOIN_PATIENCE_S)


def busy_reason(gcs: Any, joining: Joining | None = None, timeout: float = 5.0) -> str | None:
    """Why the pool is in use now (a short phrase), or None when it is idle. Raises when the GCS does not answer.
    `joining` (the keeper's) counts clients still joining."""
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    jobs = gcs.get_all_job_info(timeout=timeout)
    live = [job for job in jobs.values()
            if not job.is_dead and not job.config.ray_namespace.startswith(_INTERNAL_NAMESPACE)]
    if live:
        return f"{len(live)} Ray driver{'s' if len(live) != 1 else ''} attached"
    arriving = joining.count(gcs, timeout) if joining is not None else 0
    if arriving:
        return f"{arriving} client{'s' if arriving != 1 else ''} joining"
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


__all__ = ["JOIN_PATIENCE_S", "Joining", "announce_joining", "busy_reason", "withdraw_joining"]
