"""Container: every node its own Docker container on this machine, driven exactly like a cloud.

- `config.py`      the typed `sky.Container(...)` config
- `engine.py`      the Docker Engine through the Docker SDK, with errors that name the fix
- `offers.py`      this machine as a free offer (CPU, simulated or real NVIDIA accelerators)
- `node_image.py`  the node image: the base image plus Ray and the Image's packages, built once per content hash
- `gateway.py`     the pool's only door: a relay from a 127.0.0.1 port to the head's sshd
- `cloud.py`       launch / describe / terminate containers that boot from the generic boot script
- `node_provider.py`  the Ray node provider (`ContainerNodeProvider`), imported on first use
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "ContainerNodeProvider":
        from node_providers.container.node_provider import ContainerNodeProvider

        return ContainerNodeProvider
    raise AttributeError(name)
