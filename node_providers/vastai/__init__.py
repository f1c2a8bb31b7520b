"""Vast.ai: `VastAI` (config), offers (live `search_offers` with a key, the dated snapshot without),
`VastAICloud` (instances that boot from their onstart script), split by concern:

- `config.py`   the typed `sky.VastAI(...)` config
- `api.py`      the SDK client and its errors → typed errors
- `offers.py`   live offers and the dated snapshot; never imports Ray
- `cloud.py`    create / list / destroy instances, the onstart payload, self-destroy
- `node_provider.py`  the Ray node provider (`VastAINodeProvider`), imported on first use
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "VastAINodeProvider":
        from node_providers.vastai.node_provider import VastAINodeProvider

        return VastAINodeProvider
    raise AttributeError(name)
