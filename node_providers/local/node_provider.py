"""`ray up` / autoscaler entry point for local pools: the generic node provider over `LocalCloud`."""

from __future__ import annotations

from node_providers.local.cloud import LocalCloud
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider


class LocalNodeProvider(ScriptBootedNodeProvider):
    cloud_class = LocalCloud
