"""`ray up` / autoscaler entry point for AWS: the generic node provider over `AWSCloud`.

    provider: {type: external, module: node_providers.aws.AWSNodeProvider, cloud: {region: us-east-1}}
"""

from __future__ import annotations

from node_providers.aws.cloud import AWSCloud
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider


class AWSNodeProvider(ScriptBootedNodeProvider):
    cloud_class = AWSCloud
