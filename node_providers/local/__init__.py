"""This machine as a pool: `Local` (config), its offer, `LocalCloud` (machines are process groups).

`LocalNodeProvider` (the Ray node provider) is imported on first use, so the config and offers
never import Ray; a cluster YAML can still name `node_providers.local.LocalNodeProvider`.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "LocalNodeProvider":
        from node_providers.local.node_provider import LocalNodeProvider

        return LocalNodeProvider
    raise AttributeError(name)
