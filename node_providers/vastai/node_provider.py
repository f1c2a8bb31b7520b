"""`ray up` / autoscaler entry point for Vast.ai: the generic node provider over `VastAICloud`.

    provider: {type: external, module: node_providers.vastai.VastAINodeProvider, cloud: {image: ...}}
"""

from __future__ import annotations

from node_providers.vastai.cloud import VastAICloud
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider


class VastAINodeProvider(ScriptBootedNodeProvider):
    cloud_class = VastAICloud
