"""`ray up` / autoscaler entry point for Docker containers: the generic node provider over `ContainerCloud`.

    provider: {type: external, module: node_providers.container.ContainerNodeProvider, cloud: {image: ...}}
"""

from __future__ import annotations

from node_providers.container.cloud import ContainerCloud
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider


class ContainerNodeProvider(ScriptBootedNodeProvider):
    cloud_class = ContainerCloud
