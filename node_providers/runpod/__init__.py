"""RunPod: `RunPod` (config), offers (live `gpuTypes` prices and the snapshot), `RunPodCloud` (pods), split by concern:

- `config.py`   the typed `sky.RunPod(...)` config
- `api.py`      the API key, GraphQL calls through the runpod SDK, SDK errors → typed errors
- `offers.py`   live offers (`gpuTypes.lowestPrice`) and the dated snapshot; never imports Ray
- `cloud.py`    launch / describe / terminate pods that boot from their container command
- `node_provider.py`  the Ray node provider (`RunPodNodeProvider`), imported on first use
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "RunPodNodeProvider":
        from node_providers.runpod.node_provider import RunPodNodeProvider

        return RunPodNodeProvider
    raise AttributeError(name)
