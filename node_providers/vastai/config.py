"""`sky.VastAI(...)`: the Vast.ai marketplace. Every setting a user may make is a typed field."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from skyward_ray.errors import SpecError
from skyward_ray.planning.providers import RemoteMachineConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer

DEFAULT_SERVER_URL = "https://console.vast.ai"
# An http(s) base URL: a host (a name, an IPv4 or a bracketed IPv6 address), a port, a plain path;
# nothing a shell would read (it is part of every instance's self-destroy command).
_SERVER_URL = re.compile(r"https?://([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
                         r"(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")


class VastAI(RemoteMachineConfig):
    """Vast.ai marketplace. The API key comes from `api_key` or `VAST_API_KEY`; it stays on this
    machine (instances end themselves with their own instance-scoped key)."""

    name: ClassVar[str] = "vastai"
    defaults: ClassVar[dict[str, object]] = {"live_offers_ttl": 60.0}  # asks come and go faster than prices
    node_provider: ClassVar[str | None] = "node_providers.vastai.node_provider:VastAINodeProvider"
    extra: ClassVar[str | None] = "vastai"
    required_modules: ClassVar[tuple[str, ...]] = ("vastai",)

    api_key: str | None = Field(default=None, repr=False, description="Vast.ai API key; default: VAST_API_KEY")
    server_url: str = Field(default=DEFAULT_SERVER_URL, description="the Vast.ai API's base URL")
    min_reliability: float = Field(default=0.95, ge=0, le=1, description="a number in 0..1")
    verified_only: bool = Field(default=True, description="True to list verified hosts only")
    image: str = Field(default="ubuntu:22.04", description="the Docker image every instance runs")
    disk_gb: float = Field(default=32.0, gt=0, description="each instance's disk in GB")
    ssh_port: int = Field(default=2222, ge=1, le=65535,
                          description="the container port skyward's own sshd listens on (opened as a direct port)")
    replacement_price_margin: float = Field(
        default=0.10, ge=0, description="when an ask is rented before launch, a same-card ask may cost up to this "
                                        "fraction more (0.10: 10%)")

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        if not _SERVER_URL.fullmatch(value):
            raise SpecError(f"VastAI.server_url={value!r} is not an http(s) URL with a host and a plain path. Fix: "
                            f"the API's base URL, e.g. {DEFAULT_SERVER_URL!r} (no quotes, spaces, '$', '?' or '#')")
        return value

    def resolved_api_key(self) -> str | None:
        """`api_key`, else VAST_API_KEY; None when neither is set (offers then come from the snapshot)."""
        import os

        return self.api_key or os.environ.get("VAST_API_KEY") or None

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.vastai.offers import list_offers

        return list_offers(self, accelerator)
