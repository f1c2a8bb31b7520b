"""`sky.Container(...)`: a pool of Docker containers on this machine, each node its own container.

The small, free copy of a cloud: every node boots from an image with the same boot script a cloud
machine runs, on a private network of the pool's own, and the driver reaches the pool only through
the head's SSH port published on 127.0.0.1 (as it reaches a cloud). Every setting is a typed field.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from skyward_ray.errors import SpecError
from skyward_ray.planning.providers import ProviderConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer

# An image reference as Docker reads it: [registry[:port]/]path[:tag][@digest]
_IMAGE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")


def default_image() -> str:
    """The official Python image of the driver's exact version: Ray checks versions between nodes
    and Ray Client checks the driver, so a node never runs with "close enough"."""
    return "python:%d.%d.%d-slim" % sys.version_info[:3]


class Container(ProviderConfig):
    """Docker containers on this machine (or on the engine `docker_host` names).

    Each node is a container of `image` (default: the official `python:<driver's X.Y.Z>-slim`; any
    image with bash, apt-get and the driver's exact Python), limited to `cpus` and `memory`, on a
    private network of the pool's own. Needs the Docker Engine and `pip install 'skyward-ray[container]'`.
    """

    name: ClassVar[str] = "container"
    node_provider: ClassVar[str | None] = "node_providers.container.node_provider:ContainerNodeProvider"
    extra: ClassVar[str | None] = "container"
    required_modules: ClassVar[tuple[str, ...]] = ("docker",)

    boot_timeout: float = Field(default=300.0, gt=0, description="seconds to wait for every node to join "
                                                                "(a first pool also builds its node image)")
    image: str = Field(default_factory=default_image,
                       description="the base image of every node: bash, apt-get and the driver's exact Python")
    cpus: float | None = Field(default=None, gt=0, description="CPUs each node's container may use; default: "
                                                              "this machine's CPUs split across the nodes")
    memory: int | None = Field(default=None, ge=256 * 1024**2, description="bytes of memory each node's container "
                                                                          "may use; default: this machine's split")
    gpus: Literal["all"] | int | None = Field(
        default=None, description="NVIDIA GPUs passed to each node's container through the Docker API ('all' or a "
                                  "count); needs GPUs and the NVIDIA container toolkit on the engine's host")
    object_store_memory: int = Field(default=100 * 1024**2, ge=75 * 1024**2,
                                     description="bytes of object store per node (Ray's minimum is 75 MiB)")
    docker_host: str | None = Field(default=None, description="the Docker Engine's address; default: DOCKER_HOST, "
                                                              "else the engine's default socket")

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not _IMAGE.fullmatch(value):
            raise SpecError(f"Container.image={value!r} is not a Docker image reference. Fix: e.g. "
                            f"{default_image()!r} or 'registry.example.com/team/image:tag'")
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_count(cls, value: object) -> object:
        if isinstance(value, int) and value < 1:
            raise SpecError(f"Container.gpus={value!r}: a count of at least 1, 'all', or None for no GPUs")
        return value

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.container.offers import list_offers

        return list_offers(self, accelerator)
