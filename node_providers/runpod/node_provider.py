"""`ray up` / autoscaler entry point for RunPod: the generic node provider over `RunPodCloud`.

    provider: {type: external, module: node_providers.runpod.RunPodNodeProvider, cloud: {cloud_type: SECURE}}
"""

from __future__ import annotations

from node_providers.runpod.cloud import RunPodCloud
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider


class RunPodNodeProvider(ScriptBootedNodeProvider):
    cloud_class = RunPodCloud
